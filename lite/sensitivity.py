"""Mixed precision chosen by measured sensitivity (`--mixed auto:BITS`).

Each workspace linear (``LAYER.w_qkv`` = q/k/v together, ``wo``, ``w1`` = gate, ``w3`` = up,
``w2`` = down) is quantized *alone* to int4 (round-to-nearest, min-max groups: the cheap probe)
and the model's output distribution on a few calibration samples is compared with the fp
model's: ``KL(p_fp || p_q)`` averaged over tokens. That costs one forward pass per linear
(``5 * layers`` of them; SmolLM2-135M: 150 passes over 1,024 tokens, about a minute on 2 cores).

Then the linears to keep at 8 bits are picked greedily by KL saved per extra bit stored
(``kl / n_weights``), while the decoder linears' average bits per weight (scales and zero
points counted, fp16 each: ``b + 32 / G``) stays within the budget. Keeping a linear at 8 bits
is taken to remove its KL (int8's own error is two orders smaller) and KLs to add, which is
what the greedy order assumes; the measured perplexity is what tells whether it held.
"""
from __future__ import annotations

from typing import Dict, List, Tuple

import torch
from tqdm import tqdm

from turbolm.converter.quant import HF_LINEAR_MODULES, WORKSPACE_LINEARS
from turbolm.errors import UserError

from .model_utils import decoder_layers
from .quantize import fake_quantize

# The workspace's linears (convert --mixed names) -> the HF modules they hold.
WORKSPACE_MODULES = {w: tuple(HF_LINEAR_MODULES[c] for c in cs) for w, cs in WORKSPACE_LINEARS.items()}


def parse_auto(recipe) -> float:
    """``auto:BITS`` -> the budget in bits per weight (> 4, < 8)."""
    try:
        budget = float(str(recipe).split(":", 1)[1])
    except (IndexError, ValueError):
        budget = -1.0
    if not 4 < budget < 8.5:
        raise UserError(f"--mixed {recipe!r}: write auto:BITS with BITS the average bits per weight of the decoder "
                        f"linears to stay within, between 4 and 8.5 (e.g. auto:5)")
    return budget


def is_auto(recipe) -> bool:
    return isinstance(recipe, str) and recipe.strip().startswith("auto")


def _kl(ref_logp: torch.Tensor, logits: torch.Tensor) -> float:
    logp = torch.log_softmax(logits.float(), -1)
    return float((ref_logp.exp() * (ref_logp - logp)).sum(-1).mean())


@torch.no_grad()
def measure(model, data: torch.Tensor, group: int, bits: int = 4) -> Dict[str, float]:
    """``{"LAYER.NAME": KL}`` of ``model`` (HF causal LM, fp32, on its device) on ``data``
    [n, seq] token ids, each workspace linear quantized alone to ``bits``."""
    layers = decoder_layers(model)
    ref = torch.log_softmax(model(data).logits.float(), -1)
    out: Dict[str, float] = {}
    entries = [(i, name) for i in range(len(layers)) for name in WORKSPACE_MODULES]
    for i, name in tqdm(entries, desc="sensitivity", unit="linear"):
        mods = [layers[i].get_submodule(m) for m in WORKSPACE_MODULES[name]]
        saved = [m.weight.data.clone() for m in mods]
        try:
            for m in mods:
                m.weight.data.copy_(fake_quantize(m.weight.data, bits, group).to(m.weight.dtype))
            out[f"{i}.{name}"] = _kl(ref, model(data).logits)
        finally:
            for m, w in zip(mods, saved):
                m.weight.data.copy_(w)
    return out


def sizes(model) -> Dict[str, int]:
    """``{"LAYER.NAME": weights}`` of every workspace linear."""
    return {f"{i}.{name}": sum(layer.get_submodule(m).weight.numel() for m in mods)
            for i, layer in enumerate(decoder_layers(model)) for name, mods in WORKSPACE_MODULES.items()}


def choose(kl: Dict[str, float], n: Dict[str, int], group: int, budget: float) -> Tuple[List[str], float]:
    """The entries to keep at 8 bits (greedy by KL per weight) and the resulting bits per weight."""
    total = sum(n.values())
    extra = 32.0 / group
    bits = 4 + extra
    if bits > budget:
        raise UserError(f"--mixed auto:{budget:g}: int4 alone takes {bits:.2f} bits per weight at group size "
                        f"{group}; give a budget above that")
    chosen = []
    for key in sorted(kl, key=lambda k: kl[k] / n[k], reverse=True):
        if bits + 4 * n[key] / total <= budget + 1e-9:
            chosen.append(key)
            bits += 4 * n[key] / total
    return sorted(chosen, key=lambda k: (int(k.split(".")[0]), k)), bits
