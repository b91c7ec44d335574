"""Group-wise asymmetric round-to-nearest weight quantization (AutoAWQ's ``pseudo_quantize_tensor``).

For a weight ``W [out, in]`` and group size ``G`` along ``in``, per (row, group):
``scale = max(max - min, 1e-5) / (2^b - 1)`` rounded to fp16 (as stored), ``zero = clamp(-round(min / scale), 0, 2^b - 1)``,
``q = clamp(round(w / scale) + zero, 0, 2^b - 1)``, and the weight reads back as ``(q - zero) * scale``.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from turbolm.errors import UserError

from .qparams_search import search_qparams

SUPPORTED_BITS = (4, 8)


def check_bits(w_bits) -> int:
    try:
        bits = int(w_bits)
    except (TypeError, ValueError):
        bits = None
    if bits not in SUPPORTED_BITS or str(w_bits).strip() not in ("4", "8"):
        raise UserError(f"--w_bits {w_bits!r} is not supported; use 4 (int4) or 8 (int8)")
    return bits


def quantize(w: torch.Tensor, bits: int, group_size: int, imp: Optional[torch.Tensor] = None,
             search: int = 0) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(q int32 [out, in], zeros int32 [out, in/G], scales float32 [out, in/G])``; scales are fp16 values.
    ``search`` > 0: each group's (scale, zero) from the ``imp`` [in]-weighted grid search instead of min-max."""
    out_f, in_f = w.shape
    g = w.float().reshape(out_f, in_f // group_size, group_size)
    max_int = (1 << bits) - 1
    if search:
        weight = None if imp is None else imp.float().reshape(1, in_f // group_size, group_size)
        scales, zeros = search_qparams(g, bits, False, weight, grid=search)
    else:
        mx, mn = g.amax(-1, keepdim=True), g.amin(-1, keepdim=True)
        scales = ((mx - mn).clamp(min=1e-5) / max_int).to(torch.float16).float()
        zeros = (-torch.round(mn / scales)).clamp(0, max_int)
    q = torch.clamp(torch.round(g / scales) + zeros, 0, max_int)
    return (q.reshape(out_f, in_f).to(torch.int32), zeros.squeeze(-1).to(torch.int32), scales.squeeze(-1))


def dequantize(q: torch.Tensor, zeros: torch.Tensor, scales: torch.Tensor, group_size: int) -> torch.Tensor:
    out_f, in_f = q.shape
    g = q.float().reshape(out_f, in_f // group_size, group_size)
    return ((g - zeros.float().unsqueeze(-1)) * scales.unsqueeze(-1)).reshape(out_f, in_f)


def fake_quantize(w: torch.Tensor, bits: int, group_size: int) -> torch.Tensor:
    """Quantize and read back: what the runtime will compute with, in float32."""
    return dequantize(*quantize(w, bits, group_size), group_size)
