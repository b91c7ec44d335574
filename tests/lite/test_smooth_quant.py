"""`lite smooth_quant` (issue 10, W8A8): the smoothing scales keep the fp function (GQA's v -> o
included), the checkpoint is compressed-tensors' int-quantized W8A8 and transformers loads it with
that package, smoothing lowers the W8A8 error where activations have outlier channels, and a bad
call fails before any work with what to do."""
import json
import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

import turbolm.lite.smooth_quant as sq_mod
from turbolm import _turbomind
from turbolm.converter.main import main as convert
from turbolm.errors import UserError
from turbolm.lite.calib_data import get_calib_data
from turbolm.lite.calibrate import calibrate
from turbolm.lite.model_utils import LINEARS
from turbolm.lite.smooth_quant import load_act_absmax, smooth_layer, smooth_quant

from tests.lite.test_auto_awq import _with_salient_channels

N, SEQ = 4, 96


@pytest.fixture(scope="module")
def salient(tiny_model, calib_txt, tmp_path_factory):
    """The gqa model with salient channels, and its calibration statistics."""
    model_dir = _with_salient_channels(tiny_model("gqa"), str(tmp_path_factory.mktemp("gqa-salient")))
    work = str(tmp_path_factory.mktemp("sq-stats"))
    calibrate(model_dir, calib_txt, N, SEQ, work, "cpu")
    return model_dir, work


@pytest.fixture(scope="module")
def checkpoint(salient, tmp_path_factory):
    model_dir, work = salient
    return smooth_quant(model_dir, work, 0.5, str(tmp_path_factory.mktemp("sq-out")))


def test_smoothing_keeps_the_fp_function(salient, calib_txt):
    model_dir, work = salient
    data = get_calib_data(calib_txt, AutoTokenizer.from_pretrained(model_dir), 2, 64)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        ref = model(data).logits
        act = load_act_absmax(work)
        cfg = model.config
        for i, layer in enumerate(model.model.layers):
            smooth_layer(layer, i, act, 0.5, cfg.num_key_value_heads, cfg.head_dim)
        torch.testing.assert_close(model(data).logits, ref, rtol=1e-3, atol=2e-3)  # fp32 rounding of the rescaling


def test_checkpoint_is_compressed_tensors_w8a8_and_transformers_loads_it(checkpoint, salient, calib_txt):
    from compressed_tensors.quantization import QuantizationConfig, preset_name_to_scheme

    model_dir, _ = salient
    with open(os.path.join(checkpoint, "config.json")) as f:
        cfg = json.load(f)
    qc = QuantizationConfig.model_validate(cfg["quantization_config"])  # the package's own reader
    assert qc.quant_method == "compressed-tensors" and qc.format == "int-quantized" and qc.ignore == ["lm_head"]
    scheme = preset_name_to_scheme("W8A8", ["Linear"])
    assert qc.config_groups["group_0"].weights == scheme.weights
    assert qc.config_groups["group_0"].input_activations == scheme.input_activations
    t = load_file(os.path.join(checkpoint, "model.safetensors"))
    for i in range(cfg["num_hidden_layers"]):
        for n in LINEARS:
            w, s = t[f"model.layers.{i}.{n}.weight"], t[f"model.layers.{i}.{n}.weight_scale"]
            assert w.dtype == torch.int8 and s.shape == (w.shape[0], 1)
            # per channel: every row reaches the end of the range (compressed-tensors' symmetric
            # int8 divides absmax by 127.5, so that end is -128 or 127)
            assert int(w.to(torch.int16).abs().amax(1).min()) >= 127
    # transformers + compressed-tensors load it as quantized linears holding exactly these tensors
    hf = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    mod = hf.model.layers[1].mlp.down_proj
    assert torch.equal(mod.weight, t["model.layers.1.mlp.down_proj.weight"])
    assert torch.equal(mod.weight_scale.to(torch.float16), t["model.layers.1.mlp.down_proj.weight_scale"])
    # and it is still the model: greedy next tokens agree with the fp one on real text
    fp = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    data = get_calib_data(calib_txt, AutoTokenizer.from_pretrained(model_dir), 2, 64)
    with torch.no_grad():
        agree = (hf(data).logits.argmax(-1) == fp(data).logits.argmax(-1)).float().mean().item()
    assert agree >= 0.9, agree


def _runtime_error(model_dir, ckpt, ws, calib_txt):
    """Mean squared logit error of the runtime on a converted W8A8 checkpoint against the fp model."""
    convert("base", ckpt, dst_path=str(ws), force=True)
    m = _turbomind.LlamaModel(os.path.join(str(ws), "triton_models", "weights"), num_threads=2)
    assert m.config["act_type"] == "int8" and m.config["weight_type"] == "int8"
    m.allocate_kv(8)
    data = get_calib_data(calib_txt, AutoTokenizer.from_pretrained(model_dir), 2, 64)
    fp = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    err = 0.0
    for row in data:
        got = m.forward([(row.tolist(), 0, [0], 2)])
        with torch.no_grad():
            ref = fp(row[None]).logits[0].numpy()
        err += float(((got - ref) ** 2).mean())
    return err / len(data)


def test_smoothing_lowers_the_w8a8_error(salient, checkpoint, calib_txt, tmp_path, monkeypatch):
    model_dir, work = salient
    smoothed = _runtime_error(model_dir, checkpoint, tmp_path / "ws-sq", calib_txt)
    monkeypatch.setattr(sq_mod, "smooth_layer", lambda *a, **k: None)
    naive = smooth_quant(model_dir, work, 0.5, str(tmp_path / "naive"))
    plain = _runtime_error(model_dir, naive, tmp_path / "ws-naive", calib_txt)
    assert smoothed < 0.8 * plain, (smoothed, plain)


def test_bad_calls_fail_before_work(tiny_model, tmp_path, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("work started before the arguments were checked")
    monkeypatch.setattr(sq_mod, "load_model", boom)
    with pytest.raises(UserError, match="run `turbolm lite calibrate"):
        smooth_quant(tiny_model("gqa"), str(tmp_path / "empty"))
    with pytest.raises(UserError, match="--alpha 1.5 must be in"):
        smooth_quant(tiny_model("gqa"), str(tmp_path), 1.5)


def test_biases_survive_and_run(tiny_model, calib_txt, tmp_path):
    """Qwen2's q/k/v biases (v's smoothed with its rows) are written beside the int8 weights, the
    workspace keeps them, and its next tokens agree with the fp model's."""
    model_dir = tiny_model("bias")
    calibrate(model_dir, calib_txt, 2, 64, str(tmp_path / "stats"), "cpu")
    ckpt = smooth_quant(model_dir, str(tmp_path / "stats"), 0.5, str(tmp_path / "w8a8"))
    t = load_file(os.path.join(ckpt, "model.safetensors"))
    for n in ("q_proj", "k_proj", "v_proj"):
        assert t[f"model.layers.0.self_attn.{n}.bias"].dtype == torch.float16
    convert("base", ckpt, dst_path=str(tmp_path / "ws"))
    m = _turbomind.LlamaModel(os.path.join(str(tmp_path / "ws"), "triton_models", "weights"), num_threads=2)
    assert m.config["attn_bias"] == "1" and m.config["act_type"] == "int8"
    m.allocate_kv(8)
    data = get_calib_data(calib_txt, AutoTokenizer.from_pretrained(model_dir), 1, 64)
    fp = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        ref = fp(data).logits[0].numpy()
    got = m.forward([(data[0].tolist(), 0, [0], 2)])
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.9
