"""Serving benchmark against a running api_server: N concurrent streaming clients.

    python -m turbolm.serve.bench_client http://127.0.0.1:23333 --concurrency 1,8,32 --requests 32 \\
        --max_tokens 64

Each client sends its share of the requests one after another on one keep-alive connection
(streaming /v1/completions, temperature 0 unless --temperature, with ignore_eos and
stream_options.include_usage, so every request
makes exactly max_tokens tokens, counted by the server's usage). Reports, per concurrency level:
requests/s, output tokens/s, p50/p99 time to first token (first content chunk) and latency, the
median per-request decode rate (tokens after the first / time after the first: the measure of
the engine's batch-1 decode), and the client's own CPU time per token.

The client speaks HTTP/1.1 over asyncio streams itself (no HTTP library): on a small machine the
load generator shares the cores with the server, and a lean one takes less from it. Traffic goes
only to the URL given (use a loopback address)."""
from __future__ import annotations

import asyncio
import json
import statistics
import time
from typing import Dict, List, Tuple
from math import nan
from urllib.parse import urlsplit


def _pct(xs: List[float], p: float) -> float:
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = min(len(xs) - 1, max(0, int(round(p / 100.0 * (len(xs) - 1)))))
    return xs[k]


class Connection:
    """One keep-alive HTTP/1.1 connection that POSTs JSON and reads a (chunked) SSE answer."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader = self.writer = None

    async def open(self):
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    def close(self):
        if self.writer is not None:
            self.writer.close()

    async def post_stream(self, path: str, body: dict):
        """Yields each SSE `data:` payload (str) of the answer; raises on a non-200."""
        if self.writer is None:
            await self.open()
        data = json.dumps(body).encode()
        self.writer.write(f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: application/json"
                          f"\r\nContent-Length: {len(data)}\r\nAccept: text/event-stream\r\n\r\n".encode() + data)
        await self.writer.drain()
        status = (await self.reader.readline()).split(b" ", 2)
        headers = {}
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            k, _, v = line.decode("latin-1").partition(":")
            headers[k.strip().lower()] = v.strip()
        if len(status) < 2 or status[1] != b"200":
            raise RuntimeError(f"HTTP {status[1:2]}: {await self._read_body(headers)!r}")
        pending = b""
        async for chunk in self._chunks(headers):
            pending += chunk
            *events, pending = pending.split(b"\n\n")
            for ev in events:
                if ev.startswith(b"data: "):
                    yield ev[6:].decode()

    async def _chunks(self, headers):
        if headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int((await self.reader.readline()).split(b";")[0], 16)
                if size == 0:
                    await self.reader.readline()  # the empty trailer
                    return
                chunk = await self.reader.readexactly(size)
                await self.reader.readexactly(2)
                yield chunk
        else:
            n = int(headers.get("content-length", "0"))
            if n:
                yield await self.reader.readexactly(n)

    async def _read_body(self, headers) -> bytes:
        return b"".join([c async for c in self._chunks(headers)])


async def _one(conn: Connection, prompt: str, max_tokens: int, temperature: float) -> Dict[str, float]:
    body = {"prompt": prompt, "max_tokens": max_tokens, "stream": True, "ignore_eos": True,
            "temperature": temperature, "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    ttft, t_last, tokens = None, None, 0
    async for data in conn.post_stream("/v1/completions", body):
        if not data.startswith("{"):
            continue  # [DONE]
        obj = json.loads(data)
        if "error" in obj:  # an error event mid-stream: the request failed, its tokens do not count
            raise RuntimeError(f"the server failed a request: {obj['error']}")
        choices = obj.get("choices")
        if choices and (choices[0].get("text") or choices[0].get("finish_reason")):
            t_last = time.perf_counter() - t0
            if ttft is None:
                ttft = t_last
        if obj.get("usage"):
            tokens = obj["usage"]["completion_tokens"]
    latency = time.perf_counter() - t0
    ttft = latency if ttft is None else ttft
    return {"ttft": ttft, "latency": latency, "tokens": tokens, "decode_tok_s": decode_rate(tokens, ttft, t_last)}


def decode_rate(tokens: int, ttft: float, t_last) -> float:
    """Tokens after the first over the time after the first (the measure of the engine's batch-1
    decode); NaN when the request's tokens all came in one chunk, which gives no interval."""
    if tokens > 1 and t_last is not None and t_last > ttft:
        return (tokens - 1) / (t_last - ttft)
    return nan


