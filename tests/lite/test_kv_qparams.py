"""`lite kv_qparams`: values hand-computed from synthetic statistics, the 4-float file format, errors."""
import os

import numpy as np
import pytest
import torch

from turbolm.config import write_config_ini
from turbolm.errors import UserError
from turbolm.lite.kv_qparams import main

LAYERS, KV, D = 2, 4, 8


def _workspace(tmp_path, layers=LAYERS, kv=KV, d=D):
    weights = tmp_path / "ws" / "triton_models" / "weights"
    weights.mkdir(parents=True)
    write_config_ini(str(weights / "config.ini"), dict(
        model_name="base", head_num=2 * kv, kv_head_num=kv, vocab_size=100, num_layer=layers, inter_size=64,
        rotary_embedding=d, size_per_head=d))
    return weights


def _stats(tmp_path, layers=LAYERS, kv=KV, d=D):
    gen = torch.Generator().manual_seed(0)
    out = {}
    for kind in ("key", "value"):
        mx = {i: torch.rand(kv, d, generator=gen) * 3 + 0.5 for i in range(layers)}
        mn = {i: -torch.rand(kv, d, generator=gen) * 2 - 0.1 for i in range(layers)}
        out[kind] = {"max": mx, "min": mn, "absmax": {i: torch.maximum(mx[i], -mn[i]) for i in range(layers)}}
        torch.save(out[kind], tmp_path / f"{kind}_stats.pth")
    return out


def _read(weights, layer, rank):
    path = weights / f"layers.{layer}.past_kv_scale.{rank}.weight"
    assert os.path.getsize(path) == 16   # 4 float32, no header
    return np.fromfile(path, dtype=np.float32)


@pytest.mark.parametrize("tp", [1, 2])
def test_asymmetric(tmp_path, tp):
    weights, stats = _workspace(tmp_path), _stats(tmp_path)
    main(str(tmp_path), str(weights), kv_sym=False, num_tp=tp)
    per = KV // tp
    for i in range(LAYERS):
        for r in range(tp):
            want = []
            for kind in ("key", "value"):
                mx = stats[kind]["max"][i][r * per:(r + 1) * per].max().item()
                mn = stats[kind]["min"][i][r * per:(r + 1) * per].min().item()
                want += [(mx - mn) / 255, (mx + mn) / 2]
            np.testing.assert_allclose(_read(weights, i, r), want, rtol=1e-6)
    assert not (weights / f"layers.0.past_kv_scale.{tp}.weight").exists()


def test_symmetric_zero_points(tmp_path):
    weights, stats = _workspace(tmp_path), _stats(tmp_path)
    main(str(tmp_path), str(weights.parent.parent), kv_sym="True", num_tp=2)   # the workspace root works too
    for i in range(LAYERS):
        for r in range(2):
            got = _read(weights, i, r)
            assert got[1] == 0 and got[3] == 0
            k_absmax = stats["key"]["absmax"][i][2 * r:2 * r + 2].max().item()
            np.testing.assert_allclose(got[0], k_absmax / 127, rtol=1e-6)


def test_int8_roundtrip_of_the_calibrated_range(tmp_path):
    weights, stats = _workspace(tmp_path), _stats(tmp_path)
    main(str(tmp_path), str(weights), kv_sym=False, num_tp=1)
    k_scale, k_zp, _, _ = _read(weights, 0, 0)
    f = torch.linspace(stats["key"]["min"][0].min().item(), stats["key"]["max"][0].max().item(), 101)
    q = torch.clamp(torch.round((f - k_zp) / k_scale), -128, 127)
    assert (f - (q * k_scale + k_zp)).abs().max() <= k_scale / 2 + 1e-6


@pytest.mark.parametrize("case, match", [
    ("missing", "run `turbolm lite calibrate"),
    ("layers", "num_layer"),
    ("heads", "kv_head_num"),
    ("tp", "does not divide"),
    ("no_ini", "config.ini"),
])
def test_errors_write_nothing(tmp_path, case, match):
    weights = _workspace(tmp_path)
    tp = 1
    if case == "layers":
        _stats(tmp_path, layers=LAYERS + 1)
    elif case == "heads":
        _stats(tmp_path, kv=KV // 2)
    elif case == "tp":
        _stats(tmp_path)
        tp = 3
    elif case == "no_ini":
        _stats(tmp_path)
        weights = tmp_path
    with pytest.raises(UserError, match=match):
        main(str(tmp_path), str(weights), kv_sym=False, num_tp=tp)
    assert not [f for f in os.listdir(weights) if "past_kv_scale" in f]


def test_switches_the_workspace_to_int8_kv(tmp_path, capsys):
    from turbolm.config import read_config_ini

    weights, _ = _workspace(tmp_path), _stats(tmp_path)
    ini = str(weights / "config.ini")
    main(str(tmp_path), str(weights), set_policy="False")
    assert read_config_ini(ini)["quant_policy"] == 0 and "left quant_policy = 0" in capsys.readouterr().out
    main(str(tmp_path), str(weights))
    assert read_config_ini(ini)["quant_policy"] == 4
    assert "set quant_policy = 4 (was 0)" in capsys.readouterr().out
    before = read_config_ini(ini)
    main(str(tmp_path), str(weights))
    assert read_config_ini(ini) == before and "already has quant_policy = 4" in capsys.readouterr().out
