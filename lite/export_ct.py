"""`turbolm lite export_ct`: an AWQ or GPTQ checkpoint (lite's or another tool's) re-saved in the
compressed-tensors ``pack-quantized`` format (W4A16 / W8A16, group-wise, asymmetric), which vLLM,
SGLang and transformers (through the ``compressed-tensors`` package) load.

The integers are kept: each quantized Linear's ``(q, zero, scale)`` is read from its source layout,
moved to compressed-tensors' signed convention (``q - 2^(b-1)``, zero likewise; ``(q - zero) *
scale`` unchanged) and packed by the package's own ``PackedQuantizationCompressor``; the config
comes from its ``QuantizationConfig``. Nothing here writes the format by hand.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from typing import Dict

import numpy as np
import torch

from turbolm.errors import UserError

CT_FORMAT = "pack-quantized"


def _scheme(bits: int, group: int):
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    args = QuantizationArgs(num_bits=bits, type="int", symmetric=False, strategy="group", group_size=group)
    return QuantizationScheme(targets=["Linear"], weights=args)


def _linears(src: str):
    """``(bits, group, {module: (q uint8 [out, in], zeros [out, in/G], scales [out, in/G])}, other tensors)``."""
    from safetensors.numpy import load_file

    from turbolm.lite.awq_pack import unpack_awq
    from turbolm.lite.gptq_pack import unpack_gptq

    try:
        with open(os.path.join(src, "config.json")) as f:
            qc = json.load(f).get("quantization_config") or {}
    except (OSError, ValueError):
        raise UserError(f"{src}: no readable config.json; pass an AWQ or GPTQ checkpoint folder") from None
    method = str(qc.get("quant_method", "")).lower()
    if method not in ("awq", "gptq"):
        raise UserError(f"{src}: quantization_config.quant_method is {method or 'missing'}; export_ct takes AWQ "
                        "(lite auto_awq) or GPTQ (lite gptq) checkpoints")
    if qc.get("lm_head"):
        raise UserError(f"{src}: its lm head is quantized (quantization_config.lm_head, `lite gptq --lm_head`); the "
                        f"export keeps lm_head in fp16 (compressed-tensors `ignore`): re-run `lite gptq` without "
                        f"--lm_head for an export")
    if qc.get("dynamic"):
        raise UserError(f"{src}: linears of more than one width (quantization_config.dynamic, as `lite gptq "
                        "--mixed` writes) are not exported yet; export a checkpoint made without --mixed, or "
                        "convert this one with `turbolm convert`")
    bits, group = int(qc["bits"]), int(qc["group_size"])
    raw: Dict[str, np.ndarray] = {}
    for f in sorted(os.listdir(src)):
        if f.endswith(".safetensors"):
            raw.update(load_file(os.path.join(src, f)))
    mods = {k[:-len(".qweight")] for k in raw if k.endswith(".qweight")}
    out = {}
    for m in sorted(mods):
        if method == "awq":
            out[m] = unpack_awq(raw[f"{m}.qweight"], raw[f"{m}.qzeros"], raw[f"{m}.scales"], bits)  # [out, ...]
        else:
            g_idx = raw[f"{m}.g_idx"]
            if not np.array_equal(g_idx, np.arange(len(g_idx)) // group):
                raise UserError(f"{src}: {m} has act-order groups out of order (g_idx); compressed-tensors "
                                "pack-quantized keeps contiguous groups only")
            offset = 1 if str(qc.get("checkpoint_format", "gptq")) == "gptq" else 0
            q, z, s = unpack_gptq(raw[f"{m}.qweight"], raw[f"{m}.qzeros"], raw[f"{m}.scales"], bits, offset)
            out[m] = (q, z.T, s.T)
    rest = {k: v for k, v in raw.items()
            if k.rsplit(".", 1)[0] not in mods or k.rsplit(".", 1)[1] not in ("qweight", "qzeros", "scales", "g_idx")}
    return bits, group, out, rest


@torch.no_grad()
def export_ct(src: str, dst_path: str, force: bool = False) -> None:
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
    from compressed_tensors.quantization import QuantizationConfig
    from safetensors.torch import save_file

    if os.path.isdir(dst_path) and os.listdir(dst_path) and not force:
        raise UserError(f"--dst_path {dst_path} is not empty; pass --force to overwrite it")
    t0 = time.time()
    bits, group, linears, rest = _linears(src)
    scheme = _scheme(bits, group)
    half = 1 << (bits - 1)
    state: Dict[str, torch.Tensor] = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in rest.items()}
    for m, (q, z, s) in linears.items():
        G = group
        scale = torch.from_numpy(np.ascontiguousarray(s)).to(torch.float16)
        zero = torch.from_numpy(np.ascontiguousarray(z)).to(torch.float32)
        w = (torch.from_numpy(q.astype(np.float32)) - zero.repeat_interleave(G, 1)) * scale.float().repeat_interleave(G, 1)
        packed = PackedQuantizationCompressor.compress(
            {"weight": w, "weight_scale": scale, "weight_zero_point": (zero - half).to(torch.int8)}, scheme)
        for k, v in packed.items():
            state[f"{m}.{k}"] = v.contiguous()
    os.makedirs(dst_path, exist_ok=True)
    save_file(state, os.path.join(dst_path, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(src, "config.json")) as f:
        cfg = json.load(f)
    cfg["quantization_config"] = QuantizationConfig(
        config_groups={"group_0": scheme}, format=CT_FORMAT, quantization_status="compressed",
        ignore=["lm_head"]).model_dump(mode="json", exclude_none=True)
    with open(os.path.join(dst_path, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    for name in os.listdir(src):
        if name != "config.json" and not name.endswith((".safetensors", ".index.json", "quantize_config.json")) \
                and os.path.isfile(os.path.join(src, name)) and not name.endswith(".pth"):
            shutil.copy(os.path.join(src, name), os.path.join(dst_path, name))
    print(f"export_ct: {len(linears)} linears, W{bits}A16 group {group} ({CT_FORMAT}) in {time.time() - t0:.1f}s; "
          f"compressed-tensors checkpoint in {dst_path}", file=sys.stderr)
