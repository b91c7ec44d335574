"""Many clients at once, and clients that leave: all requests share the engine's one persistent
batch; a client that disconnects cancels its request and frees its KV blocks (GET /v1/stats)."""
import asyncio
import json

import httpx
import openai

from e2e_servers import wait_idle


def test_32_concurrent_streaming_clients_all_complete(api_server):
    n_clients, max_tokens = 32, 24
    client = openai.AsyncOpenAI(base_url=api_server.url + "/v1", api_key="x", max_retries=0, timeout=300)

    async def one(i):
        stream = await client.chat.completions.create(
            model="base", messages=[{"role": "user", "content": f"client {i}: tell me a story"}],
            max_tokens=max_tokens, stream=True, temperature=0.7, seed=i,
            stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
        text, usage, finish = [], None, None
        async for c in stream:
            for ch in c.choices:
                text.append(ch.delta.content or "")
                finish = ch.finish_reason or finish
            usage = c.usage or usage
        return "".join(text), usage, finish

    async def run_all():
        try:
            return await asyncio.gather(*[one(i) for i in range(n_clients)])
        finally:
            await client.close()

    results = asyncio.run(run_all())
    assert len(results) == n_clients
    for text, usage, finish in results:
        assert finish == "length"
        assert usage.completion_tokens == max_tokens
    wait_idle(api_server.url)


def _tokens_generated(url):
    return httpx.get(url + "/v1/stats").json()["tokens_generated"]


def test_streaming_client_disconnect_cancels_and_frees_blocks(api_server):
    before = _tokens_generated(api_server.url)
    body = {"prompt": "First Citizen:", "max_tokens": 900, "stream": True, "ignore_eos": True}
    with httpx.stream("POST", api_server.url + "/v1/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        got = 0
        for line in r.iter_lines():
            if line.startswith("data: {"):
                got += 1
                if got == 5:
                    break  # leave mid-stream: the connection is closed with the response
    stats = wait_idle(api_server.url)
    assert stats["tokens_generated"] - before < 900, "the abandoned request ran to the end"
    assert httpx.get(api_server.url + "/health").status_code == 200
    r = httpx.post(api_server.url + "/v1/completions", json={"prompt": "again", "max_tokens": 3})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] >= 1


def test_non_streaming_client_disconnect_cancels(api_server):
    # 16 choices of 1000 tokens: several seconds on the tiny model (one alone takes ~0.3 s, too
    # close to the client's timeout to tell a cancel from a finish)
    before = _tokens_generated(api_server.url)
    body = {"prompt": "First Citizen:", "max_tokens": 1000, "ignore_eos": True, "n": 16}
    try:
        httpx.post(api_server.url + "/v1/completions", json=body, timeout=0.2)
    except httpx.TimeoutException:
        pass
    stats = wait_idle(api_server.url)  # the server hears the disconnect at once (ASGI http.disconnect)
    assert stats["tokens_generated"] - before < 16 * 1000, "the abandoned request ran to the end"


def test_stats_endpoint_documents_the_pool(api_server):
    stats = httpx.get(api_server.url + "/v1/stats").json()
    for key in ("num_blocks", "free_blocks", "cached_blocks", "running", "waiting", "requests_running",
                "interactive_sessions", "session_len"):
        assert key in stats, key
    json.dumps(stats)
