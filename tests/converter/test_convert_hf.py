"""`turbolm convert` of HF checkpoints: exact files, exact numbers, config.ini, tokenizer."""
import json
import shutil
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


@pytest.mark.parametrize("variant,expect", [
    ("mistral_swa", dict(sliding_window=12, sliding_layers="", session_len=1024, hidden_act="silu", post_norm=0)),
    ("gemma2", dict(sliding_window=12, sliding_layers="10", hidden_act="gelu_tanh", norm_offset=1.0, post_norm=1,
                    embedding_scale=16.0, attn_scale=48 ** -0.5, attn_softcap=20.0, final_softcap=400.0,
                    rope_local_theta=0.0)),
    ("gemma3", dict(sliding_window=12, sliding_layers="110", qk_norm=1, rope_theta=1e6, rope_type="linear",
                    rope_scaling_factor=2.0, rope_local_theta=1e4, attn_softcap=0.0, final_softcap=0.0)),
    ("yarn", dict(rope_type="yarn", rope_scaling_factor=4.0, rope_original_max_position_embeddings=64)),
    ("longrope", dict(rope_type="longrope", rope_original_max_position_embeddings=64, rotary_embedding=32)),
])
def test_architecture_keys(tiny_model, tmp_path, variant, expect):
    """The architecture switches config.ini carries for each family (the forward pass has no
    per-model branches): windows and their layers, Gemma's norms / activation / soft-capping,
    per-layer-type RoPE; the session is not capped by a sliding window."""
    dst = tmp_path / "ws"
    convert("base", tiny_model(variant), dst_path=str(dst))
    cfg = read_config_ini(str(dst / "triton_models" / "weights" / "config.ini"))
    for key, value in expect.items():
        assert cfg[key] == pytest.approx(value), key


def test_yarn_and_longrope_factors_follow_transformers(tiny_model, tmp_path):
    """rope_freq_factors / rope_attention_factor give transformers' own inv_freq and attention
    scaling (its ROPE_INIT_FUNCTIONS on the same config)."""
    from transformers import AutoConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    for variant, seq_len in (("yarn", None), ("longrope", 10), ("longrope", 1000)):
        dst = tmp_path / f"ws-{variant}-{seq_len}"
        convert("base", tiny_model(variant), dst_path=str(dst))
        cfg = read_config_ini(str(dst / "triton_models" / "weights" / "config.ini"))
        hf_cfg = AutoConfig.from_pretrained(tiny_model(variant))
        inv, att = ROPE_INIT_FUNCTIONS[cfg["rope_type"]](hf_cfg, "cpu", seq_len=seq_len)
        key = "rope_long_freq_factors" if seq_len == 1000 else "rope_freq_factors"
        factors = np.array([float(x) for x in cfg[key].split(",")])
        rot = cfg["rotary_embedding"]
        ours = 1.0 / (factors * cfg["rope_theta"] ** (np.arange(0, rot, 2) / rot))
        np.testing.assert_allclose(ours, inv.numpy(), rtol=2e-6)
        assert cfg["rope_attention_factor"] == pytest.approx(att)


def test_phi3_partial_rotary_and_refusals(tiny_model, tmp_path):
    """Phi-3: rotary_embedding is the partial rotary dims; longrope factors of the wrong length and
    a partial_rotary_factor giving odd dims are refused with what to do."""
    import shutil

    from turbolm.errors import UserError

    dst = tmp_path / "ws"
    convert("base", tiny_model("phi3"), dst_path=str(dst))
    cfg = read_config_ini(str(dst / "triton_models" / "weights" / "config.ini"))
    assert (cfg["size_per_head"], cfg["rotary_embedding"]) == (64, 32)
    for change, needle in (({"rope_scaling": {"type": "longrope", "short_factor": [1.0] * 15,
                                              "long_factor": [1.0] * 16}}, "longrope factors have 15 / 16"),
                           ({"partial_rotary_factor": 0.3}, "partial_rotary_factor 0.3")):
        src = tmp_path / f"src-{needle.split()[0]}"
        shutil.copytree(tiny_model("phi3"), src)
        c = json.loads((src / "config.json").read_text())
        c.update(change)
        (src / "config.json").write_text(json.dumps(c))
        with pytest.raises(UserError, match=needle):
            convert("base", str(src), dst_path=str(tmp_path / "bad"))


def _pack_internlm2_wqkv(q, k, v, heads, kv_heads, head_dim):
    """InternLM2's packing as its modeling code unpacks it (rearrange 'b q (h gs d)', gs = groups + 2):
    per kv head h, the q rows of its group, then k_h, then v_h. Written independently of the converter."""
    g = heads // kv_heads
    rows = []
    for h in range(kv_heads):
        for j in range(g):
            rows.append(q[(h * g + j) * head_dim:(h * g + j + 1) * head_dim])
        rows.append(k[h * head_dim:(h + 1) * head_dim])
        rows.append(v[h * head_dim:(h + 1) * head_dim])
    return np.concatenate(rows)


@pytest.mark.parametrize("tp", [1, 2])
def test_internlm2_packed_wqkv(tiny_model, tmp_path, tp):
    """InternLM2 (remote code in transformers, so no HF oracle): the GQA tiny model rewritten under
    InternLM2's names with wqkv packed per kv group converts to exactly the workspace of the original."""
    from safetensors.numpy import load_file, save_file

    src = tiny_model("gqa")
    cfg = json.loads(open(os.path.join(src, "config.json")).read())
    H, KV, D = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    sd = load_file(os.path.join(src, "model.safetensors"))
    out = {"model.tok_embeddings.weight": sd["model.embed_tokens.weight"], "model.norm.weight": sd["model.norm.weight"],
           "output.weight": sd["lm_head.weight"]}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        out[p + "attention.wqkv.weight"] = _pack_internlm2_wqkv(
            sd[p + "self_attn.q_proj.weight"], sd[p + "self_attn.k_proj.weight"], sd[p + "self_attn.v_proj.weight"], H, KV, D)
        for ours, theirs in (("attention.wo", "self_attn.o_proj"), ("feed_forward.w1", "mlp.gate_proj"),
                             ("feed_forward.w3", "mlp.up_proj"), ("feed_forward.w2", "mlp.down_proj"),
                             ("attention_norm", "input_layernorm"), ("ffn_norm", "post_attention_layernorm")):
            out[p + ours + ".weight"] = sd[p + theirs + ".weight"]
    dst = tmp_path / "internlm2"
    dst.mkdir()
    save_file(out, str(dst / "model.safetensors"))
    for f in os.listdir(src):
        if f.startswith("tokenizer") or f == "generation_config.json":
            shutil.copy(os.path.join(src, f), dst / f)
    cfg.update(architectures=["InternLM2ForCausalLM"], model_type="internlm2", bias=False)
    (dst / "config.json").write_text(json.dumps(cfg))
    got = load_workspace(convert_to(tmp_path / "a", str(dst), tp))
    ref = load_workspace(convert_to(tmp_path / "b", src, tp))
    assert sorted(got) == sorted(ref)
    for name in ref:
        np.testing.assert_array_equal(got[name], ref[name], err_msg=name)
