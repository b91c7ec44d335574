"""Serving benchmark against a running api_server: N concurrent streaming clients.

    python -m turbolm.serve.bench_client http://127.0.0.1:23333 --concurrency 1,8,32 --requests 32 \\
        --max_tokens 64

Each client sends its share of the requests one after another (streaming /v1/completions with
ignore_eos, so every request makes exactly max_tokens tokens). Reports, per concurrency level:
requests/s, output tokens/s, and p50/p99 time to first token (first content chunk) and latency.
Traffic goes only to the URL given (use a loopback address)."""
from __future__ import annotations

import asyncio
import json
import statistics
import time
from typing import Dict, List


def _pct(xs: List[float], p: float) -> float:
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = min(len(xs) - 1, max(0, int(round(p / 100.0 * (len(xs) - 1)))))
    return xs[k]


async def _one(http, prompt: str, max_tokens: int) -> Dict[str, float]:
    body = {"prompt": prompt, "max_tokens": max_tokens, "stream": True, "ignore_eos": True, "temperature": 0.8,
            "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    ttft, t_last, tokens = None, None, 0
    async with http.stream("POST", "/v1/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: {"):
                continue
            obj = json.loads(line[6:])
            if obj.get("choices") and (obj["choices"][0].get("text") or obj["choices"][0].get("finish_reason")):
                t_last = time.perf_counter() - t0
                if ttft is None:
                    ttft = t_last
            if obj.get("usage"):
                tokens = obj["usage"]["completion_tokens"]
    latency = time.perf_counter() - t0
    ttft = latency if ttft is None else ttft
    # the inter-token rate after the first token: the measure of the engine's batch-1 decode
    decode = (tokens - 1) / (t_last - ttft) if tokens > 1 and t_last and t_last > ttft else float("nan")
    return {"ttft": ttft, "latency": latency, "tokens": tokens, "decode_tok_s": decode}


async def run_level(url: str, concurrency: int, requests: int, max_tokens: int, prompt: str) -> Dict[str, float]:
    import httpx

    per_client = [requests // concurrency + (1 if i < requests % concurrency else 0) for i in range(concurrency)]
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    async with httpx.AsyncClient(base_url=url.rstrip("/"), timeout=600, limits=limits) as http:
        results: List[Dict[str, float]] = []

        async def client(i: int, n: int):
            for j in range(n):
                results.append(await _one(http, f"{prompt} (client {i}, request {j})", max_tokens))

        t0 = time.perf_counter()
        await asyncio.gather(*[client(i, n) for i, n in enumerate(per_client) if n])
        wall = time.perf_counter() - t0
    ttft = [r["ttft"] for r in results]
    lat = [r["latency"] for r in results]
    tokens = sum(r["tokens"] for r in results)
    return {"concurrency": concurrency, "requests": len(results), "wall_s": wall, "req_per_s": len(results) / wall,
            "tok_per_s": tokens / wall, "tokens": tokens, "ttft_p50_ms": 1000 * _pct(ttft, 50),
            "ttft_p99_ms": 1000 * _pct(ttft, 99), "latency_p50_ms": 1000 * _pct(lat, 50),
            "latency_p99_ms": 1000 * _pct(lat, 99), "ttft_mean_ms": 1000 * statistics.mean(ttft),
            "decode_tok_s": statistics.median([r["decode_tok_s"] for r in results])}


def main(url: str, concurrency="1,8,32", requests: int = 32, max_tokens: int = 64,
         prompt: str = "First Citizen: Before we proceed any further, hear me speak."):
    levels = [int(c) for c in (concurrency.split(",") if isinstance(concurrency, str) else
                               (concurrency if isinstance(concurrency, (list, tuple)) else [concurrency]))]
    rows = []
    print(f"{'conc':>4} {'reqs':>5} {'req/s':>7} {'tok/s':>8} {'ttft p50':>9} {'ttft p99':>9} "
          f"{'lat p50':>8} {'lat p99':>8}  (ms)")
    for c in levels:
        row = asyncio.run(run_level(url, c, max(int(requests), c), int(max_tokens), prompt))
        rows.append(row)
        print(f"{c:>4} {row['requests']:>5} {row['req_per_s']:>7.2f} {row['tok_per_s']:>8.1f} "
              f"{row['ttft_p50_ms']:>9.1f} {row['ttft_p99_ms']:>9.1f} {row['latency_p50_ms']:>8.1f} "
              f"{row['latency_p99_ms']:>8.1f}", flush=True)
    return None


if __name__ == "__main__":
    import fire

    fire.Fire(main)
