"""`--mixed auto:BITS` (lite/sensitivity.py): the KL probe against its defining properties, the
greedy choice against a hand-worked budget, and lite gptq's checkpoint declaring what was chosen."""
import json
import os

import pytest
import torch

from turbolm.errors import UserError
from turbolm.lite import sensitivity
from turbolm.lite.quantize import fake_quantize


def test_choose_by_kl_per_weight_within_budget():
    # 4 linears of 100 weights, G = 64: int4 costs 4.5 bits, each one at 8 bits adds 4 * 100/400 = 1.0
    n = {"0.w_qkv": 100, "0.w2": 100, "1.w_qkv": 100, "1.w2": 100}
    kl = {"0.w_qkv": 0.1, "0.w2": 0.4, "1.w_qkv": 0.3, "1.w2": 0.2}
    assert sensitivity.choose(kl, n, 64, 5.5) == (["0.w2"], 5.5)
    assert sensitivity.choose(kl, n, 64, 6.6) == (["0.w2", "1.w_qkv"], 6.5)
    # per weight: a big linear with the largest KL loses to a small one with more KL per weight
    n2 = {"0.w_qkv": 300, "0.w2": 100}
    assert sensitivity.choose({"0.w_qkv": 0.6, "0.w2": 0.3}, n2, 64, 5.5)[0] == ["0.w2"]
    with pytest.raises(UserError, match="int4 alone takes 5.00"):
        sensitivity.choose(kl, n, 32, 4.9)


@pytest.mark.parametrize("bad", ["auto", "auto:", "auto:x", "auto:3.9", "auto:9"])
def test_budget_is_checked(bad):
    with pytest.raises(UserError, match="auto:BITS"):
        sensitivity.parse_auto(bad)


def test_convert_refuses_auto_with_what_to_do():
    from turbolm.converter.quant import mixed_recipe

    with pytest.raises(UserError, match="lite gptq --mixed auto:5"):
        mixed_recipe("auto:5", 3)


def test_probe_kl_is_zero_on_the_grid_and_leaves_the_model_as_it_was(tiny_model):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model("mha"), dtype=torch.float32).eval()
    on_grid = model.model.layers[1].mlp.down_proj
    with torch.no_grad():  # int4 g64 integers spanning 0..15 in every group, power-of-two scale: exact on the grid
        q = torch.randint(0, 16, on_grid.weight.shape, generator=torch.Generator().manual_seed(1)).float()
        q[:, 0::64], q[:, 1::64] = 0, 15
        on_grid.weight.copy_((q - 8) * 2 ** -6)
        assert torch.equal(fake_quantize(on_grid.weight, 4, 64), on_grid.weight)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = torch.randint(3, 1000, (2, 64), generator=torch.Generator().manual_seed(0))
    kl = sensitivity.measure(model, data, 64)
    assert set(kl) == {f"{i}.{n}" for i in range(3) for n in ("w_qkv", "wo", "w1", "w3", "w2")}
    assert kl["1.w2"] < 1e-9 and all(v > 1e-7 for k, v in kl.items() if k != "1.w2")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    sizes = sensitivity.sizes(model)
    assert sizes["0.w_qkv"] == sum(model.model.layers[0].get_submodule(m).weight.numel()
                                   for m in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"))


def test_gptq_auto_declares_the_chosen_linears(tiny_model, calib_txt, tmp_path, capsys):
    """lite gptq --mixed auto:5: the printed choice is what the checkpoint's `dynamic` holds and what
    convert turns into int8_linears, and the decoder linears stay within 5 bits per weight."""
    from turbolm.config import read_config_ini
    from turbolm.converter.main import main as convert
    from turbolm.lite.gptq import gptq
    from turbolm.quant_report import bits_per_weight

    model_dir = tiny_model("mha")
    work = str(tmp_path / "gptq")
    torch.set_num_threads(1)
    gptq(model_dir, 4, 64, work, calib_txt, 4, 128, sym=False, mixed="auto:5")
    line = [x for x in capsys.readouterr().out.splitlines() if "--mixed auto:5:" in x][0]
    chosen = line.rsplit(": ", 1)[1].split(",")
    assert chosen and all(c.split(".")[1] in ("w_qkv", "wo", "w1", "w3", "w2") for c in chosen)
    qc = json.load(open(os.path.join(work, "config.json")))["quantization_config"]
    assert len(qc["dynamic"]) == sum(3 if c.endswith("w_qkv") else 1 for c in chosen)
    ws = str(tmp_path / "ws")
    convert("base", work, dst_path=ws)
    wdir = os.path.join(ws, "triton_models", "weights")
    assert sorted(read_config_ini(os.path.join(wdir, "config.ini"))["int8_linears"].split(",")) == sorted(chosen)
    assert 4.5 < bits_per_weight(wdir)["linears"] <= 5.0
