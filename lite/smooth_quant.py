"""`turbolm lite smooth_quant`: SmoothQuant W8A8, written as a compressed-tensors checkpoint.

SmoothQuant (Xiao et al., 2023) moves the activations' outliers into the weights before both are
quantized to int8: for a linear fed by X, per input channel j

    s_j = max|X_j|^alpha / max|W_:,j|^(1 - alpha),   X' = X / s,   W' = W * s      (X' W'^T = X W^T)

with 1/s folded into whatever produces X, so nothing extra runs at inference:

    input_layernorm        -> q_proj, k_proj, v_proj
    post_attention_layernorm -> gate_proj, up_proj
    v_proj (output rows)   -> o_proj   (with GQA one scale per kv channel, shared by its heads)
    up_proj (output rows)  -> down_proj (silu(gate) * up is linear in up)

max|X_j| comes from `turbolm lite calibrate` (inputs_stats.pth in --work_dir: the per-channel
absmax of every decoder Linear's input). The seven linears are then quantized per output channel,
symmetric int8, with compressed-tensors' own arithmetic (calculate_qparams / quantize), and the
checkpoint is that package's "int-quantized" format with the W8A8 preset (int8 weights per
channel, int8 activations per token, dynamic): what vLLM and SGLang load, and what `turbolm
convert --model-format w8a8` turns into a weight_type = int8, act_type = int8 workspace.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from typing import Dict

import torch

from turbolm.errors import UserError

from .model_utils import decoder_layers, load_model, model_info

STATS_FILE = "inputs_stats.pth"
W8A8_FORMAT = "int-quantized"


def smooth_scales(act_absmax: torch.Tensor, w_absmax: torch.Tensor, alpha: float) -> torch.Tensor:
    """s = act^alpha / w^(1 - alpha) per input channel (both clamped away from 0, as SmoothQuant)."""
    s = act_absmax.float().clamp(min=1e-5).pow(alpha) / w_absmax.float().clamp(min=1e-5).pow(1 - alpha)
    return s.clamp(min=1e-5)


@torch.no_grad()
def smooth_layer(layer, index: int, act: Dict[str, torch.Tensor], alpha: float, kv_heads: int, head_dim: int) -> None:
    """Folds the smoothing scales of decoder layer ``index`` in place (fp32 weights)."""
    attn, mlp, p = layer.self_attn, layer.mlp, f"model.layers.{index}."

    def fold_into_norm(norm, linears, stat):
        w_max = torch.cat([m.weight.abs() for m in linears]).amax(0)
        s = smooth_scales(act[p + stat], w_max, alpha)
        norm.weight.div_(s)
        for m in linears:
            m.weight.mul_(s)

    fold_into_norm(layer.input_layernorm, [attn.q_proj, attn.k_proj, attn.v_proj], "self_attn.q_proj")
    fold_into_norm(layer.post_attention_layernorm, [mlp.gate_proj, mlp.up_proj], "mlp.gate_proj")

    # v -> o: o's input channel h * D + d reads v's kv channel (h // group) * D + d.
    heads = attn.o_proj.weight.shape[1] // head_dim
    group = heads // kv_heads
    a = act[p + "self_attn.o_proj"].float().view(kv_heads, group, head_dim).amax(1).reshape(-1)
    w = attn.o_proj.weight.abs().amax(0).view(kv_heads, group, head_dim).amax(1).reshape(-1)
    s = smooth_scales(a, w, alpha)                                       # [kv_heads * D]
    attn.v_proj.weight.div_(s[:, None])
    if attn.v_proj.bias is not None:
        attn.v_proj.bias.div_(s)
    attn.o_proj.weight.mul_(s.view(kv_heads, 1, head_dim).expand(kv_heads, group, head_dim).reshape(-1))

    s = smooth_scales(act[p + "mlp.down_proj"], mlp.down_proj.weight.abs().amax(0), alpha)
    mlp.up_proj.weight.div_(s[:, None])
    mlp.down_proj.weight.mul_(s)


def w8a8_scheme():
    from compressed_tensors.quantization import preset_name_to_scheme

    return preset_name_to_scheme("W8A8", ["Linear"])


def quantization_config() -> dict:
    """config.json's quantization_config: compressed-tensors' W8A8 preset, int-quantized, lm_head kept."""
    from compressed_tensors.quantization import QuantizationConfig

    qc = QuantizationConfig(config_groups={"group_0": w8a8_scheme()}, format=W8A8_FORMAT,
                            quantization_status="compressed", ignore=["lm_head"])
    return qc.model_dump(mode="json", exclude_none=True)


@torch.no_grad()
def quantize_weight(w: torch.Tensor):
    """Per output channel symmetric int8 by compressed-tensors: (int8 weight [out, in], scale [out, 1])."""
    from compressed_tensors.quantization import quantize
    from compressed_tensors.quantization.utils import calculate_qparams

    args = w8a8_scheme().weights
    amax = w.abs().amax(1, keepdim=True).float()
    scale, zp = calculate_qparams(-amax, amax, args)
    q = quantize(w.float(), scale, zp, args, dtype=torch.int8)
    return q, scale.to(torch.float16)


def load_act_absmax(work_dir: str) -> Dict[str, torch.Tensor]:
    path = os.path.join(work_dir, STATS_FILE)
    if not os.path.isfile(path):
        raise UserError(f"{path} not found: run `turbolm lite calibrate --model MODEL --work_dir {work_dir}` first "
                        "(smooth_quant reads the per-channel input absmax it records)")
    stats = torch.load(path, map_location="cpu", weights_only=False)
    if "absmax" not in stats:
        raise UserError(f"{path} has no 'absmax' statistics; re-run `turbolm lite calibrate`")
    return stats["absmax"]


def smooth_quant(model: str, work_dir: str = "./work_dir", alpha: float = 0.5, dst_path: str = "") -> str:
    """Writes the W8A8 checkpoint to ``dst_path`` (default ``work_dir``); returns its path."""
    from safetensors.torch import save_file
    from tqdm import tqdm

    from turbolm.converter.tokenizer import TOKENIZER_FILES

    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:
        raise UserError(f"--alpha {alpha} must be in [0, 1] (0.5 is SmoothQuant's default)")
    act = load_act_absmax(work_dir)
    t0 = time.time()
    net, _ = load_model(model)
    net = net.float()
    info = model_info(net.config)
    layers = decoder_layers(net)
    missing = [f"model.layers.{i}.{n}" for i in range(len(layers))
               for n in ("self_attn.q_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.down_proj")
               if f"model.layers.{i}.{n}" not in act]
    if missing:
        raise UserError(f"{os.path.join(work_dir, STATS_FILE)} has no statistics for {missing[0]} (and "
                        f"{len(missing) - 1} more): it was calibrated on another model; re-run `lite calibrate`")
    state: Dict[str, torch.Tensor] = {}
    names = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
             "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
    for i, layer in enumerate(tqdm(layers, desc=f"smooth_quant alpha={alpha}", unit="layer")):
        smooth_layer(layer, i, act, alpha, info.num_kv_heads, info.head_dim)
        for n in names:
            mod = layer.get_submodule(n)
            q, scale = quantize_weight(mod.weight)
            state[f"model.layers.{i}.{n}.weight"] = q.contiguous()
            state[f"model.layers.{i}.{n}.weight_scale"] = scale.contiguous()
    tied = bool(getattr(net.config, "tie_word_embeddings", False))
    for name, t in net.state_dict().items():  # everything else as fp16: norms, embeddings, biases (smoothed v)
        if name in state or (tied and name == "lm_head.weight"):
            continue
        state[name] = t.detach().to(torch.float16).contiguous()

    out = dst_path or work_dir
    os.makedirs(out, exist_ok=True)
    save_file(state, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    cfg = net.config.to_dict()
    cfg["quantization_config"] = quantization_config()
    cfg["torch_dtype"] = "float16"
    cfg.pop("dtype", None)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2, default=str)
    for fname in (f for f in TOKENIZER_FILES if f != "config.json"):
        src = os.path.join(model, fname)
        if os.path.isfile(src) and os.path.abspath(src) != os.path.abspath(os.path.join(out, fname)):
            shutil.copy(src, os.path.join(out, fname))
    print(f"smooth_quant: {len(layers)} layers, alpha {alpha}, W8A8 (int8 per channel, int8 activations per token) "
          f"in {time.time() - t0:.1f}s; compressed-tensors checkpoint in {out}")
    return out
