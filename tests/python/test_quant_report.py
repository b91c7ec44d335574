"""`python -m turbolm.quant_report` on SmolLM2 (a small slice, so it fits the test timeout): the
runtime's perplexity with an int8 KV cache stays within 1% of fp16, and AWQ int4 beats plain
round-to-nearest int4 at the same group size (64: SmolLM2's hidden 576 = 9 * 64); int8
activations cost little on int4 weights, SmoothQuant W8A8 stays near fp16, and bf16 dot products
do not move fp16's perplexity (on the full report: +0.53% / +0.28%, +0.66%, +0.02%)."""
import os

import pytest

from turbolm.errors import UserError
from turbolm.quant_report import DATA_DIR, HELDOUT, heldout_calib, report


def test_heldout_calibration_is_the_slice_the_evaluation_does_not_touch(tmp_path):
    path = os.path.join(DATA_DIR, "wikitext2-test.txt")
    got = open(heldout_calib(path, 40000, str(tmp_path)), encoding="utf-8").read()
    assert got == open(path, encoding="utf-8").read()[HELDOUT[0]:HELDOUT[1]] and len(got) == HELDOUT[1] - HELDOUT[0]
    with pytest.raises(UserError, match="--eval_chars 300000 would evaluate on them"):
        heldout_calib(path, 300000, str(tmp_path))
    short = tmp_path / "short.txt"
    short.write_text("x" * 1000)
    with pytest.raises(UserError, match="too short for --calib heldout"):
        heldout_calib(str(short), 400, str(tmp_path))


def test_kv8_close_to_fp16_and_awq_beats_rtn(smollm2_hf, tmp_path):
    pytest.importorskip("torch")
    from turbolm import _turbomind

    bf16 = ("fp16+bf16",) if _turbomind.cpu_features()["avx512_bf16"] else ()
    # Shakespeare, as this slice's bounds were set on it: 512 tokens of KV statistics are few, and
    # the full report's held-out default (+0.10% for KV int8 on 16k tokens) is measured there
    r = report(smollm2_hf, str(tmp_path / "report"), group_size=64, calib_samples=4, calib_seqlen=128,
               calib=os.path.join(DATA_DIR, "tinyshakespeare.txt"),
               eval_chars=8000, seqlen=256, threads=2,
               modes=("fp16", "fp16+kv8", "rtn-int4", "rtn-int4+a8", "rtn-int4-q4km", "awq-int4", "gptq-int4",
                      "gptq-int4-auto5", "gptq-int4-e8", "w8a8") + bf16)
    assert abs(r["rtn-int4+a8"] / r["rtn-int4"] - 1) < 0.02, r
    assert abs(r["w8a8"] / r["fp16"] - 1) < 0.03, r
    if bf16:
        assert abs(r["fp16+bf16"] / r["fp16"] - 1) < 0.005, r
    assert abs(r["fp16+kv8"] / r["fp16"] - 1) < 0.01, r
    assert r["awq-int4"] < r["rtn-int4"], r
    # GPTQ needs more calibration tokens than this slice's 512 (its Hessians of 1536 inputs are rank
    # deficient here): only that it runs end to end; the full report measures it
    assert r["fp16"] < r["gptq-int4"] < 2 * r["fp16"], r
    assert r["rtn-int4-q4km"] < r["rtn-int4"], r  # int8 for w_qkv and w2 of 14 of 30 layers helps
    import json

    rows = json.load(open(tmp_path / "report" / "report.json"))
    # int4 g64 linears: 4 bits + an fp16 scale and zero per 64 weights; fp16: 16
    assert rows["rtn-int4"]["linears"] == pytest.approx(4.5) and rows["fp16"]["linears"] == pytest.approx(16)
    assert rows["gptq-int4"]["linears"] == pytest.approx(4.5)
    assert 4.5 < rows["rtn-int4"]["model"] < 16 and all(r["decode"] > 0 for r in rows.values())
    # the same GPTQ checkpoint with its tied 49152 x 576 embedding table in int8 g64 (8.5 bits, not 16):
    # a fifth of the weights, at no cost the slice can see
    e8, g = rows["gptq-int4-e8"], rows["gptq-int4"]
    assert e8["linears"] == pytest.approx(4.5) and g["model"] - e8["model"] > 1.0, rows
    assert abs(r["gptq-int4-e8"] / r["gptq-int4"] - 1) < 0.01, r
    assert 4.5 < rows["rtn-int4-q4km"]["linears"] < 6
    # --mixed auto:5: the most sensitive linears at 8 bits, the decoder linears within 5 bits per weight
    assert 4.5 < rows["gptq-int4-auto5"]["linears"] <= 5.0 and r["gptq-int4-auto5"] < r["rtn-int4"], r
    assert r["fp16"] < r["awq-int4"], r  # int4 costs something; the report is not comparing the same model
