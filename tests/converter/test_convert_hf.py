"""`turbolm convert` of HF checkpoints: exact files, exact numbers, config.ini, tokenizer."""
import json
import os

import numpy as np
import pytest
import torch

from tests.fixtures.tiny_models import VARIANTS
from tests.fixtures.workspace import expected_files, load_workspace
from turbolm.config import read_config_ini
from turbolm.converter.main import main as convert


def hf_state_dict(model_dir):
    from transformers import AutoModelForCausalLM

    cfg = json.load(open(os.path.join(model_dir, "config.json")))
    if cfg["architectures"][0] == "InternLMForCausalLM":  # no class in transformers: same weights as llama
        from transformers import LlamaConfig, LlamaForCausalLM

        c = LlamaConfig(**{k: v for k, v in cfg.items() if k not in ("architectures", "model_type")})
        model = LlamaForCausalLM.from_pretrained(model_dir, config=c, dtype=torch.float32)
    else:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    sd = {k: v.float().numpy() for k, v in model.state_dict().items()}
    return sd, model.config


def convert_to(tmp_path, model_dir, tp, name="llama2", **kw):
    dst = str(tmp_path / f"ws_tp{tp}")
    convert(name, model_dir, dst_path=dst, tp=tp, **kw)
    return dst


CASES = [("gqa", 1), ("gqa", 2), ("gqa", 4), ("mha", 1), ("mha", 4), ("bias", 1), ("bias", 2), ("obias", 2),
         ("obias", 4), ("internlm", 2), ("mistral", 2), ("hd128", 1), ("hd128", 2), ("tied", 2), ("untied", 1),
         ("ntk", 1), ("bin", 2), ("sharded", 2), ("bf16", 1)]


@pytest.mark.parametrize("variant,tp", CASES, ids=[f"{v}-tp{t}" for v, t in CASES])
def test_workspace_holds_the_hf_tensors(tiny_model, tmp_path, variant, tp):
    model_dir = tiny_model(variant)
    ws = convert_to(tmp_path, model_dir, tp)
    wdir = os.path.join(ws, "triton_models", "weights")
    cfg = read_config_ini(os.path.join(wdir, "config.ini"))
    v = VARIANTS[variant]
    # names and byte sizes exactly as DESIGN.md §3
    files = {n: os.path.getsize(os.path.join(wdir, n)) for n in os.listdir(wdir) if n != "config.ini"}
    assert files == expected_files(cfg, o_bias=v.attention_bias)
    assert cfg["weight_type"] == ("bf16" if v.dtype == "bfloat16" else "fp16")
    # numbers: reassembled + un-permuted == HF (weights are fp16/bf16-exact, so exactly equal)
    sd, hf_cfg = hf_state_dict(model_dir)
    got = load_workspace(ws)
    if v.tied:
        sd.setdefault("lm_head.weight", sd["model.embed_tokens.weight"])
    assert set(got) == set(sd)
    for name, ref in sd.items():
        np.testing.assert_array_equal(got[name], ref, err_msg=name)
    # config.ini == HF config
    expect = dict(tensor_para_size=tp, head_num=v.heads, kv_head_num=v.kv_heads, size_per_head=v.head_dim,
                  rotary_embedding=v.head_dim, hidden_units=v.hidden, inter_size=v.inter, num_layer=v.layers,
                  vocab_size=hf_cfg.vocab_size, norm_eps=hf_cfg.rms_norm_eps, rope_theta=v.rope_theta,
                  max_position_embeddings=v.max_pos, session_len=v.max_pos, start_id=1, end_id=2,
                  attn_bias=int(variant in ("bias", "obias", "internlm")), model_name="llama2", group_size=0,
                  rope_scaling_factor=(v.rope_scaling or {}).get("factor", 0.0), use_logn_attn=0)
    assert {k: cfg[k] for k in expect} == expect
    assert os.path.isfile(os.path.join(ws, "triton_models", "tokenizer", "tokenizer_config.json"))


def test_tp1_and_tp2_hold_the_same_numbers(tiny_model, tmp_path):
    a = load_workspace(convert_to(tmp_path, tiny_model("gqa"), 1))
    b = load_workspace(convert_to(tmp_path, tiny_model("gqa"), 2))
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_tokenizer_folder_loads_and_matches(tiny_model, tmp_path):
    from transformers import AutoTokenizer

    ws = convert_to(tmp_path, tiny_model("gqa"), 1)
    ours = AutoTokenizer.from_pretrained(os.path.join(ws, "triton_models", "tokenizer"))
    ref = AutoTokenizer.from_pretrained(tiny_model("gqa"))
    text = "First Citizen:\nBefore we proceed any further, hear me speak. 1234 Ünïcode"
    assert ours.encode(text) == ref.encode(text)
    assert os.path.isfile(os.path.join(ws, "triton_models", "tokenizer", "tokenizer.model"))


