"""The AWQ checkpoint packing (AutoAWQ "gemm" version), in numpy: pack, unpack, dequantize.

A quantized Linear with weight ``W [out, in]``, group size ``G`` along ``in`` and ``b`` bits is
stored as three tensors (the input dim first, as AutoAWQ's WQLinear_GEMM):

- ``qweight`` int32 ``[in, out / (32 / b)]``: ``q[i, o]`` in ``[0, 2^b)``, packed along ``out``;
- ``qzeros``  int32 ``[in / G, out / (32 / b)]``: the zero point ``z[g, o]``, packed the same way;
- ``scales``  fp16  ``[in / G, out]``;

and ``W[o, i] = (q[i, o] - z[i // G, o]) * scales[i // G, o]``.

Packing of one int32 (``P = 32 / b`` values, value ``j`` at bits ``[b*j, b*j + b)``):

- 4 bits: value ``j`` holds column ``8*c + ORDER_4BIT[j]`` of packed column ``c``, with
  ``ORDER_4BIT = [0, 2, 4, 6, 1, 3, 5, 7]`` (AutoAWQ's order, made for its fp16 dequant trick);
- 8 bits (our choice; AutoAWQ has no 8-bit GEMM format): 4 values in natural order, value ``j``
  holds column ``4*c + j``; the checkpoint says ``bits: 8``.
"""
from __future__ import annotations

from typing import Dict, Tuple

import numpy as np

ORDER_4BIT = (0, 2, 4, 6, 1, 3, 5, 7)
ORDERS: Dict[int, Tuple[int, ...]] = {4: ORDER_4BIT, 8: (0, 1, 2, 3)}


def _order(bits: int) -> np.ndarray:
    if bits not in ORDERS:
        raise ValueError(f"AWQ packing supports {sorted(ORDERS)} bits, not {bits}")
    return np.asarray(ORDERS[bits])


def pack(values, bits: int) -> np.ndarray:
    """``values`` int ``[rows, cols]`` in ``[0, 2^bits)`` -> int32 ``[rows, cols / (32 / bits)]``."""
    order = _order(bits)
    per = 32 // bits
    v = np.asarray(values).astype(np.int64)
    rows, cols = v.shape
    if cols % per:
        raise ValueError(f"{cols} columns are not a multiple of {per} ({bits}-bit packing)")
    if v.size and (v.min() < 0 or v.max() >= 1 << bits):
        raise ValueError(f"values outside [0, {1 << bits}) cannot be packed in {bits} bits")
    v = v.reshape(rows, cols // per, per)[:, :, order].astype(np.uint32)   # value j = column order[j]
    shifts = (np.arange(per, dtype=np.uint32) * bits)
    packed = np.bitwise_or.reduce(v << shifts, axis=2)
    return np.ascontiguousarray(packed.astype(np.uint32)).view(np.int32)


def unpack(packed, bits: int) -> np.ndarray:
    """Inverse of ``pack``: int32 ``[rows, p]`` -> int32 ``[rows, p * (32 / bits)]``."""
    order = _order(bits)
    per = 32 // bits
    p = np.ascontiguousarray(np.asarray(packed, dtype=np.int32)).view(np.uint32)
    shifts = (np.arange(per, dtype=np.uint32) * bits)
    vals = (p[:, :, None] >> shifts) & np.uint32((1 << bits) - 1)          # [rows, p, per], value j
    out = np.empty_like(vals)
    out[:, :, order] = vals                                                 # column order[j] = value j
    return out.reshape(p.shape[0], -1).astype(np.int32)


def pack_awq(q, zeros, scales, bits: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """From ``q [out, in]``, ``zeros [out, in/G]``, ``scales [out, in/G]`` (integers as ints) to
    ``(qweight [in, out/P], qzeros [in/G, out/P], scales fp16 [in/G, out])``."""
    q, zeros, scales = np.asarray(q), np.asarray(zeros), np.asarray(scales)
    return (pack(q.T, bits), pack(np.rint(zeros).T, bits),
            np.ascontiguousarray(scales.T.astype(np.float16)))


def unpack_awq(qweight, qzeros, scales, bits: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inverse of ``pack_awq``: ``(q [out, in], zeros [out, in/G], scales fp32 [out, in/G])``."""
    return (unpack(qweight, bits).T.copy(), unpack(qzeros, bits).T.copy(),
            np.asarray(scales, dtype=np.float32).T.copy())


def dequantize_awq(qweight, qzeros, scales, bits: int) -> np.ndarray:
    """The float32 weight ``[out, in]`` of a packed AWQ Linear; the group size is ``in / scales.shape[0]``."""
    q, z, s = unpack_awq(qweight, qzeros, scales, bits)
    group = q.shape[1] // s.shape[1]
    zf = np.repeat(z.astype(np.float32), group, axis=1)
    sf = np.repeat(s, group, axis=1)
    return (q.astype(np.float32) - zf) * sf
