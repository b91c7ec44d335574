"""The GPTQ checkpoint layout of AutoGPTQ / GPTQModel (``checkpoint_format: gptq``, "v1"), which
vLLM, SGLang and transformers (through optimum / gptqmodel) read. Per quantized Linear ``NAME``
with ``in`` inputs, ``out`` outputs, ``b`` bits (``per = 32 / b`` values per int32), ``G`` the group:

- ``NAME.qweight`` int32 ``[in / per, out]``: value ``k`` of word ``[r, o]`` is ``q[o, r per + k]``
  in bits ``[b k, b (k + 1))`` (packed along the input dim, low bits first);
- ``NAME.qzeros``  int32 ``[in / G, out / per]``: zero points *minus one* (v1's convention),
  packed along the output dim the same way;
- ``NAME.scales``  fp16  ``[in / G, out]``;
- ``NAME.g_idx``   int32 ``[in]``: the group of each input; ``i // G`` unless the checkpoint was
  made with act-order and dynamic groups (then scattered);

and ``W[o, i] = (q[o, i] - zero[g_idx[i], o]) * scale[g_idx[i], o]``. config.json carries
``quantization_config = {quant_method: gptq, bits, group_size, desc_act, sym, ...}`` and
``quantize_config.json`` the same for older loaders.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np


def _pack_rows(v: np.ndarray, bits: int) -> np.ndarray:
    """[n, m] integers < 2^bits -> int32 [n / per, m], consecutive rows in one word, low bits first."""
    per = 32 // bits
    v = v.astype(np.uint32).reshape(v.shape[0] // per, per, v.shape[1])
    out = np.zeros((v.shape[0], v.shape[2]), np.uint32)
    for k in range(per):
        out |= v[:, k, :] << np.uint32(bits * k)
    return out.view(np.int32)


def _unpack_rows(p: np.ndarray, bits: int) -> np.ndarray:
    per, mask = 32 // bits, (1 << bits) - 1
    u = p.view(np.uint32)
    out = np.stack([(u >> np.uint32(bits * k)) & np.uint32(mask) for k in range(per)], 1)  # [n/per, per, m]
    return out.reshape(u.shape[0] * per, u.shape[1]).astype(np.uint8)


def pack_gptq(q: np.ndarray, zeros: np.ndarray, scales: np.ndarray, bits: int
              ) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``q [out, in]``, ``zeros`` / ``scales`` ``[out, in / G]`` (contiguous groups) ->
    ``(qweight, qzeros, scales fp16, g_idx)``. Zeros must be in ``[1, 2^bits)`` (v1 stores zero - 1)."""
    out_f, in_f = q.shape
    n_groups = zeros.shape[1]
    if zeros.min() < 1:
        raise ValueError("GPTQ v1 checkpoints cannot store a zero point of 0")
    qweight = _pack_rows(np.ascontiguousarray(q.T), bits)
    qzeros = np.ascontiguousarray(_pack_rows(zeros.astype(np.int64) - 1, bits).T)  # packed along out
    g_idx = (np.arange(in_f) // (in_f // n_groups)).astype(np.int32)
    return qweight, qzeros, np.ascontiguousarray(scales.T).astype(np.float16), g_idx


def unpack_gptq(qweight: np.ndarray, qzeros: np.ndarray, scales: np.ndarray, bits: int, zero_offset: int = 1
                ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(q uint8 [out, in], zeros [in / G, out] float32, scales [in / G, out] float32)``;
    ``zero_offset`` 1 for v1 checkpoints (``checkpoint_format: gptq``), 0 for ``gptq_v2``."""
    q = _unpack_rows(qweight, bits).T
    z = _unpack_rows(np.ascontiguousarray(qzeros.T), bits).T.astype(np.float32) + zero_offset
    return np.ascontiguousarray(q), z, scales.astype(np.float32)


def dequantize_gptq(qweight, qzeros, scales, g_idx, bits: int, zero_offset: int = 1) -> np.ndarray:
    """The float32 ``[out, in]`` weight, any ``g_idx`` (act-order's scattered groups too)."""
    q, z, s = unpack_gptq(qweight, qzeros, scales, bits, zero_offset)
    g = np.asarray(g_idx, np.int64)
    return (q.astype(np.float32) - z[g].T) * s[g].T