def test_workspace_template_files_are_copied(tiny_model, tmp_path):
    ws = convert_to(tmp_path, tiny_model("tied"), 1, session_len=333, name="base")
    assert os.access(os.path.join(ws, "serve.sh"), os.X_OK)
    assert os.path.isfile(os.path.join(ws, "README.md"))
    assert os.path.isfile(os.path.join(ws, "config.ini.template"))
    cfg = read_config_ini(os.path.join(ws, "triton_models", "weights", "config.ini"))
    assert cfg["session_len"] == 333 and cfg["model_name"] == "base"


@pytest.mark.parametrize("variant,dtype,expect", [("untied", "bf16", "bf16"), ("bf16", "fp16", "fp16")])
def test_dtype_override(tiny_model, tmp_path, variant, dtype, expect):
    model_dir = tiny_model(variant)
    ws = convert_to(tmp_path, model_dir, 1, dtype=dtype)
    cfg = read_config_ini(os.path.join(ws, "triton_models", "weights", "config.ini"))
    assert cfg["weight_type"] == expect
    sd, _ = hf_state_dict(model_dir)
    got = load_workspace(ws)
    rnd = torch.bfloat16 if expect == "bf16" else torch.float16
    for name in ("model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight"):
        want = torch.from_numpy(sd[name]).to(rnd).float().numpy()
        np.testing.assert_array_equal(got[name], want, err_msg=name)


def test_force_replaces_an_existing_workspace(tiny_model, tmp_path):
    dst = tmp_path / "ws"
    dst.mkdir()
    (dst / "old-file").write_text("x")
    convert("llama2", tiny_model("mha"), dst_path=str(dst), tp=1, force=True)
    assert not (dst / "old-file").exists()
    assert (dst / "triton_models" / "weights" / "config.ini").is_file()
    assert sorted(os.listdir(tmp_path)) == ["ws"]  # no temp dirs left beside it


def test_sliding_window_caps_the_session_and_refuses_more(tiny_model, tmp_path, capsys):
    """No windowed attention in the runtime yet: a Mistral with a 48-token window becomes a
    48-token session (exact: full attention within the window), never a silent longer one."""
    from turbolm.errors import UserError

    src = tiny_model("mistral_swa")
    dst = str(tmp_path / "ws")
    convert("base", src, dst_path=dst)
    assert read_config_ini(os.path.join(dst, "triton_models", "weights", "config.ini"))["session_len"] == 48
    assert "sliding window of 48" in capsys.readouterr().err
    with pytest.raises(UserError, match="sliding window"):
        convert("base", src, dst_path=str(tmp_path / "ws2"), session_len=100)
    convert("base", src, dst_path=str(tmp_path / "ws3"), session_len=32)  # inside the window: fine


def test_phi3_partial_rotary_and_refusals(tiny_model, tmp_path):
    """Phi-3: rotary_embedding is the partial rotary dims; longrope (the 128k checkpoints) and a
    partial_rotary_factor giving odd dims are refused with what to do."""
    import shutil

    from turbolm.errors import UserError

    dst = tmp_path / "ws"
    convert("base", tiny_model("phi3"), dst_path=str(dst))
    cfg = read_config_ini(str(dst / "triton_models" / "weights" / "config.ini"))
    assert (cfg["size_per_head"], cfg["rotary_embedding"]) == (64, 32)
    for change, needle in (({"rope_scaling": {"type": "longrope", "short_factor": [1.0] * 16,
                                              "long_factor": [1.0] * 16}}, "longrope"),
                           ({"partial_rotary_factor": 0.3}, "partial_rotary_factor 0.3")):
        src = tmp_path / f"src-{needle.split()[0]}"
        shutil.copytree(tiny_model("phi3"), src)
        c = json.loads((src / "config.json").read_text())
        c.update(change)
        (src / "config.json").write_text(json.dumps(c))
        with pytest.raises(UserError, match=needle):
            convert("base", str(src), dst_path=str(tmp_path / "bad"))
