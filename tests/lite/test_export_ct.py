"""`turbolm lite export_ct` (issue 12): AWQ and GPTQ checkpoints re-saved as compressed-tensors
pack-quantized, loaded back by transformers through the compressed-tensors package and checked
against HF on the source checkpoint's own dequantized weights."""
import json
import os

import numpy as np
import pytest
import torch

pytest.importorskip("compressed_tensors")


@pytest.fixture(scope="module")
def sources(tiny_model, calib_txt, tmp_path_factory):
    from turbolm.lite.auto_awq import auto_awq
    from turbolm.lite.gptq import gptq

    root = tmp_path_factory.mktemp("ct")
    torch.set_num_threads(1)
    model = tiny_model("soft")
    auto_awq(model, 4, 64, str(root / "awq"), calib_txt, 4, 128)
    gptq(model, 4, 64, str(root / "gptq"), calib_txt, 4, 128, sym=False)
    return model, root


def dequantized(src):
    from safetensors.numpy import load_file

    from turbolm.lite.awq_checkpoint import load_awq_dequantized
    from turbolm.lite.gptq_pack import dequantize_gptq

    qc = json.load(open(os.path.join(src, "config.json")))["quantization_config"]
    if qc["quant_method"] == "awq":
        return {k: v.float() for k, v in load_awq_dequantized(src).items() if k.endswith(".weight")}
    sd = load_file(os.path.join(src, "model.safetensors"))
    return {k[:-len(".qweight")] + ".weight": torch.from_numpy(dequantize_gptq(
        v, *(sd[k.replace(".qweight", s)] for s in (".qzeros", ".scales", ".g_idx")), 4))
        for k, v in sd.items() if k.endswith(".qweight")}


@pytest.mark.parametrize("kind", ["awq", "gptq"])
def test_export_loads_in_transformers_with_the_same_weights(sources, tmp_path, kind):
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig

    from turbolm.lite.export_ct import export_ct

    model_dir, root = sources
    dst = str(tmp_path / "ct")
    export_ct(str(root / kind), dst)
    qc = json.load(open(os.path.join(dst, "config.json")))["quantization_config"]
    assert qc["quant_method"] == "compressed-tensors" and qc["format"] == "pack-quantized"
    w = qc["config_groups"]["group_0"]["weights"]
    assert (w["num_bits"], w["group_size"], w["strategy"], w["symmetric"]) == (4, 64, "group", False)

    tokens = torch.tensor([[int(t) for t in np.random.RandomState(0).randint(3, 1000, size=64)]])
    # decompressed by compressed-tensors at load (this transformers' compressed path expects the zero
    # points unpacked, which the package itself packs: run_compressed=False avoids that mismatch)
    loaded = AutoModelForCausalLM.from_pretrained(dst, dtype=torch.float32,
                                                  quantization_config=CompressedTensorsConfig(run_compressed=False)).eval()
    ref = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    deq = dequantized(str(root / kind))
    with torch.no_grad():
        for name, p in ref.named_parameters():
            p.copy_(deq[name] if name in deq else p.half().float())
        # the exported integers are the source's: every decompressed linear equals its dequantized weight
        got = {n: p for n, p in loaded.named_parameters()}
        assert deq.keys() <= got.keys()
        for name, w in deq.items():
            np.testing.assert_allclose(got[name].float().numpy(), w.numpy(), rtol=0, atol=1e-3 * float(w.abs().max()))
        a, b = loaded(tokens).logits, ref(tokens).logits
    assert float((a - b).abs().max() / b.abs().max()) < 1e-2


def test_refuses_what_it_cannot_export(tmp_path, tiny_model):
    from turbolm.errors import UserError
    from turbolm.lite.export_ct import export_ct

    with pytest.raises(UserError, match="takes AWQ"):
        export_ct(tiny_model("gqa"), str(tmp_path / "x"))


def test_refuses_mixed_width_checkpoints(sources, tmp_path):
    """A `lite gptq --mixed` checkpoint (GPTQModel `dynamic` 8-bit overrides) is refused with what to
    do, not unpacked at the wrong width."""
    import shutil

    from turbolm.errors import UserError
    from turbolm.lite.export_ct import export_ct

    src = str(tmp_path / "mixed")
    shutil.copytree(sources[1] / "gptq", src)
    cfg = json.load(open(os.path.join(src, "config.json")))
    cfg["quantization_config"]["dynamic"] = {r"+:^model\.layers\.0\.mlp\.down_proj$": {"bits": 8}}
    json.dump(cfg, open(os.path.join(src, "config.json"), "w"))
    with pytest.raises(UserError, match="more than one width"):
        export_ct(src, str(tmp_path / "out"))
    assert not os.path.exists(tmp_path / "out")
    # a quantized lm head (`lite gptq --lm_head`) would be exported in fp16 (ignore: lm_head): refused too
    del cfg["quantization_config"]["dynamic"]
    cfg["quantization_config"]["lm_head"] = True
    json.dump(cfg, open(os.path.join(src, "config.json"), "w"))
    with pytest.raises(UserError, match="lm head is quantized"):
        export_ct(src, str(tmp_path / "out"))
    assert not os.path.exists(tmp_path / "out")
