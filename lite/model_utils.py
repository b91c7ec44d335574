"""Loading an HF LLaMA-family model for `lite`, and running it one decoder layer at a time.

Layer-by-layer: the embeddings run once over all samples, then each decoder layer in turn runs
over all samples (moved to ``device`` and to float32 only while it works), and its outputs become
the next layer's inputs. Memory is the model in its own dtype plus two activation buffers
``[n_samples, seqlen, hidden]``, so a 7B fp16 model calibrates in 24 GiB.
"""
from __future__ import annotations

import dataclasses
import os
import sys
from typing import Any, Dict, Iterator, List, Tuple

import torch
from torch import nn

from turbolm.errors import UserError

# Module names inside one decoder layer that `lite` works on (LLaMA / Qwen2 / Mistral naming).
ATTN_LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")
MLP_LINEARS = ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
LINEARS = ATTN_LINEARS + MLP_LINEARS
NORMS = ("input_layernorm", "post_attention_layernorm")
# Architectures whose decoder layers have exactly these modules with LLaMA's semantics.
LITE_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM")

_SMALL_MODEL_BYTES = 4 << 30      # below this (as fp32) the whole model is held in fp32
_ACT_FP32_BYTES = 2 << 30         # activation buffers above this are held in the model's 16-bit dtype
_TOKENS_PER_FORWARD = 2048        # samples are batched up to this many tokens per layer call


@dataclasses.dataclass
class ModelInfo:
    num_layers: int
    hidden: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate: int


def model_info(config) -> ModelInfo:
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return ModelInfo(config.num_hidden_layers, config.hidden_size, heads,
                     getattr(config, "num_key_value_heads", None) or heads, head_dim, config.intermediate_size)


def load_config(model_path: str):
    if not os.path.isdir(model_path) or not os.path.isfile(os.path.join(model_path, "config.json")):
        raise UserError(f"model {model_path}: not an HF model directory (no config.json)")
    from transformers import AutoConfig
    try:
        cfg = AutoConfig.from_pretrained(model_path)
    except Exception as e:
        raise UserError(f"model {model_path}: cannot read config.json ({e})".replace("\n", " ")) from None
    arch = (getattr(cfg, "architectures", None) or ["(none)"])[0]
    if arch not in LITE_ARCHITECTURES:
        raise UserError(f"model {model_path}: lite (calibrate, auto_awq, smooth_quant, kv_qparams) supports "
                        f"{', '.join(LITE_ARCHITECTURES)}, not {arch} (Gemma's (1 + w) norms and Phi-3's fused "
                        f"linears need their own smoothing); convert it with --weight-type int4 for RTN weights")
    for attr in ("num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size"):
        if not hasattr(cfg, attr):
            raise UserError(f"model {model_path}: model_type '{cfg.model_type}' is not a LLaMA-family decoder "
                            f"(config has no {attr})")
    return cfg


def load_model(model_path: str) -> Tuple[nn.Module, Any]:
    """(model in eval mode on CPU, tokenizer). Small models are held in float32, big ones in their dtype."""
    load_config(model_path)
    from transformers import AutoModelForCausalLM, AutoTokenizer
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path)
    except Exception as e:
        raise UserError(f"model {model_path}: cannot load its tokenizer ({e})".replace("\n", " ")) from None
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype="auto", low_cpu_mem_usage=True)
    model.eval()
    n_params = sum(p.numel() for p in model.parameters())
    if model.dtype != torch.float32 and n_params * 4 <= _SMALL_MODEL_BYTES:
        model.float()
    check_structure(model, model_path)
    return model, tokenizer


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    return model.model.layers


def check_structure(model: nn.Module, where: str = "model") -> None:
    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None or len(layers) == 0:
        raise UserError(f"{where}: {type(model).__name__} has no model.layers; only LLaMA-family decoders are supported")
    for name in LINEARS + NORMS:
        mod = layers[0].get_submodule(name) if _has_submodule(layers[0], name) else None
        if mod is None or (name in LINEARS and not isinstance(mod, nn.Linear)):
            raise UserError(f"{where}: {type(model).__name__} decoder layers have no {name} (nn.Linear/norm); "
                            "only LLaMA-family decoders (llama, qwen2, mistral) are supported")


