"""`turbolm lite gptq` (issue 12): the GPTQ algorithm against its defining properties, the
AutoGPTQ checkpoint layout against an independent packing, and the whole route (lite gptq ->
convert -> runtime) against HF on the checkpoint's own dequantized weights."""
import json
import os

import numpy as np
import pytest
import torch

from turbolm.lite.gptq_core import gptq_quantize, group_params, quant_col
from turbolm.lite.gptq_pack import dequantize_gptq, pack_gptq, unpack_gptq


def deq(q, s, z, G):
    out, n = q.shape
    return ((q.float().reshape(out, -1, G) - z.unsqueeze(-1)) * s.unsqueeze(-1)).reshape(out, n)


def rtn(W, bits, G, sym):
    cols = []
    for g in range(W.shape[1] // G):
        s, z = group_params(W[:, g * G:(g + 1) * G], bits, sym)
        cols.append((quant_col(W[:, g * G:(g + 1) * G], s, z, bits) - z) * s)
    return torch.cat(cols, 1)


@pytest.fixture(scope="module")
def problem():
    """A weight and correlated inputs with a few large channels (as LLM activations have)."""
    g = torch.Generator().manual_seed(0)
    W = torch.randn(64, 256, generator=g)
    X = torch.randn(4096, 256, generator=g) @ (0.3 * torch.randn(256, 256, generator=g) + torch.eye(256))
    X[:, :6] *= 8
    return W, X, 2 * X.T @ X / X.shape[0]


def test_identity_hessian_is_round_to_nearest(problem):
    """With uncorrelated unit inputs there is nothing to compensate: GPTQ = RTN, integer for integer."""
    W, _, _ = problem
    for sym in (True, False):
        q, s, z, _ = gptq_quantize(W, torch.eye(W.shape[1]), 4, 64, damp=0.0, sym=sym)
        assert torch.equal(deq(q, s, z, 64), rtn(W, 4, 64, sym))


@pytest.mark.parametrize("bits,act_order,sym", [(4, False, True), (4, True, True), (4, False, False), (8, False, True)])
def test_output_error_far_below_rtn(problem, bits, act_order, sym):
    W, X, H = problem
    q, s, z, loss = gptq_quantize(W, H, bits, 64, act_order=act_order, sym=sym)
    err = lambda A: float(((X @ (W - A).T) ** 2).mean())  # noqa: E731
    assert err(deq(q, s, z, 64)) < 0.5 * err(rtn(W, bits, 64, sym))
    assert int(q.max()) < 2 ** bits and loss > 0
    if sym:
        assert torch.all(z == 2 ** (bits - 1))


def test_dead_inputs_are_zeroed(problem):
    W, X, _ = problem
    X = X.clone()
    X[:, 10] = 0
    q, s, z, _ = gptq_quantize(W, 2 * X.T @ X / len(X), 4, 64)
    assert torch.all(deq(q, s, z, 64)[:, 10].abs() <= s[:, 0] * 1.0001)  # 0 up to the rounding of the zero point


def autogptq_pack(q, zeros, scales, bits):
    """AutoGPTQ's QuantLinear.pack, transcribed loop for loop (the reference for the layout)."""
    out_f, in_f = q.shape
    per = 32 // bits
    intweight = q.T.astype(np.uint32)  # [in, out]
    qweight = np.zeros((in_f // per, out_f), dtype=np.uint32)
    for row in range(in_f // per):
        for j in range(per):
            qweight[row] |= intweight[row * per + j] << (bits * j)
    zm1 = (zeros.T - 1).astype(np.uint32)  # [groups, out]
    qzeros = np.zeros((zm1.shape[0], out_f // per), dtype=np.uint32)
    for col in range(out_f // per):
        for j in range(per):
            qzeros[:, col] |= zm1[:, col * per + j] << (bits * j)
    return qweight.view(np.int32), qzeros.view(np.int32)


@pytest.mark.parametrize("bits", [4, 8])
def test_packing_is_autogptqs(bits):
    rng = np.random.RandomState(bits)
    q = rng.randint(0, 2 ** bits, size=(48, 128)).astype(np.uint8)
    z = rng.randint(1, 2 ** bits, size=(48, 4)).astype(np.float32)
    s = rng.rand(48, 4).astype(np.float16).astype(np.float32)
    qweight, qzeros, scales, g_idx = pack_gptq(q, z, s, bits)
    ref_w, ref_z = autogptq_pack(q, z, s, bits)
    assert np.array_equal(qweight, ref_w) and np.array_equal(qzeros, ref_z)
    assert scales.dtype == np.float16 and scales.shape == (4, 48) and np.array_equal(g_idx, np.arange(128) // 32)
    q2, z2, s2 = unpack_gptq(qweight, qzeros, scales, bits)
    assert np.array_equal(q2, q) and np.array_equal(z2, z.T) and np.array_equal(s2, s.T)
    w = dequantize_gptq(qweight, qzeros, scales, g_idx, bits)
    np.testing.assert_array_equal(w, (q - np.repeat(z, 32, 1)) * np.repeat(s, 32, 1))


@pytest.fixture(scope="module")
def gptq_soft(tiny_model, calib_txt, tmp_path_factory):
    from turbolm.lite.gptq import gptq

    work = str(tmp_path_factory.mktemp("gptq") / "out")
    torch.set_num_threads(1)
    gptq(tiny_model("soft"), 4, 64, work, str(calib_txt), 8, 128)
    return work


def test_checkpoint_layout_and_config(gptq_soft):
    from safetensors.numpy import load_file

    cfg = json.load(open(os.path.join(gptq_soft, "config.json")))
    qc = cfg["quantization_config"]
    assert (qc["quant_method"], qc["bits"], qc["group_size"], qc["desc_act"], qc["sym"],
            qc["checkpoint_format"]) == ("gptq", 4, 64, False, True, "gptq")
    assert json.load(open(os.path.join(gptq_soft, "quantize_config.json")))["bits"] == 4
    # transformers' own reader of quantization configs takes it as a GPTQConfig (loading the weights
    # needs gptqmodel, which does not install on this CPU-only machine)
    from transformers.quantizers.auto import AutoQuantizationConfig

    parsed = AutoQuantizationConfig.from_dict(qc)
    assert type(parsed).__name__ == "GPTQConfig" and (parsed.bits, parsed.group_size, parsed.sym) == (4, 64, True)
    sd = load_file(os.path.join(gptq_soft, "model.safetensors"))
    p = "model.layers.0.mlp.down_proj"
    assert sd[p + ".qweight"].dtype == np.int32 and sd[p + ".qweight"].shape == (512 // 8, 256)
    assert sd[p + ".qzeros"].shape == (512 // 64, 256 // 8) and sd[p + ".scales"].dtype == np.float16
    assert np.array_equal(sd[p + ".g_idx"], np.arange(512) // 64)
    assert np.all(sd[p + ".qzeros"].view(np.uint32) == 0x77777777)  # symmetric: zero 8, stored as 7
    assert p + ".weight" not in sd


def test_gptq_route_matches_hf_and_beats_rtn(gptq_soft, tiny_model, calib_txt, tmp_path):
    """convert reads the checkpoint (format guessed) into int4 with its own integers: the runtime
    equals HF on the dequantized checkpoint; and its logits are closer to the fp model's than RTN's."""
    from safetensors.numpy import load_file

    from turbolm import _turbomind
    from turbolm.converter.main import main as convert
    from turbolm.converter.quant import quantize_lm_head
    from transformers import AutoModelForCausalLM

    ws = str(tmp_path / "ws")
    convert("base", gptq_soft, dst_path=ws)
    wdir = os.path.join(ws, "triton_models", "weights")
    m = _turbomind.LlamaModel(wdir, num_threads=2)
    m.allocate_kv(64)
    tokens = [int(t) for t in np.random.RandomState(0).randint(3, 1000, size=100)]
    got = m.forward([(tokens, 0, list(range(64)), 2)])

    sd = load_file(os.path.join(gptq_soft, "model.safetensors"))
    model_dir = tiny_model("soft")

    def hf(weights, int8_head=False):
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        with torch.no_grad():
            for name, p in model.named_parameters():
                base = name[:-len(".weight")]
                if base + ".qweight" in weights:
                    p.copy_(torch.from_numpy(weights[base + ".qweight"]))
                else:
                    p.copy_(p.half().float())
            if int8_head:  # the int8 lm head the runtime keeps for quantized workspaces
                head = model.get_output_embeddings()
                head.weight.copy_(torch.from_numpy(quantize_lm_head(head.weight.numpy())))
            return model(torch.tensor([tokens])).logits[0].numpy()

    dq = {k: dequantize_gptq(v, *(sd[k.replace(".qweight", s)] for s in (".qzeros", ".scales", ".g_idx")), 4)
          for k, v in sd.items() if k.endswith(".qweight")}
    oracle = hf(dq, int8_head=True)
    assert np.abs(got - oracle).max() / np.abs(oracle).max() <= 5e-3  # the fp16 KV cache's share
    # against round-to-nearest on the same symmetric grid, on text like the calibration set's
    from transformers import AutoTokenizer

    text = open(calib_txt, encoding="utf-8").read()[20000:30000]
    tokens[:] = AutoTokenizer.from_pretrained(model_dir).encode(text)[:200]
    fp, ref = hf({}), hf(dq)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).state_dict()
    rt = {k[:-len(".weight")] + ".qweight": rtn(v.half().float(), 4, 64, True).numpy()
          for k, v in base.items() if k[:-len(".weight")] + ".qweight" in dq}
    e_gptq, e_rtn = np.mean((ref - fp) ** 2), np.mean((hf(rt) - fp) ** 2)
    assert e_gptq < 0.8 * e_rtn, (e_gptq, e_rtn)


def test_awq_scales_then_gptq_rounding(tiny_model, calib_txt, tmp_path):
    """auto_awq --gptq: the AWQ search's smoothing, then GPTQ instead of round-to-nearest; the AWQ
    checkpoint holds GPTQ's integers (the runtime equals HF on its dequantized weights) and its
    layers' output error on calibration text is below plain AWQ's."""
    from turbolm import _turbomind
    from turbolm.converter.main import main as convert
    from turbolm.converter.quant import quantize_lm_head
    from turbolm.lite.auto_awq import auto_awq
    from turbolm.lite.awq_checkpoint import load_awq_dequantized
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = tiny_model("soft")
    torch.set_num_threads(1)
    for tag, flag in (("rtn", False), ("gptq", True)):
        auto_awq(model_dir, 4, 64, str(tmp_path / tag), calib_txt, 8, 128, gptq=flag)
    text = open(calib_txt, encoding="utf-8").read()[20000:30000]
    tokens = AutoTokenizer.from_pretrained(model_dir).encode(text)[:200]

    def hf(state=None, int8_head=False):
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        with torch.no_grad():
            if state is not None:
                model.load_state_dict(state, strict=False)
            for name, p in model.named_parameters():
                if state is None or name not in state:
                    p.copy_(p.half().float())
            if int8_head:
                head = model.get_output_embeddings()
                head.weight.copy_(torch.from_numpy(quantize_lm_head(head.weight.numpy())))
            return model(torch.tensor([tokens])).logits[0].numpy()

    fp = hf()
    errs = {tag: np.mean((hf(load_awq_dequantized(str(tmp_path / tag))) - fp) ** 2) for tag in ("rtn", "gptq")}
    assert errs["gptq"] < errs["rtn"], errs
    ws = str(tmp_path / "ws")
    convert("base", str(tmp_path / "gptq"), dst_path=ws)
    m = _turbomind.LlamaModel(os.path.join(ws, "triton_models", "weights"), num_threads=2)
    m.allocate_kv(64)
    got = m.forward([(tokens[:100], 0, list(range(64)), 2)])
    ref = hf(load_awq_dequantized(str(tmp_path / "gptq")), int8_head=True)[:100]
    assert np.abs(got - ref).max() / np.abs(ref).max() <= 5e-3


def test_mixed_gptq_checkpoint_converts_to_a_mixed_workspace(tiny_model, calib_txt, tmp_path):
    """lite gptq --mixed edges: the first and last layers' q/k/v and down at 8 bits, declared as
    GPTQModel `dynamic` overrides; convert reads each module at its width into int8_linears and
    the runtime equals HF on the checkpoint's dequantized weights."""
    from safetensors.numpy import load_file

    from turbolm import _turbomind
    from turbolm.config import read_config_ini
    from turbolm.converter.main import main as convert
    from turbolm.converter.quant import quantize_lm_head
    from turbolm.lite.gptq import gptq
    from transformers import AutoModelForCausalLM

    model_dir = tiny_model("mha")  # 3 layers: edges = layers 0 and 2
    work = str(tmp_path / "gptq")
    torch.set_num_threads(1)
    gptq(model_dir, 4, 64, work, calib_txt, 4, 128, sym=False, mixed="edges")
    qc = json.load(open(os.path.join(work, "config.json")))["quantization_config"]
    assert len(qc["dynamic"]) == 8 and all(v == {"bits": 8} for v in qc["dynamic"].values())
    sd = load_file(os.path.join(work, "model.safetensors"))
    assert sd["model.layers.0.mlp.down_proj.qweight"].shape == (512 // 4, 256)  # 8 bits: 4 a word
    assert sd["model.layers.1.mlp.down_proj.qweight"].shape == (512 // 8, 256)
    ws = str(tmp_path / "ws")
    convert("base", work, dst_path=ws)
    wdir = os.path.join(ws, "triton_models", "weights")
    assert read_config_ini(os.path.join(wdir, "config.ini"))["int8_linears"] == "0.w2,0.w_qkv,2.w2,2.w_qkv"
    m = _turbomind.LlamaModel(wdir, num_threads=2)
    m.allocate_kv(64)
    tokens = [int(t) for t in np.random.RandomState(0).randint(3, 1000, size=100)]
    got = m.forward([(tokens, 0, list(range(64)), 2)])
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            base = name[:-len(".weight")]
            if base + ".qweight" in sd:
                bits = 8 if f"+:^{base.replace('.', chr(92) + '.')}$" in qc["dynamic"] else 4
                p.copy_(torch.from_numpy(dequantize_gptq(sd[base + ".qweight"], sd[base + ".qzeros"],
                                                         sd[base + ".scales"], sd[base + ".g_idx"], bits)))
            else:
                p.copy_(p.half().float())
        head = model.get_output_embeddings()
        head.weight = torch.nn.Parameter(torch.from_numpy(quantize_lm_head(head.weight.numpy())), requires_grad=False)
        ref = model(torch.tensor([tokens])).logits[0].numpy()
    assert np.abs(got - ref).max() / np.abs(ref).max() <= 5e-3


@pytest.mark.parametrize("variant", ["tied", "untied"])
def test_lm_head_route(tiny_model, calib_txt, tmp_path, variant):
    """lite gptq --lm_head: the head's GPTQ integers (GPTQModel's `lm_head: true` layout) become the
    workspace's int4 embedding table / lm head (tied: one table, so its rows are looked up in them
    too; untied: the embeddings round-to-nearest at the head's group size). The runtime equals HF
    on the dequantized checkpoint, head included, and the head's output error on the calibration
    text's final features is below round-to-nearest's."""
    from safetensors.numpy import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from turbolm import _turbomind
    from turbolm.config import read_config_ini
    from turbolm.converter.main import main as convert
    from turbolm.converter.quant import quantize_rtn
    from turbolm.errors import UserError
    from turbolm.lite.gptq import gptq

    work = str(tmp_path / "ckpt")
    torch.set_num_threads(1)
    with pytest.raises(UserError, match=r"vocabulary \(1001\) is not a multiple of 8"):
        gptq(tiny_model(variant), 4, 64, work, calib_txt, 8, 128, lm_head=True)
    # the tiny models' 1001 rows (deliberately odd) padded to 1008, as real vocabularies are
    model_dir = str(tmp_path / "padded")
    padded = AutoModelForCausalLM.from_pretrained(tiny_model(variant), dtype=torch.float32)
    padded.resize_token_embeddings(1008, mean_resizing=False)
    padded.save_pretrained(model_dir)
    AutoTokenizer.from_pretrained(tiny_model(variant)).save_pretrained(model_dir)
    gptq(model_dir, 4, 64, work, calib_txt, 8, 128, act_order=True, sym=False, lm_head=True)
    qc = json.load(open(os.path.join(work, "config.json")))["quantization_config"]
    sd = load_file(os.path.join(work, "model.safetensors"))
    assert qc["lm_head"] is True and "lm_head.qweight" in sd and "lm_head.weight" not in sd
    dq = {k[:-len(".qweight")]: dequantize_gptq(v, *(sd[k.replace(".qweight", s)] for s in
                                                     (".qzeros", ".scales", ".g_idx")), 4)
          for k, v in sd.items() if k.endswith(".qweight")}

    with pytest.raises(UserError, match="converts with --embedding_type int4 only"):
        convert("base", work, dst_path=str(tmp_path / "bad"), embedding_type="int8")
    ws = str(tmp_path / "ws")
    convert("base", work, dst_path=ws)
    wdir = os.path.join(ws, "triton_models", "weights")
    cfg = read_config_ini(os.path.join(wdir, "config.ini"))
    tied = variant == "tied"
    assert (cfg["embedding_type"], cfg["embedding_group_size"], cfg["tie_word_embeddings"]) == ("int4", 64, int(tied))

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        fp_head = model.get_output_embeddings().weight.detach().clone()
        for name, p in model.named_parameters():
            base = name[:-len(".weight")]
            p.copy_(torch.from_numpy(dq[base]) if base in dq else p.half().float())
        model.get_output_embeddings().weight.copy_(torch.from_numpy(dq["lm_head"]))  # tied: the table too
        if tied:
            assert model.get_input_embeddings().weight.data_ptr() == model.get_output_embeddings().weight.data_ptr()
        else:  # the embeddings: round-to-nearest of the checkpoint's fp16 table, in the head's groups
            emb = sd["model.embed_tokens.weight"].astype(np.float32)
            model.get_input_embeddings().weight.copy_(torch.from_numpy(quantize_rtn(emb, 4, 64).dequantize()))
    m = _turbomind.LlamaModel(wdir, num_threads=2)
    m.allocate_kv(64)
    tokens = [int(t) for t in np.random.RandomState(0).randint(3, 1000, size=100)]
    got = m.forward([(tokens, 0, list(range(64)), 2)])
    with torch.no_grad():
        ref = model(torch.tensor([tokens])).logits[0].numpy()
    assert np.abs(got - ref).max() / np.abs(ref).max() <= 5e-3

    # the head's objective: its output error on final features of calibration-like text
    fp = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    text = open(calib_txt, encoding="utf-8").read()[:20000]
    ids = AutoTokenizer.from_pretrained(model_dir).encode(text)[:512]
    with torch.no_grad():
        X = fp.model(torch.tensor([ids])).last_hidden_state[0]
    err = lambda A: float(((X @ (fp_head - A).T) ** 2).mean())  # noqa: E731
    rtn_head = torch.from_numpy(quantize_rtn(fp_head.numpy(), 4, 64).dequantize())
    assert err(torch.from_numpy(dq["lm_head"])) < 0.9 * err(rtn_head)  # measured 0.82 (tied), on noise weights
