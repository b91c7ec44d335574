"""`turbolm lite calibrate`: activation and KV statistics of an HF model on calibration text.

Files written to ``work_dir`` (``torch.save``), as LMDeploy's ``lite/apis/calibrate.py``:

- ``inputs_stats.pth``: ``{stat: {module_name: Tensor[in_features]}}`` for stat in max, min,
  mean, absmax, absmean; one entry per nn.Linear of the decoder layers, named as in
  ``model.named_modules()`` (``model.layers.0.self_attn.q_proj``).
- ``outputs_stats.pth``: the same for the outputs of those Linears and of the two norms of each
  layer (``model.layers.0.input_layernorm``).
- ``calib_meta.json``: the calibration set, samples and seqlen (``calib_data.save_record``), so
  ``auto_awq`` in the same ``work_dir`` calibrates on the same text without being told again.
- ``key_stats.pth`` / ``value_stats.pth``: ``{stat: {layer_index: Tensor[kv_heads, head_dim]}}`` for
  stat in max, min, absmax. Keys are taken after RoPE (as the KV cache holds them): the k_proj
  output with the model's own rotary embedding applied; values are the v_proj output.

The model runs one decoder layer at a time (see ``model_utils``), so memory stays bounded.
"""
from __future__ import annotations

import os
import time
from typing import Callable, Dict, Optional

import torch
from torch import nn
from tqdm import tqdm

from turbolm.errors import UserError

from .calib_data import get_calib_data, load_text, save_record
from .model_utils import (LINEARS, NORMS, OnDevice, decoder_layers, layer0_inputs, layer_output, load_config,
                          load_model, model_info, rotary_fn, sample_batches)
from .observers import ActivationObserver, KVObserver

STAT_FILES = {"inputs": "inputs_stats.pth", "outputs": "outputs_stats.pth",
              "key": "key_stats.pth", "value": "value_stats.pth"}
ACT_STATS = ("max", "min", "mean", "absmax", "absmean")
KV_STATS = ("max", "min", "absmax")


class CalibStats:
    """Observers of the whole model, filled layer by layer."""

    def __init__(self):
        self.inputs: Dict[str, ActivationObserver] = {}
        self.outputs: Dict[str, ActivationObserver] = {}
        self.key: Dict[int, KVObserver] = {}
        self.value: Dict[int, KVObserver] = {}

    def attach(self, layer: nn.Module, index: int, layer_kwargs: dict, kv_heads: int, head_dim: int):
        """Register hooks on decoder layer ``index``; returns the hook handles."""
        prefix = f"model.layers.{index}."
        handles = []
        cos_sin = layer_kwargs.get("position_embeddings")
        if cos_sin is None:
            raise UserError("this transformers version does not pass position_embeddings to decoder layers; "
                            "post-RoPE key statistics cannot be computed (use transformers >= 4.48)")
        rotate = rotary_fn(layer.self_attn)
        self.key[index], self.value[index] = KVObserver(), KVObserver()

        def linear_hook(name):
            self.inputs[name], self.outputs[name] = ActivationObserver(), ActivationObserver()

            def hook(_mod, inp, out):
                self.inputs[name].observe(inp[0])
                self.outputs[name].observe(out)
            return hook

        def norm_hook(name):
            self.outputs[name] = ActivationObserver()

            def hook(_mod, _inp, out):
                self.outputs[name].observe(out)
            return hook

        k_norm = getattr(layer.self_attn, "k_norm", None)  # Qwen3 / Gemma 3: RMSNorm of each k head first

        def key_hook(_mod, _inp, out):
            b, s = out.shape[:2]
            k = out.view(b, s, kv_heads, head_dim)
            if k_norm is not None:
                k = k_norm(k)
            k = k.transpose(1, 2)                                           # [b, kv, s, d]
            _, k_rot = rotate(k, k, *cos_sin)
            self.key[index].observe(k_rot.transpose(1, 2))                # [b, s, kv, d]

        def value_hook(_mod, _inp, out):
            b, s = out.shape[:2]
            self.value[index].observe(out.view(b, s, kv_heads, head_dim))

        for n in LINEARS:
            handles.append(layer.get_submodule(n).register_forward_hook(linear_hook(prefix + n)))
        for n in NORMS:
            handles.append(layer.get_submodule(n).register_forward_hook(norm_hook(prefix + n)))
        handles.append(layer.self_attn.k_proj.register_forward_hook(key_hook))
        handles.append(layer.self_attn.v_proj.register_forward_hook(value_hook))
        return handles

    def export(self) -> Dict[str, dict]:
        def act(obs):
            per = {n: o.stats() for n, o in obs.items()}
            return {s: {n: st[s] for n, st in per.items()} for s in ACT_STATS}

        def kv(obs):
            per = {i: o.stats() for i, o in obs.items()}
            return {s: {i: st[s] for i, st in per.items()} for s in KV_STATS}
        return {"inputs": act(self.inputs), "outputs": act(self.outputs), "key": kv(self.key), "value": kv(self.value)}

    def save(self, work_dir: str) -> None:
        os.makedirs(work_dir, exist_ok=True)
        for kind, stats in self.export().items():
            torch.save(stats, os.path.join(work_dir, STAT_FILES[kind]))


