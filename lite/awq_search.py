"""Activation-aware smoothing and clipping of one decoder layer (the AWQ search, as AutoAWQ does it).

Four smoothing groups per layer (``GROUPS``): a per-channel scale ``s`` divides the output
channels of ``prev`` (a norm's weight, or a Linear's rows and bias) and multiplies the input
channels of the ``linears`` that read them, which leaves the fp model unchanged but moves
quantization error away from channels with large activations. For each group

    s(alpha) = x_mean^alpha / w_mean^(1 - alpha),  normalised so that max(s) * min(s) = 1,

is tried for ``alpha`` on a grid in [0, 1) (alpha = 0 is plain RTN), and the alpha whose quantized
``inspect`` module (whole attention, whole MLP, or the one Linear) best reproduces its fp output
on the calibration activations (mean squared error) wins. ``x_mean`` is the per-channel mean |x|
of the Linear's input over all calibration samples (calibrate's ``absmean``).

GQA, v_proj -> o_proj: o_proj's input has ``H * D`` channels, v_proj's output ``KV * D``; query head
``h`` reads kv head ``h // (H / KV)``. ``s`` lives on v's ``KV * D`` channels and is repeated over
the heads of each group for o's input (statistics of o's input are averaged over those heads).

Clipping (optional): per output row and group, the max |w| is shrunk by up to 50% (10 steps) to
minimise the Linear's output error on a token sample; q_proj and k_proj are left unclipped
(attention scores are sensitive to them), as in AutoAWQ.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Dict, List, Tuple

import torch
from torch import nn

from .quantize import fake_quantize


@dataclasses.dataclass(frozen=True)
class Group:
    prev: str                  # module whose output channels are divided by s
    linears: Tuple[str, ...]   # Linears whose input channels are multiplied by s
    inspect: str               # module whose output error is minimised
    inp: str                   # captured input fed to ``inspect`` (and to ``linears``)


GROUPS: Tuple[Group, ...] = (
    Group("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "self_attn", "attn"),
    Group("self_attn.v_proj", ("self_attn.o_proj",), "self_attn.o_proj", "o_proj"),
    Group("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj"), "mlp", "mlp"),
    Group("mlp.up_proj", ("mlp.down_proj",), "mlp.down_proj", "down_proj"),
)
NO_CLIP = ("self_attn.q_proj", "self_attn.k_proj")


@dataclasses.dataclass
class SearchConfig:
    bits: int
    group_size: int
    n_grid: int = 20
    clip: bool = True
    clip_grid: int = 20          # shrink steps of 1/clip_grid ...
    clip_max_shrink: float = 0.5  # ... up to this fraction
    clip_tokens: int = 512


@torch.no_grad()
def capture_inputs(layer: nn.Module, hidden: torch.Tensor, layer_kwargs: dict) -> Dict[str, torch.Tensor]:
    """Inputs of the four groups' inspect modules for ``hidden`` [n, seq, hidden] (fp32, on the layer's device)."""
    caps: Dict[str, List[torch.Tensor]] = {"o_proj": [], "down_proj": []}
    hooks = [layer.self_attn.o_proj.register_forward_hook(lambda m, i, o: caps["o_proj"].append(i[0])),
             layer.mlp.down_proj.register_forward_hook(lambda m, i, o: caps["down_proj"].append(i[0]))]
    try:
        x_attn = layer.input_layernorm(hidden)
        h = hidden + attention(layer, x_attn, layer_kwargs)
        x_mlp = layer.post_attention_layernorm(h)
        layer.mlp(x_mlp)
    finally:
        for hk in hooks:
            hk.remove()
    return {"attn": x_attn, "o_proj": caps["o_proj"][0], "mlp": x_mlp, "down_proj": caps["down_proj"][0]}


def input_importance(layer: nn.Module, hidden: torch.Tensor, layer_kwargs: dict) -> Dict[str, torch.Tensor]:
    """``E[x_j^2]`` [in] of every Linear's input (as the layer stands: after smoothing), the weights
    of the importance-weighted group search (lite/qparams_search.py)."""
    caps = capture_inputs(layer, hidden, layer_kwargs)
    return {n: caps[g.inp].reshape(-1, caps[g.inp].shape[-1]).pow(2).mean(0) for g in GROUPS for n in g.linears}


def attention(layer: nn.Module, x: torch.Tensor, layer_kwargs: dict) -> torch.Tensor:
    out = layer.self_attn(hidden_states=x, **layer_kwargs)
    return out[0] if isinstance(out, (tuple, list)) else out


def _head_maps(layer: nn.Module, group: Group, num_heads: int, num_kv_heads: int, head_dim: int):
    """(reduce, expand): channel maps between s's space and the linears' input space (GQA v -> o)."""
    if group.prev == "self_attn.v_proj" and num_heads != num_kv_heads:
        rep = num_heads // num_kv_heads

        def reduce(t):   # [H * D] -> [KV * D], mean over the query heads of each kv head
            return t.view(num_kv_heads, rep, head_dim).mean(1).reshape(-1)

        def expand(s):   # [KV * D] -> [H * D]
            return s.view(num_kv_heads, 1, head_dim).expand(num_kv_heads, rep, head_dim).reshape(-1)
        return reduce, expand
    ident = lambda t: t  # noqa: E731
    return ident, ident


def _w_mean(weights: List[torch.Tensor], group_size: int) -> torch.Tensor:
    """Per input channel mean of |w| normalised by each (row, group)'s max |w| (AutoAWQ's duo scaling)."""
    w = torch.cat(weights, 0)
    g = w.abs().reshape(w.shape[0], -1, group_size)
    g = g / g.amax(-1, keepdim=True).clamp(min=1e-6)
    return g.reshape(w.shape).mean(0)


@torch.no_grad()
def search_group(layer: nn.Module, group: Group, x: torch.Tensor, x_mean: torch.Tensor, inspect: Callable,
                 cfg: SearchConfig, maps) -> Tuple[torch.Tensor, float, float]:
    """The best scales of ``group`` (in s's space), with the best alpha and its loss relative to alpha = 0."""
    reduce, expand = maps
    fcs = [layer.get_submodule(n) for n in group.linears]
    originals = [fc.weight.data.clone() for fc in fcs]
    fp_out = inspect(x)
    x_mean = reduce(x_mean.to(x.device).float())
    w_mean = reduce(_w_mean(originals, cfg.group_size))
    best = (float("inf"), None, 0.0)
    losses = []
    try:
        for k in range(cfg.n_grid):
            alpha = k / cfg.n_grid
            s = (x_mean.pow(alpha) / (w_mean.pow(1 - alpha) + 1e-4)).clamp(min=1e-4)
            s = s / (s.max() * s.min()).sqrt()
            se = expand(s).view(1, -1)
            for fc, w in zip(fcs, originals):
                fc.weight.data = fake_quantize(w * se, cfg.bits, cfg.group_size) / se
            loss = (inspect(x) - fp_out).float().pow(2).mean().item()
            losses.append(loss)
            if loss < best[0]:
                best = (loss, s.clone(), alpha)
    finally:
        for fc, w in zip(fcs, originals):
            fc.weight.data = w
    rel = best[0] / losses[0] if losses[0] > 0 else 1.0
    return best[1], best[2], rel


@torch.no_grad()
def apply_scale(layer: nn.Module, group: Group, s: torch.Tensor, maps, inputs: Dict[str, torch.Tensor]) -> None:
    """Fold ``s`` into the layer (prev / s, linears * s) and into the captured input of the group."""
    _, expand = maps
    prev = layer.get_submodule(group.prev)
    s = s.to(prev.weight.device)
    if isinstance(prev, nn.Linear):
        prev.weight.data.div_(s.view(-1, 1))
    else:  # a norm: its weight scales each output channel
        prev.weight.data.div_(s)
    if getattr(prev, "bias", None) is not None:
        prev.bias.data.div_(s)
    se = expand(s)
    for n in group.linears:
        layer.get_submodule(n).weight.data.mul_(se.view(1, -1))
    inputs[group.inp] = inputs[group.inp] / se


@torch.no_grad()
def clip_linear(fc: nn.Linear, x: torch.Tensor, cfg: SearchConfig) -> float:
    """Clamp ``fc.weight`` per (row, group) to the max |w| that best keeps its output; returns mean shrink.

    Per group g the partial outputs ``x[:, g] @ w[:, g].T`` are one batched matmul over groups.
    """
    w = fc.weight.data
    out_f, in_f = w.shape
    n_groups = in_f // cfg.group_size
    xs = x.reshape(-1, in_f)
    step = max(1, xs.shape[0] // cfg.clip_tokens)
    xs = xs[::step][:cfg.clip_tokens]
    t = xs.shape[0]
    xs = xs.reshape(t, n_groups, cfg.group_size).transpose(0, 1)                     # [ng, t, G]
    oc_batch = max(1, (1 << 22) // (n_groups * t))
    steps = int(cfg.clip_max_shrink * cfg.clip_grid)
    kept = []
    for o in range(0, out_f, oc_batch):
        wb = w[o:o + oc_batch]
        oc = wb.shape[0]
        wg = wb.reshape(oc, n_groups, cfg.group_size)                                 # [oc, ng, G]
        org_out = torch.bmm(xs, wg.permute(1, 2, 0))                                  # [ng, t, oc]
        org_max = wg.abs().amax(-1, keepdim=True)                                     # [oc, ng, 1]
        best_max, min_err = org_max.clone(), torch.full_like(org_max, float("inf"))
        for i in range(steps):
            max_val = org_max * (1 - i / cfg.clip_grid)
            q = fake_quantize(torch.clamp(wg, -max_val, max_val).reshape(oc, in_f), cfg.bits, cfg.group_size)
            cur = torch.bmm(xs, q.reshape(oc, n_groups, cfg.group_size).permute(1, 2, 0))
            err = (cur - org_out).pow(2).mean(1).transpose(0, 1).unsqueeze(-1)       # [oc, ng, 1]
            better = err < min_err
            min_err[better], best_max[better] = err[better], max_val[better]
        kept.append((best_max / org_max.clamp(min=1e-12)).mean().item())
        w[o:o + oc_batch] = torch.clamp(wg, -best_max, best_max).reshape(oc, in_f)
    return 1 - sum(kept) / len(kept)


@torch.no_grad()
def smooth_and_clip_layer(layer: nn.Module, inputs: Dict[str, torch.Tensor], act_absmean: Dict[str, torch.Tensor],
                          layer_kwargs: dict, cfg: SearchConfig, num_heads: int, num_kv_heads: int,
                          head_dim: int) -> Dict[str, float]:
    """Search and fold the four groups' scales into ``layer`` (in place), then clip. Returns a summary:
    per group the chosen alpha and its loss relative to RTN (alpha = 0)."""
    inspectors = {
        "self_attn": lambda x: attention(layer, x, layer_kwargs),
        "mlp": layer.mlp,
    }
    summary: Dict[str, float] = {}
    found: List[Tuple[Group, torch.Tensor, tuple]] = []
    for group in GROUPS:   # every search sees the original weights and inputs (AutoAWQ order)
        maps = _head_maps(layer, group, num_heads, num_kv_heads, head_dim)
        inspect = inspectors.get(group.inspect) or layer.get_submodule(group.inspect)
        s, alpha, rel = search_group(layer, group, inputs[group.inp], act_absmean[group.linears[0]], inspect, cfg, maps)
        found.append((group, s, maps))
        summary[f"{group.prev}.alpha"] = alpha
        summary[f"{group.prev}.rel_loss"] = rel
    for group, s, maps in found:
        apply_scale(layer, group, s, maps, inputs)
    if cfg.clip:
        for group in GROUPS:
            for n in group.linears:
                if n not in NO_CLIP:
                    summary[f"{n}.clip"] = clip_linear(layer.get_submodule(n), inputs[group.inp], cfg)
    return summary
