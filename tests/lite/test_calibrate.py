"""`lite calibrate` statistics against a direct computation with HF on the same 2-sample batch."""
import os

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from turbolm.errors import UserError
from turbolm.lite.calib_data import get_calib_data
from turbolm.lite.calibrate import STAT_FILES, calibrate

N, SEQ = 2, 48


def _reference(model_dir, data):
    """Every decoder Linear's input/output and norm output, and the KV cache (post-RoPE keys), from HF."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    acts = {}
    hooks = []
    for name, mod in model.named_modules():
        if ".layers." in name and (isinstance(mod, torch.nn.Linear) or name.endswith("layernorm")):
            hooks.append(mod.register_forward_hook(
                lambda m, i, o, name=name: acts.__setitem__(name, (i[0].reshape(-1, i[0].shape[-1]),
                                                                   o.reshape(-1, o.shape[-1])))))
    with torch.no_grad():
        out = model(data, use_cache=True)
    for h in hooks:
        h.remove()
    return model, acts, out.past_key_values


@pytest.fixture(scope="module", params=["gqa", "bias"])
def calibrated(request, tiny_model, calib_txt, tmp_path_factory):
    model_dir = tiny_model(request.param)
    work = tmp_path_factory.mktemp(f"calib-{request.param}")
    calibrate(model_dir, calib_txt, N, SEQ, str(work), "cpu")
    data = get_calib_data(calib_txt, AutoTokenizer.from_pretrained(model_dir), N, SEQ)
    stats = {k: torch.load(os.path.join(work, f), weights_only=True) for k, f in STAT_FILES.items()}
    return (model_dir, data, stats) + _reference(model_dir, data)


def test_files_and_names(calibrated):
    _, _, stats, model, acts, _ = calibrated
    cfg = model.config
    assert set(stats["inputs"]) == {"max", "min", "mean", "absmax", "absmean"}
    assert set(stats["outputs"]) == set(stats["inputs"])
    linears = {n for n in acts if not n.endswith("layernorm")}
    assert set(stats["inputs"]["max"]) == linears and len(linears) == 7 * cfg.num_hidden_layers
    assert set(stats["outputs"]["max"]) == set(acts)
    assert set(stats["key"]) == set(stats["value"]) == {"max", "min", "absmax"}
    assert sorted(stats["key"]["max"]) == list(range(cfg.num_hidden_layers))
    assert stats["key"]["max"][0].shape == (cfg.num_key_value_heads, cfg.head_dim)


def test_activation_stats_match_direct(calibrated):
    _, _, stats, _, acts, _ = calibrated
    for name, (x, y) in acts.items():
        if not name.endswith("layernorm"):
            inp = {k: v[name] for k, v in stats["inputs"].items()}
            assert torch.equal(inp["max"], x.amax(0)) and torch.equal(inp["min"], x.amin(0)), name
            assert torch.equal(inp["absmax"], x.abs().amax(0)), name
            torch.testing.assert_close(inp["mean"], x.mean(0), rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(inp["absmean"], x.abs().mean(0), rtol=1e-5, atol=1e-6)
        out = {k: v[name] for k, v in stats["outputs"].items()}
        assert torch.equal(out["max"], y.amax(0)) and torch.equal(out["min"], y.amin(0)), name
        torch.testing.assert_close(out["absmean"], y.abs().mean(0), rtol=1e-5, atol=1e-6)


def test_post_rope_key_and_value_stats_match_hf_cache(calibrated):
    _, _, stats, model, _, cache = calibrated
    for i in range(model.config.num_hidden_layers):
        k, v = cache.layers[i].keys, cache.layers[i].values      # [batch, kv_heads, seq, head_dim], keys after RoPE
        torch.testing.assert_close(stats["key"]["max"][i], k.amax((0, 2)), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(stats["key"]["min"][i], k.amin((0, 2)), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(stats["key"]["absmax"][i], k.abs().amax((0, 2)), rtol=1e-5, atol=1e-5)
        assert torch.equal(stats["value"]["max"][i], v.amax((0, 2)))
        assert torch.equal(stats["value"]["min"][i], v.amin((0, 2)))
        # Pre-RoPE k_proj statistics differ: the stats really are post-RoPE.
        pre = stats["outputs"]["max"][f"model.layers.{i}.self_attn.k_proj"].view_as(stats["key"]["max"][i])
        assert not torch.allclose(pre, stats["key"]["max"][i])


def test_bad_model_dir(tmp_path):
    with pytest.raises(UserError, match="config.json"):
        calibrate(str(tmp_path), "x.txt", 1, 8, str(tmp_path / "w"), "cpu")


@pytest.mark.parametrize("variant", ["gemma2", "phi3"])
def test_architectures_lite_cannot_smooth_are_refused_by_name(tiny_model, variant):
    """Gemma's (1 + w) norms and Phi-3's fused linears need their own smoothing: refused up front,
    naming what lite supports, before any work."""
    from turbolm.errors import UserError
    from turbolm.lite.model_utils import LITE_ARCHITECTURES, load_config

    with pytest.raises(UserError, match="supports " + ", ".join(LITE_ARCHITECTURES)):
        load_config(tiny_model(variant))
