"""Helpers shared by the engine tests: workspaces made by the real converter, and HF
transformers as the oracle (fp32 compute on the same fp16-rounded weights)."""
from __future__ import annotations

import functools
import os
import tempfile
from typing import List

import torch

from turbolm.config import read_config_ini, write_config_ini
from turbolm.converter.main import main as convert

_WS_ROOT = tempfile.mkdtemp(prefix="turbolm_ws_")


@functools.lru_cache(maxsize=None)
def workspace(hf_dir: str, tp: int = 1, block_len: int = 0, session_len: int = 0, model_name: str = "base") -> str:
    """Converts `hf_dir` once per setting; returns the weights dir. block_len/session_len patch config.ini."""
    dst = os.path.join(_WS_ROOT, f"{os.path.basename(hf_dir.rstrip('/'))}_{abs(hash(hf_dir))}_tp{tp}_b{block_len}_s{session_len}")
    convert(model_name, hf_dir, dst_path=dst, tp=tp, force=True)
    wdir = os.path.join(dst, "triton_models", "weights")
    if block_len or session_len:
        cfg = read_config_ini(os.path.join(wdir, "config.ini"))
        if block_len:
            cfg["cache_block_seq_len"] = block_len
        if session_len:
            cfg["session_len"] = session_len
        write_config_ini(os.path.join(wdir, "config.ini"), cfg)
    return wdir


def round_kv_attention():
    """Context: HF eager attention with K and V rounded through fp16, as the runtime's KV cache
    stores them; None when this transformers version has no patchable eager attention."""
    return patch_kv_attention(lambda module, k, v: (k.half().float(), v.half().float()))


def patch_kv_attention(transform):
    """Context: HF eager attention (every family's module) with ``(K, V) = transform(module, K, V)``
    applied to what attention reads (after RoPE and q/k norms, as the runtime's cache stores it);
    None when this transformers version has no patchable eager attention."""
    import contextlib
    import importlib

    mods = []
    for name in ("llama", "qwen2", "qwen3", "phi3", "mistral", "gemma2", "gemma3"):
        mod = importlib.import_module(f"transformers.models.{name}.modeling_{name}")
        if not hasattr(mod, "eager_attention_forward"):
            return None
        mods.append(mod)

    @contextlib.contextmanager
    def ctx():
        saved = [m.eager_attention_forward for m in mods]

        def wrap(orig):
            def f(module, q, k, v, *a, **kw):
                return orig(module, q, *transform(module, k, v), *a, **kw)
            return f

        try:
            for m, orig in zip(mods, saved):
                m.eager_attention_forward = wrap(orig)
            yield
        finally:
            for m, orig in zip(mods, saved):
                m.eager_attention_forward = orig

    return ctx



@functools.lru_cache(maxsize=4)
def hf_model(hf_dir: str, eager: bool = False):
    from transformers import AutoModelForCausalLM

    kw = {"attn_implementation": "eager"} if eager else {}
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32, **kw)
    with torch.no_grad():
        for p in model.parameters():  # the workspace holds fp16: give the oracle the same numbers
            p.copy_(p.half().float())
    return model.eval()


@torch.no_grad()
def hf_greedy(hf_dir: str, prompt: List[int], n: int, round_kv: bool = False) -> List[int]:
    """n greedy tokens with HF's own KV cache, eos ignored. round_kv: HF's K/V held in fp16 as the
    runtime's cache holds them (fp32 compute otherwise unchanged)."""
    if round_kv:
        with round_kv_attention()():
            return _hf_greedy(hf_model(hf_dir, eager=True), prompt, n)
    return _hf_greedy(hf_model(hf_dir), prompt, n)


def _hf_greedy(model, prompt: List[int], n: int) -> List[int]:
    out = model(torch.tensor([prompt]), use_cache=True)
    past, tokens = out.past_key_values, []
    nxt = int(out.logits[0, -1].argmax())
    for _ in range(n):
        tokens.append(nxt)
        out = model(torch.tensor([[nxt]]), past_key_values=past, use_cache=True)
        past = out.past_key_values
        nxt = int(out.logits[0, -1].argmax())
    return tokens


@torch.no_grad()
def hf_logprobs(hf_dir: str, ids: List[int]) -> torch.Tensor:
    """log-softmax of the logits at every position: [len(ids), vocab]."""
    return torch.log_softmax(hf_model(hf_dir)(torch.tensor([ids])).logits[0].double(), -1)


def hf_ppl(hf_dir: str, ids: List[int]) -> float:
    lp = hf_logprobs(hf_dir, ids)
    nll = -lp[:-1].gather(1, torch.tensor(ids[1:]).unsqueeze(1)).mean()
    return float(torch.exp(nll))


def text_prompts(tokenizer_dir: str, lengths=(5, 37, 130)) -> List[List[int]]:
    """Prompts of the given token lengths cut from real text (../shared/data)."""
    from transformers import AutoTokenizer

    here = os.path.dirname(os.path.abspath(__file__))
    text = open(os.path.join(here, "..", "..", "..", "shared", "data", "tinyshakespeare.txt")).read()[:20000]
    ids = AutoTokenizer.from_pretrained(tokenizer_dir).encode(text)
    return [ids[100 * i: 100 * i + n] for i, n in enumerate(lengths)]