def _host_port(url: str) -> Tuple[str, int]:
    u = urlsplit(url)
    if u.scheme != "http" or not u.hostname:
        raise ValueError(f"bench_client needs an http://HOST:PORT url, got {url!r}")
    return u.hostname, u.port or 80


async def run_level(url: str, concurrency: int, requests: int, max_tokens: int, prompt: str,
                    temperature: float = 0.0) -> Dict[str, float]:
    host, port = _host_port(url)
    per_client = [requests // concurrency + (1 if i < requests % concurrency else 0) for i in range(concurrency)]
    results: List[Dict[str, float]] = []
    conns = [Connection(host, port) for _ in per_client]

    async def client(i: int, n: int):
        await conns[i].open()
        for j in range(n):
            results.append(await _one(conns[i], f"{prompt} (client {i}, request {j})", max_tokens, temperature))

    cpu0, t0 = time.process_time(), time.perf_counter()
    try:
        await asyncio.gather(*[client(i, n) for i, n in enumerate(per_client) if n])
    finally:
        for c in conns:
            c.close()
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    ttft = [r["ttft"] for r in results]
    lat = [r["latency"] for r in results]
    tokens = sum(r["tokens"] for r in results)
    return {"concurrency": concurrency, "requests": len(results), "wall_s": wall, "req_per_s": len(results) / wall,
            "tok_per_s": tokens / wall, "tokens": tokens, "ttft_p50_ms": 1000 * _pct(ttft, 50),
            "ttft_p99_ms": 1000 * _pct(ttft, 99), "latency_p50_ms": 1000 * _pct(lat, 50),
            "latency_p99_ms": 1000 * _pct(lat, 99), "ttft_mean_ms": 1000 * statistics.mean(ttft),
            # requests whose tokens all came in one chunk have no decode rate: left out
            "decode_tok_s": statistics.median([r["decode_tok_s"] for r in results if r["decode_tok_s"] > 0] or [nan]),
            "client_cpu_ms_per_token": 1000 * cpu / max(tokens, 1)}


def main(url: str, concurrency="1,8,32", requests: int = 32, max_tokens: int = 64,
         prompt: str = "First Citizen: Before we proceed any further, hear me speak.", temperature: float = 0.0):
    levels = [int(c) for c in str(concurrency).split(",") if c.strip()]
    print(f"{'conc':>4} {'reqs':>5} {'req/s':>7} {'tok/s':>8} {'ttft p50':>9} {'ttft p99':>9} "
          f"{'lat p50':>8} {'lat p99':>8} {'decode/s':>8} {'client cpu/tok':>14}  (ms)")
    for c in levels:
        row = asyncio.run(run_level(url, c, max(int(requests), c), int(max_tokens), prompt, float(temperature)))
        print(f"{c:>4} {row['requests']:>5} {row['req_per_s']:>7.2f} {row['tok_per_s']:>8.1f} "
              f"{row['ttft_p50_ms']:>9.1f} {row['ttft_p99_ms']:>9.1f} {row['latency_p50_ms']:>8.1f} "
              f"{row['latency_p99_ms']:>8.1f} {row['decode_tok_s']:>8.1f} {row['client_cpu_ms_per_token']:>14.3f}",
              flush=True)


def cli(argv=None) -> None:
    import argparse

    p = argparse.ArgumentParser(prog="python -m turbolm.serve.bench_client", description=__doc__.split("\n\n")[0],
                                allow_abbrev=False)
    p.add_argument("url", help="the server, e.g. http://127.0.0.1:23333")
    p.add_argument("--concurrency", default="1,8,32", help="comma list of concurrent clients")
    p.add_argument("--requests", type=int, default=32, help="requests per concurrency level")
    p.add_argument("--max_tokens", "--max-tokens", type=int, default=64, help="tokens per request")
    p.add_argument("--prompt", default="First Citizen: Before we proceed any further, hear me speak.")
    p.add_argument("--temperature", type=float, default=0.0,
                   help="0: greedy, as `turbolm bench` measures the engine; > 0 loads the sampler too")
    a = p.parse_args(argv)
    main(a.url, concurrency=a.concurrency, requests=a.requests, max_tokens=a.max_tokens, prompt=a.prompt,
         temperature=a.temperature)


if __name__ == "__main__":
    cli()