def _has_submodule(mod: nn.Module, name: str) -> bool:
    try:
        mod.get_submodule(name)
        return True
    except AttributeError:
        return False


def rotary_fn(attn: nn.Module):
    """The modeling file's own ``apply_rotary_pos_emb(q, k, cos, sin)`` for this attention module."""
    fn = getattr(sys.modules.get(type(attn).__module__), "apply_rotary_pos_emb", None)
    return fn if fn is not None else _apply_rotary_rotate_half


def _apply_rotary_rotate_half(q, k, cos, sin, unsqueeze_dim=1):
    cos, sin = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim)

    def rot(x):
        h = x.shape[-1] // 2
        return torch.cat((-x[..., h:], x[..., :h]), dim=-1)
    return q * cos + rot(q) * sin, k * cos + rot(k) * sin


class _Caught(Exception):
    pass


@torch.no_grad()
def layer0_inputs(model: nn.Module, data: torch.Tensor, device: str) -> Tuple[torch.Tensor, Dict[str, Any]]:
    """Run the embeddings over ``data`` [n, seqlen]: (hidden [n, seqlen, hidden] on CPU, layer kwargs).

    The kwargs a decoder layer gets (attention mask, position embeddings, ...) are caught from the
    model's own forward on one sample, so they follow whatever this transformers version computes;
    they are the same for every sample (no padding) and are kept on ``device`` in float32.
    """
    layers = decoder_layers(model)
    caught: Dict[str, Any] = {}

    def catch(_mod, args, kwargs):
        caught["hidden"] = args[0] if args else kwargs["hidden_states"]
        caught["kwargs"] = {k: v for k, v in kwargs.items() if k != "hidden_states"}
        raise _Caught

    embed = model.get_input_embeddings()
    embed_dtype = embed.weight.dtype
    embed.to(device=device, dtype=torch.float32)
    rotary = getattr(model.model, "rotary_emb", None)
    if rotary is not None:
        rotary.to(device)
    handle = layers[0].register_forward_pre_hook(catch, with_kwargs=True)
    try:
        n, seqlen = data.shape
        hidden_size = embed.weight.shape[1]
        act_dtype = torch.float32 if n * seqlen * hidden_size * 4 * 2 <= _ACT_FP32_BYTES else \
            (embed_dtype if embed_dtype != torch.float32 else torch.bfloat16)
        hidden = torch.empty(n, seqlen, hidden_size, dtype=act_dtype)
        for i in range(n):
            try:
                model(input_ids=data[i:i + 1].to(device), use_cache=False)
            except _Caught:
                pass
            hidden[i] = caught["hidden"][0].to("cpu", act_dtype)
    finally:
        handle.remove()
        embed.to(device="cpu", dtype=embed_dtype)
        if rotary is not None:
            rotary.to("cpu")
    kwargs = caught["kwargs"]
    kwargs["use_cache"] = False
    kwargs["past_key_values"] = None
    if "position_embeddings" in kwargs and kwargs["position_embeddings"] is not None:
        kwargs["position_embeddings"] = tuple(t.to(device, torch.float32) for t in kwargs["position_embeddings"])
    for k, v in list(kwargs.items()):
        if isinstance(v, torch.Tensor):
            kwargs[k] = v.to(device)
    return hidden, kwargs


def sample_batches(n: int, seqlen: int) -> Iterator[slice]:
    step = max(1, _TOKENS_PER_FORWARD // seqlen)
    for s in range(0, n, step):
        yield slice(s, min(n, s + step))


def layer_output(out) -> torch.Tensor:
    """A decoder layer's hidden states, whether it returns a tensor (transformers 5) or a tuple (4.x)."""
    return out[0] if isinstance(out, (tuple, list)) else out


class OnDevice:
    """Context: a decoder layer on ``device`` in float32 while it works, back to CPU and its dtype after."""

    def __init__(self, layer: nn.Module, device: str):
        self.layer, self.device = layer, device
        self.dtype = next(layer.parameters()).dtype

    def __enter__(self) -> nn.Module:
        return self.layer.to(device=self.device, dtype=torch.float32)

    def __exit__(self, *exc):
        self.layer.to(device="cpu", dtype=self.dtype)
