"""POST /v1/chat/interactive (server-side multi-round sessions) and `turbolm serve api_client`
driven through a pseudo-terminal."""
import json
import threading
import time

import httpx
import pexpect

from e2e_servers import turbolm_cmd, wait_idle


def _post(url, **body):
    return httpx.post(url + "/v1/chat/interactive", json=body, timeout=120)


def test_rounds_keep_history_and_end_frees_it(api_server):
    url, sid = api_server.url, 77
    r1 = _post(url, prompt="First Citizen:", session_id=sid, interactive_mode=True, request_output_len=10,
               temperature=0.0, ignore_eos=True).json()
    assert r1["tokens"] == 10 and r1["finish_reason"] == "length" and r1["session_id"] == sid
    prompt_len = len(httpx.post(url + "/v1/encode", json={"input": "First Citizen:"}).json()["input_ids"])
    assert r1["history_tokens"] == prompt_len + 10
    stats = httpx.get(url + "/v1/stats").json()
    assert stats["interactive_sessions"] >= 1 and stats["free_blocks"] < stats["num_blocks"]
    r2 = _post(url, prompt="Second:", session_id=sid, interactive_mode=True, request_output_len=6,
               ignore_eos=True).json()
    assert r2["history_tokens"] > r1["history_tokens"] + 6
    # streamed round: newline-delimited JSON, the last item carries the finish reason
    with httpx.stream("POST", url + "/v1/chat/interactive", json=dict(
            prompt="Third:", session_id=sid, interactive_mode=True, stream=True, request_output_len=5,
            ignore_eos=True)) as r:
        items = [json.loads(line) for line in r.iter_lines() if line.strip()]
    assert items[-1]["finish_reason"] == "length" and items[-1]["tokens"] == 5
    ended = _post(url, prompt="", session_id=sid, interactive_mode=False, request_output_len=0).json()
    assert ended["finish_reason"] == "end"
    wait_idle(url)


def test_first_round_equals_a_one_shot_completion(api_server):
    kw = dict(temperature=0.0, ignore_eos=True)
    r = _post(api_server.url, prompt="Before we proceed", session_id=78, interactive_mode=False,
              request_output_len=12, **kw).json()
    c = httpx.post(api_server.url + "/v1/completions", json=dict(prompt="Before we proceed", max_tokens=12, **kw))
    assert r["text"] == c.json()["choices"][0]["text"]
    wait_idle(api_server.url)  # interactive_mode=False: the session is gone afterwards


def test_stop_cancels_a_running_round(api_server):
    url, sid, result = api_server.url, 79, {}

    def long_round():
        result["r"] = _post(url, prompt="go", session_id=sid, interactive_mode=True, request_output_len=900,
                            ignore_eos=True).json()

    t = threading.Thread(target=long_round)
    t.start()
    deadline = time.time() + 30
    while time.time() < deadline and httpx.get(url + "/v1/stats").json()["requests_running"] == 0:
        time.sleep(0.02)
    busy = _post(url, prompt="meanwhile", session_id=sid, interactive_mode=True)
    assert busy.status_code == 409 and busy.json()["error"]["code"] == "session_busy"
    assert _post(url, session_id=sid, stop=True).json()["finish_reason"] == "cancelled"
    t.join(60)
    assert result["r"]["tokens"] < 900 and result["r"]["finish_reason"] == "cancelled"
    _post(url, prompt="", session_id=sid, interactive_mode=False, request_output_len=0)
    wait_idle(url)


def test_round_past_the_session_length_is_refused(api_server):
    url = api_server.url
    before = httpx.get(url + "/v1/stats").json()["interactive_sessions"]
    r = _post(url, prompt="word " * 3000, session_id=80, interactive_mode=True)
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    # a refused round leaves no session behind
    assert httpx.get(url + "/v1/stats").json()["interactive_sessions"] == before


def test_malformed_messages_are_a_400(api_server):
    r = _post(api_server.url, prompt=[{"role": "wizard", "content": "hi"}], session_id=81, interactive_mode=True)
    assert r.status_code == 400, r.text
    r = _post(api_server.url, prompt=[], session_id=81, interactive_mode=True)
    assert r.status_code == 400, r.text


def test_api_client_terminal_chat(api_server):
    child = pexpect.spawn(turbolm_cmd("serve", "api_client", api_server.url, "--session_id", "81")[0],
                          turbolm_cmd("serve", "api_client", api_server.url, "--session_id", "81")[1:],
                          encoding="utf-8", timeout=120)
    try:
        child.expect(r"user >>> ")
        child.sendline("hello there")
        child.expect(r"assistant: ")
        child.expect(r"user >>> ")
        stats = httpx.get(api_server.url + "/v1/stats").json()
        assert stats["interactive_sessions"] >= 1
        child.sendline("end")
        child.expect(r"session ended")
        child.expect(r"user >>> ")
        child.sendline("again")
        child.expect(r"user >>> ")
        child.sendline("exit")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0
    wait_idle(api_server.url)
