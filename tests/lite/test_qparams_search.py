"""The importance-weighted (scale, zero) search (lite/qparams_search.py): never worse than
min-max under its own objective, close to a brute-force optimum, a valid stored group, and
through GPTQ a smaller layer output error than min-max groups."""
import numpy as np
import pytest
import torch

from turbolm.errors import UserError
from turbolm.lite.gptq_core import gptq_quantize, group_params
from turbolm.lite.qparams_search import parse_grid, search_qparams


def werr(w, imp, s, z, bits):
    q = torch.clamp(torch.round(w / s) + z, 0, (1 << bits) - 1)
    return (imp * ((q - z) * s - w) ** 2).sum(-1)


def groups(seed, rows=256, G=64):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, G, generator=g) * torch.rand(rows, 1, generator=g)
    w[:, :3] *= 4  # a few large weights, as LLM weights have
    imp = torch.rand(rows, G, generator=g) ** 4 * 10  # heavy-tailed channel importance
    return w, imp


@pytest.mark.parametrize("bits,sym", [(4, False), (4, True), (8, False)])
def test_never_worse_than_min_max_and_a_valid_group(bits, sym):
    w, imp = groups(1)
    s, z = search_qparams(w, bits, sym, imp, grid=10, zero_min=0 if sym else 1)
    s0, z0 = group_params(w, bits, sym)
    e, e0 = werr(w, imp, s, z, bits), werr(w, imp, s0, z0, bits)
    assert torch.all(e <= e0 * (1 + 1e-6))
    assert float(e.mean()) < 0.9 * float(e0.mean())  # and clearly better on heavy-tailed importance
    assert torch.equal(s, s.half().float()) and torch.equal(z, torch.round(z))  # fp16 scales, integer zeros
    assert int(z.min()) >= (0 if sym else 1) and int(z.max()) <= (1 << bits) - 1
    if sym:
        assert torch.all(z == 1 << (bits - 1))


def test_close_to_brute_force_optimum():
    """Every integer zero with 400 scales around min-max's: the grid search gets within 10% of it."""
    w, imp = groups(2, rows=32)
    s, z = search_qparams(w, 4, False, imp, grid=10)
    best = torch.full((w.shape[0],), float("inf"))
    s0, _ = group_params(w, 4, False)
    for zz in range(16):
        for f in np.linspace(0.3, 1.5, 400):
            cand = (s0 * float(f)).half().float()
            best = torch.minimum(best, werr(w, imp, cand, torch.full_like(cand, zz), 4))
    got = werr(w, imp, s, z, 4)
    assert torch.all(got >= best * (1 - 1e-3))  # the oracle really is a lower bound ...
    assert float(got.sum()) <= 1.1 * float(best.sum())  # ... and the search comes close to it


def test_gptq_with_search_has_lower_output_error():
    """Input channels of very unequal strength (log-normal, as LLM activations): a group's range
    set by a weakly driven column wastes levels that the search gives to the strong ones."""
    g = torch.Generator().manual_seed(0)
    W = torch.randn(64, 256, generator=g)
    W[:, ::16] *= 3
    X = torch.randn(4096, 256, generator=g) @ (0.3 * torch.randn(256, 256, generator=g) + torch.eye(256))
    X *= torch.exp(1.5 * torch.randn(256, generator=g))
    H = 2 * X.T @ X / X.shape[0]

    def err(search, act_order):
        q, s, z, _ = gptq_quantize(W, H, 4, 64, act_order=act_order, sym=False, search=search)
        deq = ((q.float().reshape(64, -1, 64) - z.unsqueeze(-1)) * s.unsqueeze(-1)).reshape(64, 256)
        assert int(z.min()) >= 1  # GPTQ v1 stores zero - 1
        return float(((X @ (W - deq).T) ** 2).mean())

    for act_order in (False, True):
        assert err(10, act_order) < 0.5 * err(0, act_order)


@pytest.mark.parametrize("bad", [1, -1, 51, "x"])
def test_grid_is_checked(bad):
    with pytest.raises(UserError, match="--scale_search"):
        parse_grid(bad)
    assert parse_grid(0) == 0 and parse_grid("10") == 10


def test_rtn_quantize_with_search_is_an_ordinary_group():
    """lite/quantize.py with ``search``: AutoAWQ-shaped outputs (int zeros in 0..15, fp16 scales) whose
    importance-weighted error is below min-max's on every row."""
    from turbolm.lite.quantize import dequantize, quantize

    w, imp = groups(3, rows=64, G=256)
    col_imp = imp[0]  # one importance per input channel, as E[x^2] is
    q, z, s = quantize(w, 4, 64, col_imp, search=10)
    q0, z0, s0 = quantize(w, 4, 64)
    assert q.dtype == z.dtype == torch.int32 and q.shape == w.shape and z.shape == s.shape == (64, 4)
    assert int(z.min()) >= 0 and int(z.max()) <= 15 and torch.equal(s, s.half().float())
    err = lambda q, z, s: (col_imp * (dequantize(q, z, s, 64) - w) ** 2).sum(1)  # noqa: E731
    assert torch.all(err(q, z, s) <= err(q0, z0, s0) * (1 + 1e-6))
