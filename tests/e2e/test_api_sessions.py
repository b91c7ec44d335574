"""Sessions belong to their owner (issue 8 §2), against the real server on the tiny model:
handed-out ids are unguessable, distinct under concurrency and reserved at once; two rounds on
one session never both run (409, streaming or not, and the first round's state is intact); idle
sessions expire and free their blocks; a session made with one API key does not exist for
another; api_client and the Gradio backend start sessions of their own."""
from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from e2e_servers import Server

SERVER_IDS = (1 << 40, 1 << 62)


def _post(url, key=None, **body):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(url + "/v1/chat/interactive", json=body, headers=headers, timeout=120)


def _end(url, sid, key=None):
    return _post(url, key, prompt="", session_id=sid, interactive_mode=False, request_output_len=0)


def test_concurrent_new_sessions_get_distinct_unguessable_ids(api_server):
    async def main():
        async with httpx.AsyncClient(base_url=api_server.url, timeout=120) as http:
            rs = await asyncio.gather(*[http.post("/v1/chat/interactive", json=dict(
                prompt=f"hello {i}", session_id=-1, interactive_mode=True, request_output_len=4, top_k=1))
                for i in range(12)])
            return rs

    rs = asyncio.run(main())
    assert [r.status_code for r in rs] == [200] * 12, [r.text for r in rs if r.status_code != 200]
    ids = [r.json()["session_id"] for r in rs]
    assert len(set(ids)) == 12
    assert all(SERVER_IDS[0] <= i < SERVER_IDS[1] for i in ids)
    # random, not a counter: no two consecutive ids
    srt = sorted(ids)
    assert all(b - a > 1 for a, b in zip(srt, srt[1:]))
    for i, r in zip(ids, rs):  # each continues its own history
        assert r.json()["history_tokens"] > 0
        again = _post(api_server.url, prompt="more", session_id=i, interactive_mode=True, request_output_len=2)
        assert again.status_code == 200 and again.json()["history_tokens"] > r.json()["history_tokens"]
        assert _end(api_server.url, i).status_code == 200


def test_an_id_never_handed_out_is_not_found(api_server):
    r = _post(api_server.url, prompt="hi", session_id=SERVER_IDS[0] + 12345, interactive_mode=True)
    assert r.status_code == 404 and r.json()["error"]["code"] == "session_not_found"


@pytest.mark.parametrize("stream", [False, True])
def test_second_concurrent_round_is_409_and_the_first_is_intact(api_server, stream):
    url = api_server.url
    first = _post(url, prompt="Before we proceed", session_id=-1, interactive_mode=True, request_output_len=3,
                  top_k=1).json()
    sid = first["session_id"]
    # long enough (the tiny model makes ~1000 tokens/s) that the round is surely still running when
    # the second request arrives a few milliseconds after the first streamed line
    body = dict(prompt="any further", session_id=sid, interactive_mode=True, stream=True, request_output_len=900,
                ignore_eos=True, top_k=1)
    with httpx.Client(base_url=url, timeout=120) as http:
        with http.stream("POST", "/v1/chat/interactive", json=body) as long_round:
            assert long_round.status_code == 200
            lines = long_round.iter_lines()
            item = json.loads(next(line for line in lines if line.strip()))  # it runs now
            assert item["finish_reason"] is None
            busy = _post(url, prompt="meanwhile", session_id=sid, interactive_mode=True, stream=stream,
                         request_output_len=5)
            assert busy.status_code == 409, busy.text
            assert busy.json()["error"]["code"] == "session_busy"
            items = [item] + [json.loads(line) for line in lines if line.strip()]
    last = items[-1]
    assert last["tokens"] == 900 and last["finish_reason"] == "length"
    # the refused round left no trace: the history is the first round + the long round exactly
    n_prompt = httpx.post(url + "/v1/encode", json={"input": "any further", "add_bos": False}).json()["length"]
    assert last["history_tokens"] == first["history_tokens"] + n_prompt + 900
    nxt = _post(url, prompt="x", session_id=sid, interactive_mode=True, request_output_len=1, top_k=1).json()
    assert nxt["history_tokens"] > last["history_tokens"]
    assert _end(url, sid).status_code == 200


def test_sessions_belong_to_their_api_key(tiny_ws, tmp_path):
    srv = Server(["serve", "api_server", tiny_ws, "--api_keys", "alice,bob"], str(tmp_path / "keys.log"))
    try:
        r = _post(srv.url, "alice", prompt="secret", session_id=-1, interactive_mode=True, request_output_len=3)
        assert r.status_code == 200
        sid = r.json()["session_id"]
        for body in (dict(prompt="what did alice say?", interactive_mode=True, request_output_len=3),
                     dict(stop=True), dict(prompt="", interactive_mode=False, request_output_len=0)):
            other = _post(srv.url, "bob", session_id=sid, **body)
            assert other.status_code == 404, (body, other.text)
        own = _post(srv.url, "bob", prompt="mine", session_id=7, interactive_mode=True, request_output_len=2)
        assert own.status_code == 200
        assert _post(srv.url, "alice", prompt="x", session_id=7, interactive_mode=True).status_code == 404
        assert _post(srv.url, "alice", prompt="go on", session_id=sid, interactive_mode=True,
                     request_output_len=2).status_code == 200
    finally:
        srv.close()


