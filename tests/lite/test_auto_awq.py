"""`lite auto_awq`: argument checks before any work, smoothing that keeps the fp function (GQA
included), AWQ closer to fp than plain RTN, and an AutoAWQ-shaped checkpoint."""
import json
import os

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

import turbolm.lite.auto_awq as awq_mod
from turbolm.errors import UserError
from turbolm.lite.auto_awq import auto_awq
from turbolm.lite.awq_checkpoint import load_awq_dequantized
from turbolm.lite.awq_search import GROUPS, _head_maps, apply_scale, capture_inputs
from turbolm.lite.calib_data import get_calib_data
from turbolm.lite.model_utils import LINEARS, layer0_inputs, layer_output
from turbolm.lite.quantize import fake_quantize

N, SEQ, G = 4, 96, 64


@pytest.fixture()
def no_work(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("work started before the arguments were checked")
    monkeypatch.setattr(awq_mod, "load_model", boom)


@pytest.mark.parametrize("bits", [3, 2, 16, "four"])
def test_bad_bits_before_work(tiny_model, calib_txt, tmp_path, no_work, bits):
    with pytest.raises(UserError, match="w_bits"):
        auto_awq(tiny_model("gqa"), bits, G, str(tmp_path), calib_txt, 1, 8)
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize("group", [48, 0, 1000, 8])  # 8 divides both, but the runtime needs multiples of 16
def test_bad_group_size_lists_valid_ones(tiny_model, calib_txt, tmp_path, no_work, group):
    with pytest.raises(UserError, match="valid group sizes: 16, 32, 64, 128$"):
        auto_awq(tiny_model("gqa"), 4, group, str(tmp_path), calib_txt, 1, 8)   # in_features 512 and 384


def test_missing_calib_file_before_work(tiny_model, tmp_path, no_work):
    with pytest.raises(UserError, match="not found"):
        auto_awq(tiny_model("gqa"), 4, G, str(tmp_path / "w"), str(tmp_path / "none.txt"), 1, 8)


@pytest.mark.parametrize("variant", ["gqa", "bias"])
def test_smoothing_keeps_the_fp_layer(tiny_model, calib_txt, variant):
    """Folding arbitrary scales into every group (GQA v -> o, biases) leaves the layer's output unchanged."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model(variant), dtype=torch.float32).eval()
    data = get_calib_data(calib_txt, AutoTokenizer.from_pretrained(tiny_model(variant)), 2, 32)
    hidden, kwargs = layer0_inputs(model, data, "cpu")
    layer = model.model.layers[0]
    cfg = model.config
    assert cfg.num_attention_heads != cfg.num_key_value_heads
    with torch.no_grad():
        ref = layer_output(layer(hidden, **kwargs))
        inputs = capture_inputs(layer, hidden, kwargs)
        gen = torch.Generator().manual_seed(0)
        for group in GROUPS:
            maps = _head_maps(layer, group, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim)
            n = layer.get_submodule(group.prev).weight.shape[0]
            apply_scale(layer, group, torch.rand(n, generator=gen) + 0.5, maps, inputs)
        torch.testing.assert_close(layer_output(layer(hidden, **kwargs)), ref, rtol=1e-3, atol=1e-3)
        # the scaled captured inputs are what the scaled layer now sees
        torch.testing.assert_close(capture_inputs(layer, hidden, kwargs)["o_proj"], inputs["o_proj"],
                                   rtol=1e-3, atol=1e-4)


def _with_salient_channels(src, dst):
    """The gqa model with 8 hidden channels per norm made salient, as in real LLMs: the norm weight x16
    and the matching input columns of the Linears that read it /16. The fp function is unchanged, but
    plain RTN now quantizes the columns that meet the largest activations coarsely: what AWQ fixes."""
    import shutil
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in model.model.layers:
            for norm, fcs in ((layer.input_layernorm, ("q_proj", "k_proj", "v_proj")),
                              (layer.post_attention_layernorm, ("gate_proj", "up_proj"))):
                ch = torch.randperm(norm.weight.shape[0], generator=gen)[:8]
                norm.weight[ch] *= 16
                parent = layer.self_attn if fcs[0] == "q_proj" else layer.mlp
                for n in fcs:
                    getattr(parent, n).weight[:, ch] /= 16
    model.save_pretrained(dst)
    for f in os.listdir(src):
        if f.startswith("tokenizer"):
            shutil.copy(os.path.join(src, f), dst)
    return dst


@pytest.fixture(scope="module")
def awq_gqa(tiny_model, calib_txt, tmp_path_factory):
    model_dir = _with_salient_channels(tiny_model("gqa"), str(tmp_path_factory.mktemp("gqa-salient")))
    out = tmp_path_factory.mktemp("awq-gqa")
    auto_awq(model_dir, 4, G, str(out), calib_txt, N, SEQ, "cpu")
    return model_dir, str(out)


def test_awq_logits_closer_to_fp_than_rtn(awq_gqa, calib_txt):
    model_dir, out = awq_gqa
    data = get_calib_data(calib_txt, AutoTokenizer.from_pretrained(model_dir), N, SEQ)
    load = lambda: AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()  # noqa: E731
    fp, awq, rtn = load(), load(), load()
    awq.load_state_dict(load_awq_dequantized(out), strict=True)
    with torch.no_grad():
        for name, mod in rtn.named_modules():
            if isinstance(mod, torch.nn.Linear) and ".layers." in name:
                mod.weight.copy_(fake_quantize(mod.weight, 4, G))
        ref = fp(data).logits
        err_awq = (awq(data).logits - ref).pow(2).mean().item()
        err_rtn = (rtn(data).logits - ref).pow(2).mean().item()
    assert err_awq < 0.8 * err_rtn, (err_awq, err_rtn)   # measured about 0.6


def test_checkpoint_is_autoawq_gemm_shaped(awq_gqa):
    model_dir, out = awq_gqa
    with open(os.path.join(out, "config.json")) as f:
        cfg = json.load(f)
    assert cfg["quantization_config"] == {"quant_method": "awq", "bits": 4, "group_size": G, "zero_point": True,
                                          "version": "gemm", "modules_to_not_convert": None}
    for f in ("tokenizer.json", "tokenizer_config.json", "inputs_stats.pth", "key_stats.pth"):
        assert os.path.isfile(os.path.join(out, f)), f
    t = load_file(os.path.join(out, "model.safetensors"))
    ref = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).state_dict()
    for i in range(cfg["num_hidden_layers"]):
        for n in LINEARS:
            name = f"model.layers.{i}.{n}"
            out_f, in_f = ref[name + ".weight"].shape
            assert name + ".weight" not in t
            assert t[name + ".qweight"].shape == (in_f, out_f // 8) and t[name + ".qweight"].dtype == torch.int32
            assert t[name + ".qzeros"].shape == (in_f // G, out_f // 8) and t[name + ".qzeros"].dtype == torch.int32
            assert t[name + ".scales"].shape == (in_f // G, out_f) and t[name + ".scales"].dtype == torch.float16
    others = set(ref) - {f"model.layers.{i}.{n}.weight" for i in range(cfg["num_hidden_layers"]) for n in LINEARS}
    assert others <= set(t) and all(t[k].dtype == torch.float16 for k in others)


def test_int8_and_tied(tiny_model, calib_txt, tmp_path):
    auto_awq(tiny_model("tied"), 8, 32, str(tmp_path), calib_txt, 1, 32, "cpu", search_clip=False)
    t = load_file(os.path.join(str(tmp_path), "model.safetensors"))
    assert "lm_head.weight" not in t
    qw, sc = t["model.layers.0.mlp.down_proj.qweight"], t["model.layers.0.mlp.down_proj.scales"]
    assert qw.shape == (512, 256 // 4) and sc.shape == (512 // 32, 256)
    data = get_calib_data(calib_txt, AutoTokenizer.from_pretrained(tiny_model("tied")), 1, 32)
    fp = AutoModelForCausalLM.from_pretrained(tiny_model("tied"), dtype=torch.float32).eval()
    q = AutoModelForCausalLM.from_pretrained(tiny_model("tied"), dtype=torch.float32).eval()
    missing, unexpected = q.load_state_dict(load_awq_dequantized(str(tmp_path)), strict=False)
    assert missing == ["lm_head.weight"] and not unexpected      # tied to the embeddings
    with torch.no_grad():
        ref, got = fp(data).logits, q(data).logits
    assert (got - ref).norm() / ref.norm() < 0.1   # int8: about 0.03 on this chaotic random model (int4: 0.5)