# Called after a layer's full-precision pass: (index, layer on device in fp32, its inputs [n, seq, hidden],
# layer kwargs, the CalibStats so far). Used by auto_awq to smooth and quantize the layer in place.
LayerCallback = Callable[[int, nn.Module, torch.Tensor, dict, CalibStats], None]


@torch.no_grad()
def run_layerwise(model: nn.Module, data: torch.Tensor, device: str = "cpu",
                  on_layer: Optional[LayerCallback] = None, desc: str = "calibrate") -> CalibStats:
    """Run ``data`` [n, seqlen] through the decoder layers one at a time, observing statistics."""
    info = model_info(model.config)
    stats = CalibStats()
    hidden, kwargs = layer0_inputs(model, data, device)
    out = torch.empty_like(hidden)
    n, seqlen = data.shape
    layers = decoder_layers(model)
    for i in tqdm(range(len(layers)), desc=desc, unit="layer"):
        with OnDevice(layers[i], device) as layer:
            handles = stats.attach(layer, i, kwargs, info.num_kv_heads, info.head_dim)
            try:
                for sl in sample_batches(n, seqlen):
                    x = hidden[sl].to(device, torch.float32)
                    out[sl] = layer_output(layer(x, **kwargs)).to("cpu", out.dtype)
            finally:
                for h in handles:
                    h.remove()
            if on_layer is not None:
                on_layer(i, layer, hidden, kwargs, stats)
        hidden, out = out, hidden
    return stats


def check_device(device: str) -> str:
    device = str(device)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device '{device}' requested but CUDA is not available; use --device cpu")
    if not (device == "cpu" or device.startswith("cuda")):
        raise UserError(f"device '{device}' is not cpu or cuda[:N]")
    return device


def calibrate(model: str, calib_dataset: str = "wikitext2", calib_samples: int = 128, calib_seqlen: int = 2048,
              work_dir: str = "./work_dir", device: str = "cpu") -> None:
    """Collect the statistics described in the module docstring and save them in ``work_dir``."""
    device = check_device(device)
    load_config(model)
    if int(calib_samples) <= 0 or int(calib_seqlen) <= 0:
        raise UserError(f"calib_samples ({calib_samples}) and calib_seqlen ({calib_seqlen}) must be positive")
    load_text(calib_dataset, budget_chars=0)  # the source exists before the model is loaded
    t0 = time.time()
    hf_model, tokenizer = load_model(model)
    data = get_calib_data(calib_dataset, tokenizer, calib_samples, calib_seqlen)
    stats = run_layerwise(hf_model, data, device)
    stats.save(work_dir)
    save_record(work_dir, calib_dataset, calib_samples, calib_seqlen)
    print(f"calibrate: {data.shape[0]} x {data.shape[1]} tokens of {calib_dataset}, "
          f"{len(decoder_layers(hf_model))} layers in {time.time() - t0:.1f}s; stats and calib_meta.json "
          f"in {work_dir}")
