"""`turbolm lite gptq`: GPTQ int4 / int8 weights (gptq_core), layer by layer, written as a GPTQ
checkpoint (gptq_pack) that `turbolm convert --model-format gptq`, vLLM, SGLang and transformers read.

Memory stays bounded as in `calibrate`: one decoder layer at a time on the device, the activations
of all samples ``[n, seqlen, hidden]`` twice, and one Hessian ``[in, in]`` per Linear input of
the current layer. Each layer's inputs are the *quantized* previous layers' outputs (errors are
compensated downstream, as in the paper). With ``true_sequential`` (default) the four groups of a
layer — q/k/v, o, gate/up, down — are quantized in order, each one's Hessian measured with the
earlier groups already quantized (five forward passes a layer instead of two).
"""
from __future__ import annotations

import json
import os
import re
import time
from typing import Dict, List, Optional

import torch
from tqdm import tqdm

from turbolm.errors import UserError

from .auto_awq import calib_settings, check_group_size
from .awq_checkpoint import save_quantized
from .calib_data import get_calib_data, load_text, save_record
from .calibrate import check_device
from .gptq_core import gptq_quantize
from .gptq_pack import pack_gptq
from .kv_qparams import parse_bool
from .model_utils import (OnDevice, decoder_layers, layer0_inputs, layer_output, load_config, load_model,
                          sample_batches)
from . import sensitivity
from .qparams_search import parse_grid
from .quantize import check_bits, dequantize
from .sensitivity import WORKSPACE_MODULES, is_auto, parse_auto

