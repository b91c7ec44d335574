"""`turbolm convert` to int4 / int8 workspaces: round-to-nearest from an fp checkpoint, and AWQ
(AutoAWQ gemm packing) checkpoints. The files are read back by an independent reader of the
layout in workspace_template/README.md and compared with numpy's own quantization."""
import json
import os
import shutil

import numpy as np
import pytest

from tests.converter.test_convert_hf import convert_to, hf_state_dict
from tests.fixtures.workspace import _inv_permute
from turbolm.config import read_config_ini
from turbolm.converter.quant import (QuantLinear, pack_int4_columns, quantize_rtn, unpack_int4_columns,
                                     valid_group_sizes)
from turbolm.converter.main import main as convert
from turbolm.errors import UserError

LINEARS = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.o_proj",
           "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj"}


def read_qlinear(wdir, name, bits, G, n_in, n_out):
    """One rank's files -> dequantized float32 [in, out] (the on-disk layout, read independently)."""
    qrow = (n_out + 1) // 2 if bits == 4 else n_out
    raw = np.fromfile(os.path.join(wdir, f"{name}.qweight"), dtype=np.uint8)
    assert raw.size == n_in * qrow, name
    q = raw.reshape(n_in, qrow)
    q = unpack_int4_columns(q, n_out) if bits == 4 else q
    s = np.fromfile(os.path.join(wdir, f"{name}.scales"), dtype=np.float16).astype(np.float32).reshape(n_in // G, n_out)
    z = np.fromfile(os.path.join(wdir, f"{name}.zeros"), dtype=np.float16).astype(np.float32).reshape(n_in // G, n_out)
    return (q.astype(np.float32) - np.repeat(z, G, axis=0)) * np.repeat(s, G, axis=0)


def load_int_workspace(ws):
    """{hf linear name: dequantized float32 [out, in]} of an int4/int8 workspace."""
    wdir = os.path.join(ws, "triton_models", "weights")
    cfg = read_config_ini(os.path.join(wdir, "config.ini"))
    bits, G, tp = int(cfg["weight_type"][3:]), cfg["group_size"], cfg["tensor_para_size"]
    H, KV, D = cfg["head_num"], cfg["kv_head_num"], cfg["size_per_head"]
    hidden, inter = cfg["hidden_units"], cfg["inter_size"]
    hq, hk, qkv_r = H // tp * D, KV // tp * D, (H + 2 * KV) * D // tp
    out = {}
    for i in range(cfg["num_layer"]):
        p, hp = f"layers.{i}.", f"model.layers.{i}."
        qkv = [read_qlinear(wdir, f"{p}attention.w_qkv.{r}", bits, G, hidden, qkv_r).T for r in range(tp)]
        out[hp + "self_attn.q_proj"] = _inv_permute(np.concatenate([x[:hq] for x in qkv]), H, D)
        out[hp + "self_attn.k_proj"] = _inv_permute(np.concatenate([x[hq:hq + hk] for x in qkv]), KV, D)
        out[hp + "self_attn.v_proj"] = np.concatenate([x[hq + hk:] for x in qkv])
        out[hp + "self_attn.o_proj"] = np.concatenate(
            [read_qlinear(wdir, f"{p}attention.wo.{r}", bits, G, H * D // tp, hidden) for r in range(tp)]).T
        for w, n in (("w1", "mlp.gate_proj"), ("w3", "mlp.up_proj")):
            out[hp + n] = np.concatenate(
                [read_qlinear(wdir, f"{p}feed_forward.{w}.{r}", bits, G, hidden, inter // tp) for r in range(tp)], axis=1).T
        out[hp + "mlp.down_proj"] = np.concatenate(
            [read_qlinear(wdir, f"{p}feed_forward.w2.{r}", bits, G, inter // tp, hidden) for r in range(tp)]).T
    return cfg, out


def test_int4_nibble_packing_round_trips():
    rng = np.random.default_rng(0)
    for out in (1, 2, 7, 32):
        q = rng.integers(0, 16, size=(5, out), dtype=np.uint8)
        packed = pack_int4_columns(q)
        assert packed.shape == (5, (out + 1) // 2)
        assert (packed[:, 0] & 0xF == q[:, 0]).all()  # column 0 in the low nibble of byte 0
        if out > 1:
            assert (packed[:, 0] >> 4 == q[:, 1]).all()
        np.testing.assert_array_equal(unpack_int4_columns(packed, out), q)


def test_rtn_matches_its_definition():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((8, 128)).astype(np.float32)
    for bits in (4, 8):
        ql = quantize_rtn(w, bits, 32)
        assert ql.q.max() < (1 << bits) and ql.scales.dtype == np.float32
        np.testing.assert_array_equal(ql.scales, ql.scales.astype(np.float16).astype(np.float32))  # fp16-exact
        err = np.abs(ql.dequantize() - w).reshape(8, 4, 32).max(axis=2)
        assert (err <= ql.scales * 0.5 + 1e-6).all() or bits == 4  # half a step (clamping may add at the edges)
        assert np.abs(ql.dequantize() - w).max() < (w.max() - w.min()) / ((1 << bits) - 1)


@pytest.mark.parametrize("weight_type,group_size,tp", [("int4", 64, 1), ("int4", 64, 2), ("int8", 128, 1),
                                                       ("int8", 32, 2)])
def test_rtn_workspace_holds_the_quantized_weights(tiny_model, tmp_path, weight_type, group_size, tp):
    model_dir = tiny_model("gqa")
    ws = str(tmp_path / "ws")
    convert("llama2", model_dir, dst_path=ws, tp=tp, weight_type=weight_type, group_size=group_size)
    cfg, got = load_int_workspace(ws)
    assert cfg["weight_type"] == weight_type and cfg["group_size"] == group_size and cfg["format_version"] == 2
    sd, _ = hf_state_dict(model_dir)
    bits = int(weight_type[3:])
    for name, deq in got.items():
        want = quantize_rtn(sd[name + ".weight"], bits, group_size).dequantize()
        np.testing.assert_array_equal(deq, want, err_msg=name)
    # everything else stays fp16
    wdir = os.path.join(ws, "triton_models", "weights")
    assert os.path.getsize(os.path.join(wdir, "tok_embeddings.weight")) == cfg["vocab_size"] * cfg["hidden_units"] * 2
    assert not any(n.endswith(".weight") and ("w_qkv" in n or "feed_forward" in n or "wo." in n)
                   for n in os.listdir(wdir))


def read_qrows(wdir, name, bits, G, rows, hidden):
    """``name``.{qweight,scales,zeros} of a quantized embedding_type -> dequantized float32 [rows, hidden]."""
    raw = np.fromfile(os.path.join(wdir, f"{name}.qweight"), dtype=np.uint8)
    assert raw.size == rows * hidden * bits // 8, name
    q = raw.reshape(rows, hidden * bits // 8)
    if bits == 4:  # element 2j in the low nibble of byte j
        q = np.stack([q & 0xF, q >> 4], axis=2).reshape(rows, hidden)
    s, z = (np.fromfile(os.path.join(wdir, f"{name}.{x}"), dtype=np.float16).astype(np.float32)
            .reshape(rows, hidden // G) for x in ("scales", "zeros"))
    return (q.astype(np.float32) - np.repeat(z, G, axis=1)) * np.repeat(s, G, axis=1)


@pytest.mark.parametrize("variant,weight_type,embedding_type", [("untied", "int4", "int4"), ("tied", "bf16", "int8"),
                                                                ("gqa", "int8", "int8")])
def test_quantized_embedding_files(tiny_model, tmp_path, variant, weight_type, embedding_type):
    model_dir = tiny_model(variant)
    ws = str(tmp_path / "ws")
    kw = dict(weight_type=weight_type, group_size=64) if weight_type.startswith("int") else dict(dtype=weight_type)
    convert("llama2", model_dir, dst_path=ws, embedding_type=embedding_type, **kw)
    wdir = os.path.join(ws, "triton_models", "weights")
    cfg = read_config_ini(os.path.join(wdir, "config.ini"))
    sd, _ = hf_state_dict(model_dir)
    tied = "lm_head.weight" not in sd or np.array_equal(sd["lm_head.weight"], sd["model.embed_tokens.weight"])
    bits, V, hidden = int(embedding_type[3:]), cfg["vocab_size"], cfg["hidden_units"]
    assert (cfg["embedding_type"], cfg["embedding_group_size"], cfg["tie_word_embeddings"], cfg["format_version"]) \
        == (embedding_type, 64, int(tied), 3)
    names = {"tok_embeddings": "model.embed_tokens.weight"} if tied else \
        {"tok_embeddings": "model.embed_tokens.weight", "output": "lm_head.weight"}
    for name, hf_name in names.items():
        want = quantize_rtn(sd[hf_name], bits, 64).dequantize()
        np.testing.assert_array_equal(read_qrows(wdir, name, bits, 64, V, hidden), want, err_msg=name)
    files = set(os.listdir(wdir))
    assert not files & {"tok_embeddings.weight", "output.weight"}
    assert ("output.qweight" in files) == (not tied)


def test_embedding_type_refusals(tiny_model, tmp_path):
    with pytest.raises(UserError, match="--embedding_type int2 is not one of float, int8, int4"):
        convert("llama2", tiny_model("gqa"), dst_path=str(tmp_path / "a"), embedding_type="int2")
    assert not os.path.exists(tmp_path / "a")


def test_group_size_that_straddles_a_rank_slice_is_refused(tiny_model, tmp_path):
    model_dir = tiny_model("gqa")  # hidden 512, inter 384
    with pytest.raises(UserError, match=r"sizes that work: 16, 32$"):
        convert("llama2", model_dir, dst_path=str(tmp_path / "a"), tp=4, weight_type="int4", group_size=128)
    with pytest.raises(UserError, match="multiple of 16"):
        convert("llama2", model_dir, dst_path=str(tmp_path / "b"), weight_type="int4", group_size=24)
    assert not os.path.exists(tmp_path / "a") and not os.path.exists(tmp_path / "b")
    assert valid_group_sizes([576, 192, 512]) == [16, 32, 64]  # SmolLM2 (576, 576/3, 1536/3) at tp=3


def make_awq_checkpoint(model_dir, out_dir, bits, G, version="gemm"):
    """An AutoAWQ-gemm checkpoint of ``model_dir`` whose integers are RTN's (lite/awq_pack.py packing)."""
    import torch
    from safetensors.numpy import save_file
    from turbolm.lite.awq_pack import pack_awq

    sd, _ = hf_state_dict(model_dir)
    tensors = {}
    for name, w in sd.items():
        base = name[:-len(".weight")]
        if name.endswith(".weight") and base.split(".")[-1] in {v.split(".")[-1] for v in LINEARS.values()}:
            ql = quantize_rtn(w, bits, G)
            qw, qz, sc = pack_awq(ql.q, ql.zeros, ql.scales, bits)
            tensors.update({base + ".qweight": qw, base + ".qzeros": qz, base + ".scales": sc})
        else:
            tensors[name] = w.astype(np.float16)
    os.makedirs(out_dir)
    save_file(tensors, os.path.join(out_dir, "model.safetensors"))
    cfg = json.load(open(os.path.join(model_dir, "config.json")))
    cfg["quantization_config"] = {"quant_method": "awq", "bits": bits, "group_size": G, "zero_point": True,
                                  "version": version}
    json.dump(cfg, open(os.path.join(out_dir, "config.json"), "w"))
    for f in os.listdir(model_dir):
        if f.startswith("tokenizer") or f.startswith("generation") or f.startswith("special"):
            shutil.copy(os.path.join(model_dir, f), out_dir)
    del torch
    return out_dir


def assert_same_files_as_rtn(src, model_dir, tmp_path, bits, tp) -> str:
    """Convert the quantized checkpoint ``src`` (format guessed) and ``model_dir`` with RTN at the same
    bits; the same files, and byte-equal integers, scales and zeros. Returns the checkpoint's weights dir."""
    ws_q, ws_rtn = str(tmp_path / "ws_q"), str(tmp_path / "ws_rtn")
    convert("llama2", src, dst_path=ws_q, tp=tp)
    convert("llama2", model_dir, dst_path=ws_rtn, tp=tp, weight_type=f"int{bits}", group_size=64)
    wa, wr = (os.path.join(w, "triton_models", "weights") for w in (ws_q, ws_rtn))
    assert sorted(os.listdir(wa)) == sorted(os.listdir(wr))
    for n in os.listdir(wa):
        if n.split(".")[-1] in ("qweight", "scales", "zeros"):
            assert open(os.path.join(wa, n), "rb").read() == open(os.path.join(wr, n), "rb").read(), n
    return wa


@pytest.mark.parametrize("variant,bits,tp", [("gqa", 4, 1), ("gqa", 4, 2), ("gqa", 8, 1), ("bias", 4, 2),
                                             ("qwen3", 4, 2), ("mistral_swa", 4, 1), ("gemma2", 4, 2),
                                             ("gemma3", 4, 1)])
def test_awq_checkpoint_converts_to_the_same_files_as_rtn(tiny_model, tmp_path, variant, bits, tp):
    """AutoAWQ GEMM checkpoints of each family (Qwen2 biases, Qwen3 / Gemma 3 q/k norms, Gemma's four
    norms) read into exactly the files RTN writes from the same integers."""
    model_dir = tiny_model(variant)
    awq = make_awq_checkpoint(model_dir, str(tmp_path / "awq"), bits, 64)
    wa = assert_same_files_as_rtn(awq, model_dir, tmp_path, bits, tp)  # format guessed: awq
    assert read_config_ini(os.path.join(wa, "config.ini"))["weight_type"] == f"int{bits}"


def test_awq_refusals(tiny_model, tmp_path):
    model_dir = tiny_model("gqa")
    gemv = make_awq_checkpoint(model_dir, str(tmp_path / "gemv"), 4, 64, version="gemv")
    with pytest.raises(UserError, match="version 'gemv' is not supported"):
        convert("llama2", gemv, dst_path=str(tmp_path / "w1"))
    awq = make_awq_checkpoint(model_dir, str(tmp_path / "awq"), 4, 64)
    with pytest.raises(UserError, match="group size 64"):
        convert("llama2", awq, dst_path=str(tmp_path / "w2"), group_size=128)
    with pytest.raises(UserError, match="int4 only"):
        convert("llama2", awq, dst_path=str(tmp_path / "w3"), weight_type="int8")
    with pytest.raises(UserError, match="sizes that work"):
        convert("llama2", awq, dst_path=str(tmp_path / "w4"), tp=4)  # inter/4 = 96 is not a multiple of 64
    with pytest.raises(UserError, match="--model-format awq"):
        convert("llama2", awq, dst_path=str(tmp_path / "w5"), model_format="hf")


@pytest.mark.parametrize("tp,want", [(1, 128), (2, 64)])
def test_default_group_size_divides_every_rank_input(tiny_model, tmp_path, tp, want):
    """--weight-type without --group-size: 128 where it divides every rank's input sizes, else the
    largest power of two below it that does (gqa: inter 384 = 192 per rank at tp=2)."""
    dst = tmp_path / f"tp{tp}"
    convert("base", tiny_model("gqa"), dst_path=str(dst), weight_type="int4", tp=tp)
    assert read_config_ini(str(dst / "triton_models" / "weights" / "config.ini"))["group_size"] == want


def _pack_along(v, bits, axis):
    """Consecutive values along ``axis`` into int32 words, low bits first (AutoGPTQ's pack loops)."""
    per = 32 // bits
    v = np.moveaxis(v.astype(np.uint32), axis, 0)
    out = np.zeros((v.shape[0] // per,) + v.shape[1:], np.uint32)
    for j in range(per):
        out |= v[j::per] << np.uint32(bits * j)
    return np.ascontiguousarray(np.moveaxis(out, 0, axis)).view(np.int32)


def make_gptq_checkpoint(model_dir, out_dir, bits, G, fmt="gptq_v2", g_idx_fn=None, min_zero=0):
    """A GPTQ checkpoint (AutoGPTQ layout) of ``model_dir`` whose integers are RTN's, packed here
    independently of lite/gptq_pack.py. ``fmt`` gptq stores zero - 1, gptq_v2 the zero itself.
    ``g_idx_fn(in_features)``: a scattered act-order g_idx; the weights are then RTN per those groups.
    Returns the folder and ``{HF name: the float32 weight the checkpoint holds}``."""
    from safetensors.numpy import save_file

    sd, _ = hf_state_dict(model_dir)
    tensors, held = {}, {}
    for name, w in sd.items():
        base = name[:-len(".weight")]
        if not (name.endswith(".weight") and base.split(".")[-1] in {v.split(".")[-1] for v in LINEARS.values()}):
            tensors[name] = w.astype(np.float16)
            continue
        out_f, in_f = w.shape
        g_idx = np.arange(in_f) // G if g_idx_fn is None else g_idx_fn(in_f)
        order = np.argsort(g_idx, kind="stable")  # the columns of each group together
        ql = quantize_rtn(w[:, order], bits, G)
        q = np.empty_like(ql.q)
        q[:, order] = ql.q
        zeros = np.maximum(ql.zeros, min_zero) - (1 if fmt == "gptq" else 0)  # v1 cannot hold a zero of 0
        assert zeros.min() >= 0
        tensors[base + ".qweight"] = _pack_along(q.T, bits, 0)             # [in / per, out]
        tensors[base + ".qzeros"] = _pack_along(zeros.T.astype(np.int64), bits, 1)  # [groups, out / per]
        tensors[base + ".scales"] = ql.scales.T.astype(np.float16)
        tensors[base + ".g_idx"] = g_idx.astype(np.int32)
        z = np.maximum(ql.zeros, min_zero)
        held[name] = (q.astype(np.float32) - z[:, g_idx]) * ql.scales[:, g_idx]
    os.makedirs(out_dir)
    save_file(tensors, os.path.join(out_dir, "model.safetensors"))
    cfg = json.load(open(os.path.join(model_dir, "config.json")))
    cfg["quantization_config"] = {"quant_method": "gptq", "bits": bits, "group_size": G, "desc_act": g_idx_fn is not None,
                                  "sym": False, "checkpoint_format": fmt}
    json.dump(cfg, open(os.path.join(out_dir, "config.json"), "w"))
    for f in os.listdir(model_dir):
        if f.startswith("tokenizer") or f.startswith("generation") or f.startswith("special"):
            shutil.copy(os.path.join(model_dir, f), out_dir)
    return out_dir, held


def _same_files(ws_a, ws_b):
    wa, wb = (os.path.join(w, "triton_models", "weights") for w in (ws_a, ws_b))
    assert sorted(os.listdir(wa)) == sorted(os.listdir(wb))
    for n in os.listdir(wa):
        if n != "config.ini":
            assert open(os.path.join(wa, n), "rb").read() == open(os.path.join(wb, n), "rb").read(), n


@pytest.mark.parametrize("variant,bits,tp", [("gqa", 4, 1), ("gqa", 8, 2), ("qwen3", 4, 2)])
def test_gptq_checkpoint_from_another_tool_converts_to_rtns_files(tiny_model, tmp_path, variant, bits, tp):
    """A GPTQ (v2 zeros) checkpoint built by hand in AutoGPTQ's layout reads into exactly the files
    RTN writes from the same integers."""
    model_dir = tiny_model(variant)
    src, _ = make_gptq_checkpoint(model_dir, str(tmp_path / "gptq"), bits, 64)
    assert_same_files_as_rtn(src, model_dir, tmp_path, bits, tp)  # format guessed: gptq


def test_gptq_v1_zeros_and_scattered_act_order_groups(tiny_model, tmp_path, capsys):
    """v1 checkpoints store zero - 1 (v2 the zero): the same integers give the same workspace.
    Act-order checkpoints with scattered g_idx cannot keep their integers (the runtime's groups are
    contiguous): the weights they hold are re-quantized (RTN), with a warning: exactly the workspace
    of an HF checkpoint holding those weights, converted with --weight-type int4."""
    from safetensors.numpy import save_file

    model_dir = tiny_model("gqa")
    v1, _ = make_gptq_checkpoint(model_dir, str(tmp_path / "v1"), 4, 64, fmt="gptq", min_zero=1)
    v2, _ = make_gptq_checkpoint(model_dir, str(tmp_path / "v2"), 4, 64, fmt="gptq_v2", min_zero=1)
    _same_files(convert_to(tmp_path / "a", v1, 1), convert_to(tmp_path / "b", v2, 1))
    assert "act-order" not in capsys.readouterr().err

    rng = np.random.RandomState(0)
    scattered = lambda n: rng.permutation(n) % (n // 64)  # noqa: E731  each group: 64 scattered inputs
    ao, held = make_gptq_checkpoint(model_dir, str(tmp_path / "ao"), 4, 64, g_idx_fn=scattered)
    hf = tmp_path / "held"
    shutil.copytree(model_dir, hf)
    sd, _ = hf_state_dict(model_dir)
    save_file({k: np.ascontiguousarray(held.get(k, v)) for k, v in sd.items()}, str(hf / "model.safetensors"))
    ws_ao = convert_to(tmp_path / "c", ao, 1)
    assert "act-order and scattered groups" in capsys.readouterr().err
    _same_files(ws_ao, convert_to(tmp_path / "d", str(hf), 1, weight_type="int4", group_size=64))


def test_quantized_checkpoints_of_fused_architectures_are_refused(tiny_model, tmp_path):
    """Phi-3 keeps q/k/v and gate/up fused: an AWQ or GPTQ checkpoint of it is refused with what to
    do (convert the fp16 checkpoint with --weight_type), not misread."""
    from turbolm.errors import UserError

    model_dir = tiny_model("phi3")
    awq = make_awq_checkpoint(model_dir, str(tmp_path / "awq"), 4, 64)
    with pytest.raises(UserError, match="fused projections.*--weight_type int4"):
        convert("base", awq, dst_path=str(tmp_path / "ws"))
    gptq, _ = make_gptq_checkpoint(model_dir, str(tmp_path / "gptq"), 4, 64)
    with pytest.raises(UserError, match="fused projections"):
        convert("base", gptq, dst_path=str(tmp_path / "ws2"))
    assert not os.path.exists(tmp_path / "ws") and not os.path.exists(tmp_path / "ws2")
