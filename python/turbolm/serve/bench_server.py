"""The server against the engine under it, in one run (issue 8 §1):

    python -m turbolm.serve.bench_server WORKSPACE [WORKSPACE ...] [--concurrency 1,8,32]
                                         [--requests 64] [--max_tokens 64] [--repeat 3]

For each workspace: `turbolm bench WS --backends turbolm` (the engine alone, its own process),
then `turbolm serve api_server WS` started on 127.0.0.1 and loaded by bench_client (streaming
/v1/completions, ignore_eos, `max_tokens` per request) at each concurrency. Prints one table:
engine figures, server figures and their ratios. Two server rates are given at C=1:
- `tok/s`: usage-counted tokens / wall time, which includes each request's prefill and HTTP;
- `decode tok/s`: tokens after the first / time after the first, per request (the same measure
  as the engine's batch-1 decode).
The machine's CPU flags are printed with the figures. Nothing here is a test: it prints.
"""
from __future__ import annotations

import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Dict, List

from turbolm.serve.bench_client import run_level


def cpu_flags() -> str:
    want = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_int8", "amx_bf16", "amx_tile")
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    return " ".join(w for w in want if w in have)
    except OSError:
        pass
    return platform.machine()


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def _turbolm(*args: str) -> List[str]:
    return [sys.executable, "-c", "from turbolm.cli import main; main()", *args]


def engine_figures(ws: str, conc: List[int], max_tokens: int) -> Dict:
    out = subprocess.run(_turbolm("bench", ws, "--backends", "turbolm", "--concurrency", ",".join(map(str, conc)),
                                  "--decode_tokens", str(max_tokens), "--worker", "turbolm"),
                         capture_output=True, text=True, check=True)
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("BENCH_JSON "))
    return json.loads(line[len("BENCH_JSON "):])


def server_figures(ws: str, conc: List[int], requests: int, max_tokens: int, port: int,
                   temperature: float) -> List[Dict]:
    import httpx

    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    proc = subprocess.Popen(_turbolm("serve", "api_server", ws, "--server_name", "127.0.0.1", "--server_port",
                                     str(port), "--log_level", "warning", "--instance_num", str(max(conc + [1]))),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited: {proc.stderr.read().decode()[-2000:]}")
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                raise TimeoutError("the server did not start")
            time.sleep(0.3)
        prompt = "First Citizen: Before we proceed any further, hear me speak."
        asyncio.run(run_level(url, 1, 2, 8, prompt))  # warm-up
        return [asyncio.run(run_level(url, c, max(requests, c), max_tokens, prompt, temperature)) for c in conc]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def _median_dicts(ds: List[Dict]) -> Dict:
    keys = [k for k, v in ds[0].items() if isinstance(v, (int, float))]
    return {k: statistics.median(d[k] for d in ds) for k in keys}


def main(*workspaces: str, concurrency: str = "1,8,32", requests: int = 64, max_tokens: int = 64,
         port: int = 23911, repeat: int = 1, temperature: float = 0.0):
    conc = [int(c) for c in str(concurrency).split(",") if c.strip()]
    print(f"cpu: {cpu_model()}; {os.cpu_count()} cpus; flags: {cpu_flags()}")
    print(f"requests per level: {requests}, {max_tokens} tokens each (ignore_eos, temperature {temperature}), "
          f"streaming /v1/completions; median of {repeat} interleaved engine/server rounds")
    rows = []
    for ws in workspaces:
        engs, srvs = [], []
        for r in range(max(1, int(repeat))):  # interleaved, so a noisy neighbour hits both sides alike
            print(f"bench_server: {ws}: round {r + 1}: engine ...", file=sys.stderr, flush=True)
            engs.append(engine_figures(ws, conc, max_tokens))
            print(f"bench_server: {ws}: round {r + 1}: server ...", file=sys.stderr, flush=True)
            srvs.append(server_figures(ws, conc, requests, max_tokens, port, temperature))
        eng = _median_dicts(engs)
        srv = [_median_dicts([s[i] for s in srvs]) for i in range(len(conc))]
        rows.append((ws, eng, srv))
    head = (f"{'workspace':<24} {'C':>3} {'engine tok/s':>12} {'server tok/s':>12} {'ratio':>6} "
            f"{'server decode':>13} {'ratio':>6} {'TTFT p50':>9} {'TTFT p99':>9} {'client cpu/tok':>14}")
    print(head)
    print("-" * len(head))
    for ws, eng, srv in rows:
        name = os.path.basename(os.path.normpath(ws))[:24]
        for c, s in zip(conc, srv):
            e = eng["decode_b1_tok_s"] if c == 1 else eng[f"decode_c{c}_tok_s"]
            dec = s["decode_tok_s"] if c == 1 else None
            dec_s = f"{dec:>13.1f} {dec / e:>6.2f}" if dec else f"{'':>13} {'':>6}"
            print(f"{name:<24} {c:>3} {e:>12.1f} {s['tok_per_s']:>12.1f} {s['tok_per_s'] / e:>6.2f} {dec_s} "
                  f"{s['ttft_p50_ms']:>7.0f}ms {s['ttft_p99_ms']:>7.0f}ms {s['client_cpu_ms_per_token']:>12.3f}ms",
                  flush=True)


def cli(argv=None) -> None:
    import argparse

    p = argparse.ArgumentParser(prog="python -m turbolm.serve.bench_server", description=__doc__.split("\n\n")[0],
                                allow_abbrev=False)
    p.add_argument("workspaces", nargs="+", help="workspaces (or HF dirs / .gguf files) to measure, in order")
    p.add_argument("--concurrency", default="1,8,32", help="comma list of concurrent clients")
    p.add_argument("--requests", type=int, default=64, help="requests per concurrency level")
    p.add_argument("--max_tokens", "--max-tokens", type=int, default=64, help="tokens per request")
    p.add_argument("--port", type=int, default=23911, help="loopback port for the server")
    p.add_argument("--repeat", type=int, default=1, help="interleaved engine/server rounds; medians are shown")
    p.add_argument("--temperature", type=float, default=0.0,
                   help="the server's requests (the engine figures are greedy, as `turbolm bench` runs)")
    a = p.parse_args(argv)
    main(*a.workspaces, concurrency=a.concurrency, requests=a.requests, max_tokens=a.max_tokens, port=a.port,
         repeat=a.repeat, temperature=a.temperature)


if __name__ == "__main__":
    cli()