SEQUENTIAL = (("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), ("self_attn.o_proj",),
              ("mlp.gate_proj", "mlp.up_proj"), ("mlp.down_proj",))


def modules_of(entries: List[str]) -> List[str]:
    """HF module names of workspace entries ``LAYER.NAME``."""
    out = []
    for entry in entries:
        i, name = entry.split(".")
        out += [f"model.layers.{i}.{m}" for m in WORKSPACE_MODULES[name]]
    return out


def int8_modules(mixed: Optional[str], num_layers: int) -> List[str]:
    """The HF module names a --mixed recipe (converter/quant.py) keeps at 8 bits (``auto:BITS``:
    none yet; chosen once the model is measured)."""
    from turbolm.converter.quant import mixed_recipe

    if not mixed or is_auto(mixed):
        return []
    return modules_of(mixed_recipe(mixed, num_layers))


def auto_int8_modules(hf_model, data: torch.Tensor, group: int, mixed: str) -> List[str]:
    """``--mixed auto:BITS``: the linears measured most sensitive, within the bits budget."""
    budget = parse_auto(mixed)
    sample = data[:4, :256]
    kl = sensitivity.measure(hf_model, sample, group)
    chosen, bits = sensitivity.choose(kl, sensitivity.sizes(hf_model), group, budget)
    print(f"gptq: --mixed {mixed}: {len(chosen)} linears at 8 bits ({bits:.2f} bits/weight): {','.join(chosen)}")
    return modules_of(chosen)


def quantization_config(bits: int, group_size: int, act_order: bool, sym: bool, damp: float,
                        true_sequential: bool, wide=(), search: int = 0, lm_head: bool = False) -> dict:
    """config.json's quantization_config (and quantize_config.json) as AutoGPTQ / GPTQModel write it.
    Act-order uses static groups, so g_idx stays i // G and desc_act can be declared false to
    loaders (the checkpoint is exactly a non-act-order one); the search order is recorded apart."""
    return {"quant_method": "gptq", "bits": bits, "group_size": group_size, "desc_act": False, "sym": sym,
            "damp_percent": damp, "static_groups": bool(act_order), "true_sequential": true_sequential,
            "checkpoint_format": "gptq", "lm_head": bool(lm_head), "quantizer": ["turbolm"],
            "turbolm_act_order": bool(act_order), "turbolm_scale_search": search,
            # GPTQModel's per-module overrides: "+:REGEX" -> {bits}; the modules kept at 8 bits
            **({"dynamic": {f"+:^{re.escape(m)}$": {"bits": 8} for m in wide}} if wide else {})}


class _Hessians:
    """Forward hooks summing x^T x of the inputs of named Linears over every calibration token."""

    def __init__(self, layer, names):
        self.sums: Dict[str, torch.Tensor] = {}
        self.count: Dict[str, int] = {}
        self.handles = [layer.get_submodule(n).register_forward_hook(self._hook(n)) for n in names]

    def _hook(self, name):
        def hook(_mod, inp, _out):
            x = inp[0].reshape(-1, inp[0].shape[-1]).float()
            if name not in self.sums:
                self.sums[name] = torch.zeros(x.shape[1], x.shape[1], device=x.device)
                self.count[name] = 0
            self.sums[name].addmm_(x.T, x)
            self.count[name] += x.shape[0]
        return hook

    def hessian(self, name) -> torch.Tensor:
        return 2 * self.sums[name] / max(1, self.count[name])

    def remove(self):
        for h in self.handles:
            h.remove()


def _run(layer, hidden, out, kwargs, device):
    n, seqlen = hidden.shape[:2]
    for sl in sample_batches(n, seqlen):
        y = layer_output(layer(hidden[sl].to(device, torch.float32), **kwargs))
        if out is not None:
            out[sl] = y.to("cpu", out.dtype)


@torch.no_grad()
def gptq_layer(layer, hidden, kwargs, device, groups, bits, group: int, damp: float, act_order: bool,
               sym: bool, search: int = 0) -> Dict[str, tuple]:
    """GPTQ of one decoder layer's Linears, group by group (``groups``: tuples of names sharing an
    input), each group's Hessians measured with the earlier groups already quantized. Every weight
    is replaced by its dequantized self; returns ``{name: (q, scales, zeros, loss)}``. ``bits``: an
    int, or ``{name: bits}`` for every name (mixed precision)."""
    out = {}
    for names in groups:
        hooks = _Hessians(layer, names)
        try:
            _run(layer, hidden, None, kwargs, device)
        finally:
            hooks.remove()
        for n in names:
            fc = layer.get_submodule(n)
            b = bits[n] if isinstance(bits, dict) else bits
            q, s, z, loss = gptq_quantize(fc.weight.data, hooks.hessian(n), b, group, damp, act_order, sym,
                                          search)
            deq = dequantize(q, z, s, group)
            fc.weight.data.copy_(deq.to(fc.weight.dtype))  # later groups and layers see the quantized one
            out[n] = (q, s, z, loss)
    return out


@torch.no_grad()
def gptq_lm_head(hf_model, hidden, device, bits: int, group: int, damp: float, act_order: bool, sym: bool,
                 search: int):
    """GPTQ of the lm head ``[vocab, hidden]``: its input is the final norm of the last layer's
    outputs ``hidden`` [n, seqlen, hidden] (those of the quantized layers). A tied head is the
    embedding table, so the runtime looks the input rows up in these integers too."""
    H, count = None, 0
    with OnDevice(hf_model.model.norm, device) as norm:
        for sl in sample_batches(*hidden.shape[:2]):
            x = norm(hidden[sl].to(device, torch.float32)).reshape(-1, hidden.shape[-1])
            H = x.T @ x if H is None else H.addmm_(x.T, x)
            count += x.shape[0]
    W = hf_model.get_output_embeddings().weight.data.to(device, torch.float32)
    return gptq_quantize(W, 2 * H / count, bits, group, damp, act_order, sym, search)


@torch.no_grad()
def gptq(model: str, w_bits: int = 4, w_group_size: int = 128, work_dir: str = "./work_dir",
         calib_dataset: Optional[str] = None, calib_samples: Optional[int] = None,
         calib_seqlen: Optional[int] = None, device: str = "cpu", damp_percent: float = 0.01,
         act_order=False, sym=True, true_sequential=True, mixed: Optional[str] = None, scale_search=10,
         lm_head=False) -> None:
    """Quantize ``model`` (HF dir) with GPTQ and save a GPTQ checkpoint in ``work_dir``. ``lm_head``:
    the lm head too (GPTQModel's ``lm_head: true``), after the decoder layers, its Hessian from the
    final norm's outputs on the quantized layers."""
    calib_dataset, calib_samples, calib_seqlen = calib_settings(work_dir, calib_dataset, calib_samples,
                                                                calib_seqlen)
    bits = check_bits(w_bits)
    device = check_device(device)
    act_order, sym = parse_bool(act_order, "act_order"), parse_bool(sym, "sym")
    true_sequential = parse_bool(true_sequential, "true_sequential")
    lm_head = parse_bool(lm_head, "lm_head")
    damp = float(damp_percent)
    search = parse_grid(scale_search)
    if not 0 < damp < 1:
        raise UserError(f"--damp_percent {damp_percent} must be in (0, 1) (0.01 is usual)")
    config = load_config(model)
    group = check_group_size(w_group_size, bits, config)
    if lm_head and config.vocab_size % (32 // bits):
        raise UserError(f"--lm_head: the vocabulary ({config.vocab_size}) is not a multiple of {32 // bits}, which "
                        f"the GPTQ packing of the lm head's {bits}-bit zero points needs; quantize without --lm_head")
    wide = set(int8_modules(mixed, config.num_hidden_layers))  # checks the recipe before any work
    if is_auto(mixed):
        parse_auto(mixed)
    if int(calib_samples) <= 0 or int(calib_seqlen) <= 0:
        raise UserError(f"calib_samples ({calib_samples}) and calib_seqlen ({calib_seqlen}) must be positive")
    load_text(calib_dataset, budget_chars=0)
    if os.path.abspath(work_dir) == os.path.abspath(model):
        raise UserError(f"--work_dir {work_dir} is the model directory; choose another folder")

    t0 = time.time()
    hf_model, tokenizer = load_model(model)
    data = get_calib_data(calib_dataset, tokenizer, calib_samples, calib_seqlen)
    if is_auto(mixed):
        wide = set(auto_int8_modules(hf_model, data, group, mixed))
    hidden, kwargs = layer0_inputs(hf_model, data, device)
    out = torch.empty_like(hidden)
    packed: Dict[str, torch.Tensor] = {}
    losses: List[float] = []
    groups = SEQUENTIAL if true_sequential else (sum(SEQUENTIAL, ()),)
    layers = decoder_layers(hf_model)
    for i in tqdm(range(len(layers)), desc=f"gptq w{bits} g{group}", unit="layer"):
        prefix = f"model.layers.{i}."
        with OnDevice(layers[i], device) as layer:
            widths = {n: 8 if prefix + n in wide else bits for names in groups for n in names}
            for n, (q, s, z, loss) in gptq_layer(layer, hidden, kwargs, device, groups, widths, group, damp,
                                                 act_order, sym, search).items():
                losses.append(loss)
                qw, qz, sc, g_idx = pack_gptq(q.cpu().numpy(), z.cpu().numpy(), s.cpu().numpy(), widths[n])
                for suffix, arr in (("qweight", qw), ("qzeros", qz), ("scales", sc), ("g_idx", g_idx)):
                    packed[f"{prefix}{n}.{suffix}"] = torch.from_numpy(arr)
                bias = layer.get_submodule(n).bias
                if bias is not None:
                    packed[f"{prefix}{n}.bias"] = bias.data.to("cpu", torch.float16)
            _run(layer, hidden, out, kwargs, device)
        hidden, out = out, hidden
    if lm_head:
        q, s, z, loss = gptq_lm_head(hf_model, hidden, device, bits, group, damp, act_order, sym, search)
        losses.append(loss)
        qw, qz, sc, g_idx = pack_gptq(q.cpu().numpy(), z.cpu().numpy(), s.cpu().numpy(), bits)
        for suffix, arr in (("qweight", qw), ("qzeros", qz), ("scales", sc), ("g_idx", g_idx)):
            packed[f"lm_head.{suffix}"] = torch.from_numpy(arr)
    qc = quantization_config(bits, group, act_order, sym, damp, true_sequential, sorted(wide), search, lm_head)
    save_quantized(work_dir, hf_model, packed, qc, model, tokenizer)
    with open(os.path.join(work_dir, "quantize_config.json"), "w") as f:
        json.dump(qc, f, indent=2)
    save_record(work_dir, calib_dataset, calib_samples, calib_seqlen)
    print(f"gptq: {len(layers)} layers, w{bits} g{group}{' act-order' if act_order else ''}"
          f"{f', {len(wide)} modules at 8 bits ({mixed})' if wide else ''}{', lm head' if lm_head else ''}, "
          f"{data.shape[0]} x {data.shape[1]} tokens, mean loss {sum(losses) / len(losses):.4g}, "
          f"{time.time() - t0:.1f}s; GPTQ checkpoint in {work_dir}")
