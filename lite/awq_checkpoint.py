"""Writing and reading the AWQ checkpoint `turbolm lite auto_awq` produces (AutoAWQ "gemm" layout).

Folder contents: ``config.json`` (the source config plus ``quantization_config`` =
``{quant_method: awq, bits, group_size, zero_point: true, version: gemm}`` and dtype float16),
``model.safetensors`` (sharded with ``model.safetensors.index.json`` past ``SHARD_BYTES``),
``generation_config.json`` and the tokenizer files copied from the source.

Tensors: for each quantized Linear ``NAME.qweight``, ``NAME.qzeros``, ``NAME.scales`` (packing in
``awq_pack``) and ``NAME.bias`` (fp16) when it has one; every other tensor fp16 under its HF name.
A tied ``lm_head.weight`` is not written (``tie_word_embeddings`` stays in config.json).
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Dict

import numpy as np
import torch

from .awq_pack import dequantize_awq

SHARD_BYTES = 4 << 30


def quantization_config(bits: int, group_size: int) -> dict:
    return {"quant_method": "awq", "bits": bits, "group_size": group_size, "zero_point": True, "version": "gemm",
            "modules_to_not_convert": None}


def save_awq(out_dir: str, model, tensors: Dict[str, torch.Tensor], bits: int, group_size: int,
             source_dir: str, tokenizer=None) -> None:
    """``tensors``: the packed tensors of the quantized Linears; the rest comes from ``model.state_dict()``."""
    save_quantized(out_dir, model, tensors, quantization_config(bits, group_size), source_dir, tokenizer)


def save_quantized(out_dir: str, model, tensors: Dict[str, torch.Tensor], qconfig: dict, source_dir: str,
                   tokenizer=None) -> None:
    """A quantized HF checkpoint (AWQ, GPTQ): ``tensors`` replace the ``.weight`` of the Linears
    that have a ``.qweight`` among them; ``qconfig`` becomes config.json's quantization_config."""
    from safetensors.torch import save_file

    os.makedirs(out_dir, exist_ok=True)
    quantized = {k.rsplit(".", 1)[0] for k in tensors if k.endswith(".qweight")}
    state: Dict[str, torch.Tensor] = {}
    for name, t in model.state_dict().items():
        mod = name.rsplit(".", 1)[0]
        if mod in quantized and name.endswith(".weight"):
            continue
        if name == "lm_head.weight" and getattr(model.config, "tie_word_embeddings", False):
            continue
        state[name] = t.detach().to("cpu", torch.float16 if t.is_floating_point() else t.dtype).contiguous()
    state.update({k: v.contiguous() for k, v in tensors.items()})

    shards, cur, size = [], {}, 0
    for name in sorted(state):
        nbytes = state[name].numel() * state[name].element_size()
        if cur and size + nbytes > SHARD_BYTES:
            shards.append(cur)
            cur, size = {}, 0
        cur[name] = state[name]
        size += nbytes
    shards.append(cur)
    meta = {"format": "pt", "quant_method": str(qconfig["quant_method"])}
    if len(shards) == 1:
        save_file(shards[0], os.path.join(out_dir, "model.safetensors"), metadata=meta)
    else:
        weight_map = {}
        for i, shard in enumerate(shards):
            fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, os.path.join(out_dir, fname), metadata=meta)
            weight_map.update({k: fname for k in shard})
        total = sum(t.numel() * t.element_size() for t in state.values())
        with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)

    cfg = model.config.to_dict()
    cfg["quantization_config"] = qconfig
    cfg["torch_dtype"] = "float16"
    if "dtype" in cfg:
        cfg["dtype"] = "float16"
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2, default=str)
    # The converter's tokenizer file list, less config.json: ours (with quantization_config) is written above.
    from turbolm.converter.tokenizer import TOKENIZER_FILES

    copied = 0
    for fname in (f for f in TOKENIZER_FILES if f != "config.json"):
        src = os.path.join(source_dir, fname)
        if os.path.isfile(src) and os.path.abspath(src) != os.path.abspath(os.path.join(out_dir, fname)):
            shutil.copy(src, os.path.join(out_dir, fname))
            copied += fname != "generation_config.json"
    if not copied and tokenizer is not None:
        tokenizer.save_pretrained(out_dir)


def read_awq_config(awq_dir: str) -> dict:
    with open(os.path.join(awq_dir, "config.json")) as f:
        return json.load(f)


def load_awq_dequantized(awq_dir: str) -> Dict[str, torch.Tensor]:
    """An HF float32 state dict of an AWQ checkpoint (quantized Linears dequantized): for tests and oracles."""
    from safetensors.numpy import load_file

    qc = read_awq_config(awq_dir)["quantization_config"]
    files = sorted(f for f in os.listdir(awq_dir) if f.endswith(".safetensors"))
    raw: Dict[str, np.ndarray] = {}
    for f in files:
        raw.update(load_file(os.path.join(awq_dir, f)))
    out: Dict[str, torch.Tensor] = {}
    for name, arr in raw.items():
        if name.endswith(".qweight"):
            mod = name[: -len(".qweight")]
            w = dequantize_awq(arr, raw[mod + ".qzeros"], raw[mod + ".scales"], qc["bits"])
            out[mod + ".weight"] = torch.from_numpy(w)
        elif name.endswith((".qzeros", ".scales")) and name.rsplit(".", 1)[0] + ".qweight" in raw:
            continue
        else:
            out[name] = torch.from_numpy(arr.astype(np.float32))
    return out
