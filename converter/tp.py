"""Tensor-parallel splitting and the q/k RoPE permutation (DESIGN.md §3). Pure numpy, no I/O.

HF keeps each head's q/k rows in rotate-half order: rows [0, D/2) are the first element of every
RoPE pair and [D/2, D) the second. The runtime rotates adjacent pairs (x[2i], x[2i+1]) with
inv_freq[i], so rows are permuted per head from [2, D/2] to [D/2, 2] -- the inverse of the permute
in HF's convert_llama_weights_to_hf.py (and exactly what llama.cpp's converter already did).
"""
import numpy as np


def rotate_half_to_interleaved(w: np.ndarray, n_heads: int, head_dim: int, rot: int = 0) -> np.ndarray:
    """Rows of ``w`` ([n_heads*head_dim, ...]): per head, the first ``rot`` (default all) rows
    [2, rot/2] -> [rot/2, 2]; rows past ``rot`` (partial rotary: not rotated) stay in place."""
    rot = rot or head_dim
    rest = w.shape[1:]
    h = w.reshape(n_heads, head_dim, *rest)
    r = h[:, :rot].reshape(n_heads, 2, rot // 2, *rest).swapaxes(1, 2).reshape(n_heads, rot, *rest)
    return np.concatenate([r, h[:, rot:]], axis=1).reshape(w.shape)


def interleaved_to_rotate_half(w: np.ndarray, n_heads: int, head_dim: int) -> np.ndarray:
    """Inverse of ``rotate_half_to_interleaved``: per head [D/2, 2] -> [2, D/2]."""
    rest = w.shape[1:]
    return w.reshape(n_heads, head_dim // 2, 2, *rest).swapaxes(1, 2).reshape(w.shape)


def qkv_rank(q: np.ndarray, k: np.ndarray, v: np.ndarray, head_num: int, kv_head_num: int, head_dim: int,
             tp: int, rank: int) -> np.ndarray:
    """Rank ``rank``'s rows [q_r; k_r; v_r] of already-permuted q/k/v ([out, ...] weights or biases).

    Head-aligned: rank r holds q heads [r*H/tp, (r+1)*H/tp) and kv heads [r*KV/tp, (r+1)*KV/tp),
    which are exactly the kv heads its q heads attend with (GQA group = H/KV)."""
    hq, hk = head_num // tp * head_dim, kv_head_num // tp * head_dim
    return np.concatenate([q[rank * hq:(rank + 1) * hq], k[rank * hk:(rank + 1) * hk], v[rank * hk:(rank + 1) * hk]])


def split_rows(w: np.ndarray, tp: int, rank: int) -> np.ndarray:
    n = w.shape[0] // tp
    return w[rank * n:(rank + 1) * n]


def split_cols(w: np.ndarray, tp: int, rank: int) -> np.ndarray:
    n = w.shape[1] // tp
    return w[:, rank * n:(rank + 1) * n]
