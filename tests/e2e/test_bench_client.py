"""The serving load client (python -m turbolm.serve.bench_client) against the real server: its
own HTTP/1.1 client must count every token the server's usage reports and time each request."""
from __future__ import annotations

import asyncio
import math
import subprocess
import sys

from turbolm.serve.bench_client import decode_rate, run_level


def test_run_level_counts_every_token(api_server):
    row = asyncio.run(run_level(api_server.url, 3, 7, 9, "First Citizen: hear me", temperature=0.8))
    assert row["requests"] == 7 and row["tokens"] == 7 * 9  # ignore_eos: exactly max_tokens each
    assert row["client_cpu_ms_per_token"] > 0
    row = asyncio.run(run_level(api_server.url, 1, 3, 24, "First Citizen: hear me"))
    assert row["requests"] == 3 and row["tokens"] == 3 * 24
    assert 0 < row["ttft_p50_ms"] <= row["latency_p50_ms"]
    assert row["tok_per_s"] > 0 and row["client_cpu_ms_per_token"] > 0
    # the tiny model makes 24 tokens in ~8 ms, so under load they may all arrive in one chunk:
    # then there is no decode interval (NaN); when there is one, it is a rate
    assert math.isnan(row["decode_tok_s"]) or row["decode_tok_s"] > 0


def test_decode_rate_hand_computed():
    assert decode_rate(65, 0.020, 0.220) == 64 / 0.200
    assert math.isnan(decode_rate(1, 0.02, 0.02))  # one token: no interval
    assert math.isnan(decode_rate(24, 0.02, 0.02))  # everything in the first chunk
    assert math.isnan(decode_rate(24, 0.02, None))


def test_cli_prints_a_row_per_level(api_server):
    out = subprocess.run([sys.executable, "-m", "turbolm.serve.bench_client", api_server.url, "--concurrency",
                          "1,2", "--requests", "2", "--max_tokens", "4"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    rows = [ln.split() for ln in out.stdout.splitlines()[1:] if ln.strip()]
    assert [r[0] for r in rows] == ["1", "2"] and all(r[1] == "2" for r in rows)


def test_a_refused_request_raises(api_server):
    import pytest

    with pytest.raises(RuntimeError, match="400"):
        asyncio.run(run_level(api_server.url, 1, 1, -5, "x"))  # max_tokens < 1: the server's 400
