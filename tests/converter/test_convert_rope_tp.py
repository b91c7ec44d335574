"""The q/k permutation and the TP split, checked against their meaning (numpy only, fast)."""
import numpy as np
import pytest

from turbolm.converter.tp import interleaved_to_rotate_half, qkv_rank, rotate_half_to_interleaved


def rope_rotate_half(x, pos, theta):  # HF: pairs (j, j + D/2)
    D = x.shape[-1]
    inv = theta ** (-np.arange(0, D, 2) / D)
    ang = np.concatenate([pos * inv, pos * inv])
    rot = np.concatenate([-x[..., D // 2:], x[..., :D // 2]], axis=-1)
    return x * np.cos(ang) + rot * np.sin(ang)


def rope_interleaved(x, pos, theta):  # runtime: pairs (2i, 2i+1) with inv_freq[i]
    D = x.shape[-1]
    inv = theta ** (-np.arange(0, D, 2) / D)
    c, s = np.cos(pos * inv), np.sin(pos * inv)
    a, b = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2], out[..., 1::2] = a * c - b * s, a * s + b * c
    return out


@pytest.mark.parametrize("D", [64, 128])
def test_permuted_rows_give_interleaved_rope_the_same_scores(D):
    rng = np.random.default_rng(0)
    H, hidden = 3, 32
    wq, wk, x = rng.standard_normal((H * D, hidden)), rng.standard_normal((H * D, hidden)), rng.standard_normal(hidden)
    pq, pk = rotate_half_to_interleaved(wq, H, D), rotate_half_to_interleaved(wk, H, D)
    for h in range(H):
        sl = slice(h * D, (h + 1) * D)
        ref = rope_rotate_half(wq[sl] @ x, 7, 1e4) @ rope_rotate_half(wk[sl] @ x, 3, 1e4)
        got = rope_interleaved(pq[sl] @ x, 7, 1e4) @ rope_interleaved(pk[sl] @ x, 3, 1e4)
        assert np.isclose(ref, got)
        # and the permuted q is the interleaved rotation of the same vector, element for element
        np.testing.assert_allclose(rope_interleaved(pq[sl] @ x, 5, 1e4),
                                   rotate_half_to_interleaved(rope_rotate_half(wq[sl] @ x, 5, 1e4), 1, D))


def test_permutation_is_reshape_2_by_half_to_half_by_2():
    D = 8
    w = np.arange(2 * D)[:, None]
    np.testing.assert_array_equal(rotate_half_to_interleaved(w, 2, D)[:D, 0], [0, 4, 1, 5, 2, 6, 3, 7])
    np.testing.assert_array_equal(interleaved_to_rotate_half(rotate_half_to_interleaved(w, 2, D), 2, D), w)


def test_qkv_rank_is_head_aligned_for_gqa():
    H, KV, D, tp = 8, 4, 2, 4
    q = np.repeat(np.arange(H), D)  # row value = head index
    k = np.repeat(np.arange(KV), D) + 100
    v = np.repeat(np.arange(KV), D) + 200
    for r in range(tp):
        rows = qkv_rank(q, k, v, H, KV, D, tp, r)
        q_heads, k_heads = set(rows[rows < 100]), set(rows[(rows >= 100) & (rows < 200)] - 100)
        assert q_heads == {2 * r, 2 * r + 1}
        assert k_heads == {r} == {h // (H // KV) for h in q_heads}  # the kv head those q heads use
        assert set(rows[rows >= 200] - 200) == {r}
