"""GPTQ (Frantar et al. 2022, "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained
Transformers"), Algorithm 1, for one Linear: columns quantized one at a time, each one's rounding
error pushed onto the not-yet-quantized columns through the inverse Hessian of the layer's
input, so the layer's *output* error on the calibration activations stays small.

For ``W [out, in]`` and the input's second moment ``H = 2 X^T X / n`` ``[in, in]``:

1. dead inputs (``H[i, i] == 0``) get ``H[i, i] = 1`` and ``W[:, i] = 0``;
2. dampening: ``H += damp * mean(diag H) * I`` (``damp`` = ``damp_percent``, 0.01 by default);
3. optional act-order: columns visited by decreasing ``diag H`` (the most active inputs first);
4. ``U = chol(H^-1)^T`` (upper), and for column ``j`` in visiting order, in blocks of 128:
   ``q_j = quant(w_j)``, ``e = (w_j - q_j) / U[j, j]``, ``W[:, k] -= e * U[j, k]`` for later ``k``.

Groups: the quantization parameters (scale, zero) of group ``g`` cover input columns
``[g G, (g + 1) G)`` in the *original* order and are computed from the weights as they stand when
the group's first column is reached (without act-order) or, with act-order, from the original
weights before any update ("static groups", as AutoGPTQ's ``static_groups``): either way a group
is contiguous, ``g_idx[i] = i // G``, which is what the runtime's kernels and vLLM's fast paths take.

Quantizer: symmetric by default, as AutoGPTQ: ``scale = 2 max|w| / (2^b - 1)``, zero ``2^(b-1)``;
asymmetric: ``scale = (max - min) / (2^b - 1)``, ``zero = round(-min / scale)`` (at least 1: the v1
checkpoint format stores zero - 1). Scales are rounded
to fp16 first (they are stored so), and ``W = (q - zero) * scale``, the same as lite/quantize.py.
With ``search > 0`` a group's (scale, zero) are instead searched on that grid for the smallest
error weighted by ``diag H`` (lite/qparams_search.py), still integer zeros.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from .qparams_search import search_qparams

BLOCK = 128  # columns per lazy-update block (the paper's B)


def group_params(w: torch.Tensor, bits: int, sym: bool, imp: Optional[torch.Tensor] = None,
                 search: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(scale, zero)`` [out, 1] of the columns ``w`` [out, g] of one group: min-max, or with
    ``search`` grid points the ``imp`` [g]-weighted best (lite/qparams_search.py)."""
    if search:
        return search_qparams(w, bits, sym, imp, grid=search, zero_min=0 if sym else 1)
    maxq = (1 << bits) - 1
    mx, mn = w.amax(1, keepdim=True).clamp(min=0), w.amin(1, keepdim=True).clamp(max=0)
    if sym:
        amax = torch.maximum(mx, -mn)
        scale = (2 * amax / maxq).clamp(min=1e-8).half().float()
        zero = torch.full_like(scale, float((maxq + 1) // 2))
    else:
        scale = ((mx - mn) / maxq).clamp(min=1e-8).half().float()
        zero = torch.round(-mn / scale).clamp(1, maxq)  # >= 1: GPTQ v1 checkpoints store zero - 1
    return scale, zero


def quant_col(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """The integers of column(s) ``w`` [out] (or [out, k]) under per-row ``scale`` / ``zero``."""
    return torch.clamp(torch.round(w / scale) + zero, 0, (1 << bits) - 1)


def inverse_hessian_factor(H: torch.Tensor, W: torch.Tensor, damp: float) -> torch.Tensor:
    """``U = chol(H^-1)^T`` after the dead-input fix (H[i, i] = 1; W's dead columns zeroed in
    place) and dampening; retried with 10x the dampening if H is not positive definite."""
    H = H.clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    eye = torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
    for attempt in range(4):
        Hd = H + (damp * 10 ** attempt) * torch.mean(torch.diag(H)) * eye
        L, info = torch.linalg.cholesky_ex(Hd)
        if int(info) == 0:
            Hinv = torch.cholesky_inverse(L)
            return torch.linalg.cholesky(Hinv, upper=True)
    raise ValueError("the Hessian is not positive definite even with 1000x dampening")


@torch.no_grad()
def gptq_quantize(W: torch.Tensor, H: torch.Tensor, bits: int, group_size: int, damp: float = 0.01,
                  act_order: bool = False, sym: bool = True,
                  search: int = 0) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """GPTQ of ``W [out, in]`` with input Hessian ``H [in, in]`` (both float32, not modified).
    Returns ``(q uint8 [out, in], scales [out, in/G], zeros [out, in/G], loss)``: original
    column order, ``W ~ (q - zeros) * scales`` per group; ``loss`` is the proxy objective
    ``sum (w - q)^2 / U_jj^2 / 2`` (the layer's added output error, in H's units). ``search``: grid
    points of the importance-weighted (scale, zero) search, 0 for min-max."""
    W = W.detach().float().clone()
    H = H.detach().float()
    out_f, in_f = W.shape
    G = group_size
    n_groups = in_f // G
    imp = torch.diag(H).clone()  # [in] original order: each input's importance for the group search
    W[:, torch.diag(H) == 0] = 0  # dead inputs (inverse_hessian_factor fixes their H entries)
    scales = torch.zeros(out_f, n_groups, device=W.device)
    zeros = torch.zeros(out_f, n_groups, device=W.device)
    if act_order:  # static groups: each group's parameters from the original weights
        perm = torch.argsort(torch.diag(H), descending=True)
        for g in range(n_groups):
            scales[:, g:g + 1], zeros[:, g:g + 1] = group_params(W[:, g * G:(g + 1) * G], bits, sym,
                                                                 imp[g * G:(g + 1) * G], search)
        W, H = W[:, perm], H[perm][:, perm]
    else:
        perm = torch.arange(in_f, device=W.device)
    U = inverse_hessian_factor(H, W, damp)
    order = perm.tolist()  # the visiting order as host ints: no device sync per column
    Q = torch.zeros_like(W)
    loss = 0.0
    for b0 in range(0, in_f, BLOCK):
        b1 = min(b0 + BLOCK, in_f)
        Wb, Ub = W[:, b0:b1].clone(), U[b0:b1, b0:b1]
        Err = torch.zeros_like(Wb)
        for j in range(b1 - b0):
            col = order[b0 + j]
            g = col // G
            if not act_order and col % G == 0:  # a group's first column: its parameters from W as it stands
                cols = Wb[:, j:j + G]  # a group crossing the block's end: the rest from W, not yet lazily updated
                if cols.shape[1] < G:
                    cols = torch.cat([cols, W[:, b1:b1 + G - cols.shape[1]]], 1)
                scales[:, g:g + 1], zeros[:, g:g + 1] = group_params(cols, bits, sym, imp[col:col + G], search)
            s, z = scales[:, g], zeros[:, g]
            w = Wb[:, j]
            q = quant_col(w, s, z, bits)
            Q[:, b0 + j] = q
            deq = (q - z) * s
            d = Ub[j, j]
            loss += float(((w - deq) ** 2).sum() / d ** 2) / 2
            e = (w - deq) / d
            Wb[:, j:] -= e.unsqueeze(1) * Ub[j, j:].unsqueeze(0)
            Err[:, j] = e
        W[:, b1:] -= Err @ U[b0:b1, b1:]  # the block's errors onto the later columns, at once
    inv = torch.argsort(perm)
    return Q[:, inv].to(torch.uint8), scales, zeros, loss