def test_idle_sessions_expire_and_free_their_blocks(tiny_ws, tmp_path):
    srv = Server(["serve", "api_server", tiny_ws, "--session_ttl", "1"], str(tmp_path / "ttl.log"))
    try:
        stats0 = httpx.get(srv.url + "/v1/stats").json()
        r = _post(srv.url, prompt="remember me", session_id=-1, interactive_mode=True, request_output_len=3)
        sid = r.json()["session_id"]
        stats1 = httpx.get(srv.url + "/v1/stats").json()
        assert stats1["interactive_sessions"] == 1 and stats1["cached_blocks"] > 0
        deadline = time.time() + 20
        while time.time() < deadline and httpx.get(srv.url + "/v1/stats").json()["interactive_sessions"]:
            time.sleep(0.2)
        stats2 = httpx.get(srv.url + "/v1/stats").json()
        assert stats2["interactive_sessions"] == 0
        # the session's blocks are held by nobody again: free, or pooled (findable by the prefix cache)
        assert stats2["free_blocks"] + stats2["pooled_blocks"] == stats0["free_blocks"] + stats0["pooled_blocks"]
        assert stats2["cached_blocks"] == 0
        gone = _post(srv.url, prompt="still there?", session_id=sid, interactive_mode=True)
        assert gone.status_code == 404
    finally:
        srv.close()


def test_api_client_defaults_start_a_fresh_session_each(api_server):
    """Two api_client users with default flags: each gets its own session from the server."""
    import pexpect

    from e2e_servers import turbolm_cmd

    before = httpx.get(api_server.url + "/v1/stats").json()["interactive_sessions"]
    children = []
    for word in ("alpha", "beta"):
        cmd = turbolm_cmd("serve", "api_client", api_server.url)
        child = pexpect.spawn(cmd[0], cmd[1:], encoding="utf-8", timeout=120)
        child.expect("user >>> ")
        child.sendline(word)
        child.expect("user >>> ")
        children.append(child)
    assert httpx.get(api_server.url + "/v1/stats").json()["interactive_sessions"] == before + 2
    for child in children:
        child.sendline("exit")
        child.expect(pexpect.EOF)
    assert httpx.get(api_server.url + "/v1/stats").json()["interactive_sessions"] == before


def test_gradio_local_backend_tabs_get_their_own_sessions(tiny_ws):
    """The Gradio backend hands each tab (session None) a fresh session id of its own."""
    from turbolm.serve.async_engine import AsyncEngine, GenParams
    from turbolm.serve.gradio_app import LocalBackend

    backend = LocalBackend(AsyncEngine.from_path(tiny_ws))

    async def main():
        ids = []
        for _ in range(2):
            async for _, sid in backend.stream(None, "hello", GenParams(max_new_tokens=3, top_k=1)):
                pass
            ids.append(sid)
        await backend.sessions.stop_reaper()
        return ids

    a, b = asyncio.run(main())
    assert a != b and all(SERVER_IDS[0] <= i < SERVER_IDS[1] for i in (a, b))
    assert backend.sessions.step(a) > 0 and backend.sessions.step(b) > 0



def test_clients_recover_from_an_expired_session(tiny_ws, tmp_path):
    """api_client and the Gradio backends start a new session (and say so) when theirs expired."""
    import pexpect

    from e2e_servers import turbolm_cmd
    from turbolm.serve.async_engine import GenParams
    from turbolm.serve.gradio_app import EXPIRED_NOTE, RemoteBackend

    srv = Server(["serve", "api_server", tiny_ws, "--session_ttl", "1"], str(tmp_path / "ttl2.log"))
    try:
        cmd = turbolm_cmd("serve", "api_client", srv.url)
        child = pexpect.spawn(cmd[0], cmd[1:], encoding="utf-8", timeout=120)
        child.expect("user >>> ")
        child.sendline("hello")
        child.expect("user >>> ")
        deadline = time.time() + 20
        while time.time() < deadline and httpx.get(srv.url + "/v1/stats").json()["interactive_sessions"]:
            time.sleep(0.2)
        child.sendline("still there?")
        child.expect("session expired on the server")
        child.expect("user >>> ")
        assert httpx.get(srv.url + "/v1/stats").json()["interactive_sessions"] == 1  # the new one
        child.sendline("exit")
        child.expect(pexpect.EOF)

        async def remote():
            backend = RemoteBackend(srv.url)
            out = [p async for p in backend.stream(SERVER_IDS[0] + 99, "hi", GenParams(max_new_tokens=2, top_k=1))]
            await backend.http.aclose()
            return out

        pieces = asyncio.run(remote())
        assert pieces[0][0] == EXPIRED_NOTE
        assert pieces[-1][1] != SERVER_IDS[0] + 99 and SERVER_IDS[0] <= pieces[-1][1] < SERVER_IDS[1]
    finally:
        srv.close()


def test_gradio_local_backend_recovers_from_an_expired_session(tiny_ws):
    from turbolm.serve.async_engine import AsyncEngine, GenParams
    from turbolm.serve.gradio_app import EXPIRED_NOTE, LocalBackend

    backend = LocalBackend(AsyncEngine.from_path(tiny_ws))

    async def main():
        out = [p async for p in backend.stream(SERVER_IDS[0] + 5, "hello", GenParams(max_new_tokens=3, top_k=1))]
        await backend.sessions.stop_reaper()
        return out

    pieces = asyncio.run(main())
    assert pieces[0][0] == EXPIRED_NOTE
    new = pieces[-1][1]
    assert new != SERVER_IDS[0] + 5 and new in backend.sessions.table and backend.sessions.step(new) > 0


def test_a_refused_first_round_leaves_no_session(api_server):
    """The id handed out for session_id -1 (or named by the client) is forgotten when its first
    round is refused: no empty session waits for expiry."""
    before = httpx.get(api_server.url + "/v1/stats").json()["interactive_sessions"]
    for sid in (-1, 4242):
        r = _post(api_server.url, prompt="word " * 3000, session_id=sid, interactive_mode=True)
        assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    assert httpx.get(api_server.url + "/v1/stats").json()["interactive_sessions"] == before
