"""The API server is safe to expose on a network, and every bad input gets a 4xx in OpenAI's error
shape, never a 500 (issue 8, §3 and §4).

A real `turbolm serve api_server` on the tiny workspace (its own, with a 128-token session so every
generation is short) is called over HTTP by httpx and by schemathesis, which generates requests
from the server's own /openapi.json and checks that none gets a 5xx. The CORS-open server and the
small body limit are apps built in-process with `create_app` around a real AsyncEngine."""
import asyncio
import json
import re
import subprocess
import sys
import threading
import time

import httpx
import pytest

from e2e_servers import Server
from turbolm.serve import protocol as P

SESSION_LEN = 128
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
INTERACTIVE = "/v1/chat/interactive"
ENCODE = "/v1/encode"
POSTS = [CHAT, COMPLETIONS, INTERACTIVE, ENCODE]
MSG = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def server(tiny_ws, tmp_path_factory):
    srv = Server(["serve", "api_server", tiny_ws, "--session_len", str(SESSION_LEN)],
                 str(tmp_path_factory.mktemp("logs") / "robust_server.log"))
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def engine(tiny_ws):
    from turbolm.serve.async_engine import AsyncEngine

    return AsyncEngine.from_path(tiny_ws, instance_num=4, session_len=SESSION_LEN)


def post(url, body, timeout=60):
    """POST JSON as a client writes it: json.dumps escapes non-ASCII, so a lone surrogate goes out
    as the six characters \\ud800 (httpx's own json= would fail to encode it)."""
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(url, content=content, headers={"content-type": "application/json"}, timeout=timeout)


def assert_openai_error(r, status=None, param=None):
    """A 4xx whose body is OpenAI's error shape; returns the error object."""
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    if status is not None:
        assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert isinstance(err["message"], str) and err["message"]
    assert err["type"] == "invalid_request_error", err
    if param is not None:
        assert err["param"] == param, err
    return err


# ---------------------------------------------------------------------------------------------
# §4: every bad input -> 4xx in OpenAI's shape

S = "\ud800"  # a lone surrogate: valid JSON ("\\ud800"), not valid Unicode
BIG = 99999999999999

# (path, body, the param the error names)
BAD_VALUES = [
    # a positive double that is 0 as float32
    (CHAT, {"messages": MSG, "repetition_penalty": 5e-324}, "repetition_penalty"),
    (COMPLETIONS, {"prompt": "x", "repetition_penalty": 5e-324}, "repetition_penalty"),
    (INTERACTIVE, {"prompt": "x", "repetition_penalty": 5e-324}, "repetition_penalty"),
    (COMPLETIONS, {"prompt": "x", "repetition_penalty": 1e39}, "repetition_penalty"),  # inf as float32
    # past the C++ int
    (CHAT, {"messages": MSG, "top_k": BIG}, "top_k"),
    (COMPLETIONS, {"prompt": "x", "top_k": BIG}, "top_k"),
    (INTERACTIVE, {"prompt": "x", "top_k": BIG}, "top_k"),
    (CHAT, {"messages": MSG, "max_tokens": 1 << 31}, "max_tokens"),
    (CHAT, {"messages": MSG, "max_completion_tokens": 1 << 31}, "max_completion_tokens"),
    (COMPLETIONS, {"prompt": "x", "max_tokens": BIG}, "max_tokens"),
    (INTERACTIVE, {"prompt": "x", "request_output_len": 1 << 31}, "request_output_len"),
    # seeds are uint64
    (CHAT, {"messages": MSG, "seed": -1}, "seed"),
    (COMPLETIONS, {"prompt": "x", "seed": 1 << 64}, "seed"),
    (INTERACTIVE, {"prompt": "x", "seed": -5}, "seed"),
    # session ids: -1 or a client's id below 2**40
    (CHAT, {"messages": MSG, "session_id": (1 << 63) + 1}, "session_id"),
    (COMPLETIONS, {"prompt": "x", "session_id": 1 << 40}, "session_id"),
    (INTERACTIVE, {"prompt": "x", "session_id": 1 << 64}, "session_id"),
    (INTERACTIVE, {"prompt": "x", "session_id": (1 << 63) - 1}, "session_id"),  # past the ids the server hands out
    (INTERACTIVE, {"prompt": "x", "session_id": -2}, "session_id"),
    # a lone surrogate in any text field
    (CHAT, {"messages": [{"role": "user", "content": "a" + S}]}, "messages.0.content"),
    (CHAT, {"messages": [{"role": "user", "content": [{"type": "text", "text": S}]}]}, "messages.0.content.0.text"),
    (CHAT, {"messages": [{"role": "user", "content": "x", "name": S}]}, "messages.0.name"),
    (CHAT, {"messages": MSG, "stop": ["ok", S]}, "stop"),
    (CHAT, {"messages": MSG, "user": S}, "user"),
    (CHAT, {"messages": MSG, "model": S}, "model"),
    (COMPLETIONS, {"prompt": S}, "prompt"),
    (COMPLETIONS, {"prompt": ["fine", "x" + S]}, "prompt"),
    (COMPLETIONS, {"prompt": "x", "stop": S}, "stop"),
    (COMPLETIONS, {"prompt": "x", "suffix": S}, "suffix"),
    (COMPLETIONS, {"prompt": "x", "user": S}, "user"),
    (INTERACTIVE, {"prompt": S}, "prompt"),
    (INTERACTIVE, {"prompt": [{"role": "user", "content": S}]}, "prompt.0.content"),
    (INTERACTIVE, {"prompt": "x", "stop_words": [S]}, "stop_words"),
    (ENCODE, {"input": S}, "input"),
    (ENCODE, {"input": ["a", "b" + S]}, "input"),
]


@pytest.mark.parametrize("path,body,param", BAD_VALUES)
def test_bad_value_is_a_400_naming_the_field(server, path, body, param):
    err = assert_openai_error(post(server.url + path, body), 400, param)
    assert param.split(".")[0] in err["message"]


SURROGATE_PAIR = "\U0001F600"  # json.dumps writes it as the pair "\ud83d\ude00": fine


@pytest.mark.parametrize("path,body", [
    (COMPLETIONS, {"prompt": "smile " + SURROGATE_PAIR, "max_tokens": 2}),
    (CHAT, {"messages": [{"role": "user", "content": SURROGATE_PAIR}], "max_tokens": 2}),
    (ENCODE, {"input": [SURROGATE_PAIR]}),
    (INTERACTIVE, {"prompt": SURROGATE_PAIR, "request_output_len": 2}),
])
def test_a_surrogate_pair_is_valid_text(server, path, body):
    assert '\\ud83d\\ude00' in json.dumps(body)
    r = post(server.url + path, body)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("raw,param", [
    (b'{"prompt": "x", "temperature": NaN}', "temperature"),
    (b'{"prompt": "x", "top_p": NaN}', "top_p"),
    (b'{"prompt": "x", "repetition_penalty": Infinity}', "repetition_penalty"),
    (b'{"prompt": "x", "presence_penalty": -Infinity}', "presence_penalty"),
    (b'{"prompt": "x\xed\xa0\x80"}', "prompt"),  # a surrogate in raw bytes (CESU / "WTF-8")
    (b'{"prompt": "x\xff"}', None),  # not UTF-8 at all
])
def test_non_finite_numbers_and_bad_bytes_are_400(server, raw, param):
    assert_openai_error(post(server.url + COMPLETIONS, raw), 400, param)


def test_a_tiny_temperature_is_greedy_not_nan(server):
    """1e-40 is a float32 denormal: 1/t overflows and every logit becomes inf or nan. It is read as
    0 (greedy), which it is in all but name."""
    body = {"prompt": "First Citizen:", "max_tokens": 12, "ignore_eos": True}
    greedy = post(server.url + COMPLETIONS, dict(body, temperature=0.0)).json()["choices"][0]["text"]
    tiny = post(server.url + COMPLETIONS, dict(body, temperature=1e-40)).json()["choices"][0]["text"]
    assert tiny == greedy


def test_huge_but_valid_lengths_are_clamped(server):
    r = post(server.url + COMPLETIONS, {"prompt": "x", "max_tokens": P.INT32_MAX, "top_k": P.INT32_MAX,
                                        "seed": P.UINT64_MAX, "n": 2})
    assert r.status_code == 200, r.text
    r = post(server.url + INTERACTIVE, {"prompt": "x", "request_output_len": P.INT32_MAX, "seed": P.UINT64_MAX,
                                        "session_id": P.MAX_SESSION_ID})
    assert r.status_code == 200, r.text
    assert r.json()["session_id"] == P.MAX_SESSION_ID


# ---------------------------------------------------------------------------------------------
# §3: caps, named in the 400


def _over(n):
    return ["s"] * (n + 1)


CAPS = [
    (CHAT, {"messages": MSG, "n": P.MAX_N + 1}, "n", str(P.MAX_N)),
    (COMPLETIONS, {"prompt": "x", "n": P.MAX_N + 1}, "n", str(P.MAX_N)),
    (COMPLETIONS, {"prompt": _over(P.MAX_PROMPTS)}, "prompt", "MAX_PROMPTS"),
    (COMPLETIONS, {"prompt": [[1, 2]] * (P.MAX_PROMPTS + 1)}, "prompt", "MAX_PROMPTS"),
    (ENCODE, {"input": _over(P.MAX_ENCODE_INPUTS)}, "input", "MAX_ENCODE_INPUTS"),
    (CHAT, {"messages": MSG, "stop": _over(P.MAX_STOP)}, "stop", "MAX_STOP"),
    (COMPLETIONS, {"prompt": "x", "stop": _over(P.MAX_STOP)}, "stop", "MAX_STOP"),
    (INTERACTIVE, {"prompt": "x", "stop_words": _over(P.MAX_STOP)}, "stop_words", "MAX_STOP"),
    (CHAT, {"messages": MSG * (P.MAX_MESSAGES + 1)}, "messages", "MAX_MESSAGES"),
    (INTERACTIVE, {"prompt": MSG * (P.MAX_MESSAGES + 1)}, "prompt", "MAX_MESSAGES"),
]


@pytest.mark.parametrize("path,body,param,cap", CAPS)
def test_over_a_cap_is_a_400_naming_the_cap(server, path, body, param, cap):
    err = assert_openai_error(post(server.url + path, body), 400, param)
    assert cap in err["message"], err


def test_at_the_caps_is_fine(server):
    r = post(server.url + ENCODE, {"input": ["s"] * P.MAX_ENCODE_INPUTS})
    assert r.status_code == 200 and len(r.json()["input_ids"]) == P.MAX_ENCODE_INPUTS
    r = post(server.url + COMPLETIONS, {"prompt": ["s"] * P.MAX_PROMPTS, "max_tokens": 1, "stop": ["z"] * P.MAX_STOP})
    assert r.status_code == 200 and len(r.json()["choices"]) == P.MAX_PROMPTS
    r = post(server.url + COMPLETIONS, {"prompt": [1] * 100, "max_tokens": 1})  # token ids of one prompt
    assert r.status_code == 200, r.text


# ---------------------------------------------------------------------------------------------
# §3: bodies must be JSON (415)


@pytest.mark.parametrize("path", POSTS)
@pytest.mark.parametrize("kind", ["text/plain", "form", "multipart", "no content-type"])
def test_a_body_that_is_not_json_is_a_415(server, path, kind):
    body = json.dumps({"prompt": "x", "messages": MSG, "input": "x"})
    if kind == "form":
        r = httpx.post(server.url + path, data={"prompt": "x"})
    elif kind == "multipart":
        r = httpx.post(server.url + path, files={"prompt": ("p.json", body, "application/json")})
    elif kind == "text/plain":  # what a page's fetch(url, {method: "POST", body: "{...}"}) sends
        r = httpx.post(server.url + path, content=body, headers={"content-type": "text/plain;charset=UTF-8"})
    else:
        req = httpx.Request("POST", server.url + path, content=body.encode())
        req.headers.pop("content-type", None)
        with httpx.Client() as c:
            r = c.send(req)
    err = assert_openai_error(r, 415)
    assert err["code"] == "unsupported_media_type" and "application/json" in err["message"]


def test_json_with_a_charset_is_fine(server):
    r = httpx.post(server.url + COMPLETIONS, content=json.dumps({"prompt": "x", "max_tokens": 1}),
                   headers={"content-type": "application/json; charset=utf-8"})
    assert r.status_code == 200, r.text


def test_an_empty_text_post_is_refused_too(server):
    r = httpx.post(server.url + INTERACTIVE, content=b"", headers={"content-type": "text/plain"})
    assert_openai_error(r, 415)


# ---------------------------------------------------------------------------------------------
# §3: body limit (413 at once; the server keeps answering)


class HealthPoller:
    """GET /health every 50 ms in a thread; records each answer's status and latency."""

    def __init__(self, url):
        self.url, self.results, self._stop = url, [], threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        with httpx.Client(timeout=30) as c:
            while not self._stop.is_set():
                t = time.monotonic()
                status = c.get(self.url + "/health").status_code
                self.results.append((status, time.monotonic() - t))
                time.sleep(0.05)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=60)


THIRTY_MB = 30 << 20


def _huge_body():
    return json.dumps({"prompt": "word " * (THIRTY_MB // 5), "max_tokens": 1}).encode()


def test_a_30mb_body_is_a_413_at_once(server):
    body = _huge_body()
    with HealthPoller(server.url) as health:
        time.sleep(0.2)
        t = time.monotonic()
        r = post(server.url + COMPLETIONS, body)
        took = time.monotonic() - t
        time.sleep(0.3)
    err = assert_openai_error(r, 413)
    assert err["code"] == "request_too_large" and str(4 << 20) in err["message"]
    assert took < 10, took
    assert health.results and all(s == 200 for s, _ in health.results)
    assert max(lat for _, lat in health.results) < 2.0, health.results


def test_a_30mb_chunked_body_is_cut_off_at_the_limit(server):
    body = _huge_body()

    def chunks():  # no Content-Length: the server must count, and stop at the limit
        for i in range(0, len(body), 1 << 20):
            yield body[i:i + (1 << 20)]
            time.sleep(0.01)

    with HealthPoller(server.url) as health:
        t = time.monotonic()
        r = httpx.post(server.url + COMPLETIONS, content=chunks(), headers={"content-type": "application/json"},
                       timeout=60)
        took = time.monotonic() - t
    assert r.request.headers.get("transfer-encoding") == "chunked"
    assert_openai_error(r, 413)
    assert took < 10, took
    assert health.results and all(s == 200 and lat < 2.0 for s, lat in health.results), health.results
    assert post(server.url + COMPLETIONS, {"prompt": "still here", "max_tokens": 2}).status_code == 200


@pytest.mark.parametrize("path,body", [
    (COMPLETIONS, {"prompt": "word " * 800_000, "max_tokens": 1}),
    (CHAT, {"messages": [{"role": "user", "content": "word " * 800_000}], "max_tokens": 1}),
    (INTERACTIVE, {"prompt": "word " * 800_000, "request_output_len": 1}),
])
def test_health_answers_while_a_prompt_near_the_limit_is_tokenized(server, path, body):
    """4 MB of text under the body limit: seconds of tokenization, off the event loop."""
    raw = json.dumps(body).encode()
    assert len(raw) < 4 << 20
    with HealthPoller(server.url) as health:
        time.sleep(0.1)
        r = post(server.url + path, raw, timeout=120)
        time.sleep(0.1)
    assert_openai_error(r, 400)  # far past the 128-token session
    assert health.results and all(s == 200 and lat < 1.0 for s, lat in health.results), health.results


def test_the_guard_stops_reading_a_streamed_body_at_the_limit():
    """Pure ASGI, no server: the app behind the guard never sees more than the limit, and the
    guard asks for no more chunks once the limit is crossed."""
    from turbolm.serve.guards import RequestGuard

    limit, chunk, total_chunks = 10_000, 1_000, 1_000
    pulled, seen, sent = [0], [0], []

    async def receive():
        pulled[0] += 1
        return {"type": "http.request", "body": b"x" * chunk, "more_body": pulled[0] < total_chunks}

    async def app(scope, receive, send):
        while True:
            m = await receive()
            if m["type"] == "http.disconnect":
                raise OSError("client gone")  # what an app reading a cut-off body may do
            seen[0] += len(m["body"])
            if not m["more_body"]:
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v1/completions",
             "headers": [(b"content-type", b"application/json"), (b"transfer-encoding", b"chunked")]}
    asyncio.run(RequestGuard(app, max_body_bytes=limit)(scope, receive, send))
    assert sent[0]["status"] == 413 and len(sent) == 2
    assert json.loads(sent[1]["body"])["error"]["code"] == "request_too_large"
    assert pulled[0] == limit // chunk + 1 and seen[0] <= limit


# ---------------------------------------------------------------------------------------------
# §3: CORS closed by default, open for configured origins


def test_cors_is_closed_by_default(server):
    pre = httpx.options(server.url + CHAT, headers={"Origin": "http://evil.example",
                                                     "Access-Control-Request-Method": "POST",
                                                     "Access-Control-Request-Headers": "content-type"})
    assert not any(k.lower().startswith("access-control-allow") for k in pre.headers), pre.headers
    r = httpx.post(server.url + COMPLETIONS, json={"prompt": "x", "max_tokens": 1},
                   headers={"Origin": "http://evil.example"})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers


def _app(engine, **kw):
    from starlette.testclient import TestClient

    from turbolm.serve.api_server import create_app

    return TestClient(create_app(engine, **kw), base_url="http://127.0.0.1")


def test_cors_opens_for_the_configured_origins(engine):
    client = _app(engine, allowed_origins=["http://ok.example"])
    ask = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization,content-type"}
    pre = client.options(CHAT, headers={"Origin": "http://ok.example", **ask})
    assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == "http://ok.example"
    assert "POST" in pre.headers["access-control-allow-methods"]
    assert "content-type" in pre.headers["access-control-allow-headers"].lower()
    evil = client.options(CHAT, headers={"Origin": "http://evil.example", **ask})
    assert "access-control-allow-origin" not in evil.headers
    r = client.post(ENCODE, json={"input": "x"}, headers={"Origin": "http://ok.example"})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://ok.example"
    # refusals carry the header too, so the page can read them
    r = client.post(ENCODE, content=b"x", headers={"Origin": "http://ok.example", "content-type": "text/plain"})
    assert r.status_code == 415 and r.headers["access-control-allow-origin"] == "http://ok.example"
    anyone = _app(engine, allowed_origins=["*"])
    r = anyone.get("/v1/models", headers={"Origin": "http://anywhere.example"})
    assert r.headers["access-control-allow-origin"] == "*"


def test_a_configured_body_limit(engine):
    client = _app(engine, max_body_bytes=1000)
    ok = client.post(ENCODE, json={"input": "x" * 900})
    assert ok.status_code == 200, ok.text
    err = assert_openai_error(client.post(ENCODE, json={"input": "x" * 1000}), 413)
    assert "1000 bytes" in err["message"]


def test_openapi_renders_with_the_bounds(engine):
    from turbolm.serve.api_server import create_app

    spec = create_app(engine).openapi()
    schemas = spec["components"]["schemas"]
    chat = schemas["ChatCompletionRequest"]["properties"]
    assert chat["n"]["maximum"] == P.MAX_N and chat["top_k"]["maximum"] == P.INT32_MAX
    assert chat["messages"]["maxItems"] == P.MAX_MESSAGES
    assert chat["repetition_penalty"]["minimum"] == P.MIN_REPETITION_PENALTY
    assert schemas["EncodeRequest"]["properties"]["input"]["maxItems"] == P.MAX_ENCODE_INPUTS
    assert {"/v1/chat/completions", "/v1/completions", "/v1/chat/interactive", "/v1/encode"} <= set(spec["paths"])


# ---------------------------------------------------------------------------------------------
# schemathesis: requests generated from /openapi.json (valid and invalid), none gets a 5xx


def test_no_generated_request_gets_a_5xx(server, tmp_path):
    """schemathesis' own runner (`st run`), so the check does not lean on its pytest plugin's
    use of pytest internals (which breaks with new pytest releases): valid and invalid requests
    for every operation, 30 each, deterministic, failing on any 5xx."""
    st = [sys.executable, "-c", "import sys; from schemathesis.cli import schemathesis; sys.exit(schemathesis())"]
    out = subprocess.run(st + ["run", server.url + "/openapi.json", "--checks", "not_a_server_error", "--mode", "all",
                               "--max-examples", "30", "--generation-deterministic", "--request-timeout", "30",
                               "--workers", "1", "--no-color"],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path)  # its .schemathesis/ cache
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]
    cases = re.search(r"(\d+) generated, (\d+) passed", out.stdout)  # the runner really sent requests
    assert cases and int(cases.group(1)) >= 100 and cases.group(1) == cases.group(2), out.stdout[-3000:]
    assert re.search(r"Tested: ([7-9]|\d\d)", out.stdout), out.stdout[-3000:]  # every operation


def test_the_server_logged_no_traceback(server):
    assert "Traceback" not in server.log(), server.log()[-5000:]


# -- parameters this server does not implement yet: a clear 400, never accepted and ignored --------
@pytest.mark.parametrize("path,body,param", [
    (CHAT, {"messages": MSG, "functions": [{"name": "f"}]}, "functions"),  # OpenAI's deprecated form of tools
    (CHAT, {"messages": MSG, "function_call": "f"}, "function_call"),
    (CHAT, {"messages": MSG, "top_logprobs": 21, "logprobs": True}, "top_logprobs"),  # OpenAI's limit: 20
    (COMPLETIONS, {"prompt": "x", "suffix": "y"}, "suffix"),
    (COMPLETIONS, {"prompt": "x", "best_of": 2}, "best_of"),
    (COMPLETIONS, {"prompt": "x", "logprobs": 21}, "logprobs"),
])
def test_unsupported_parameters_are_refused(server, path, body, param):
    r = post(server.url + path, dict(body, max_tokens=2))
    assert_openai_error(r, 400, param)
    if "top_logprobs" not in body and "logprobs" not in body:
        assert "not supported" in r.json()["error"]["message"]


@pytest.mark.parametrize("path,body", [
    (CHAT, {"messages": MSG, "response_format": {"type": "text"}, "tool_choice": "none", "tools": [],
            "functions": [], "function_call": "none"}),
    (COMPLETIONS, {"prompt": "x", "suffix": "", "best_of": 1}),
])
def test_neutral_values_of_unsupported_parameters_are_accepted(server, path, body):
    r = post(server.url + path, dict(body, max_tokens=2))
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("path,body,param", [
    (CHAT, {"messages": MSG, "presence_penalty": 2.5}, "presence_penalty"),
    (CHAT, {"messages": MSG, "frequency_penalty": -3}, "frequency_penalty"),
    (CHAT, {"messages": MSG, "logit_bias": {"x": 1}}, "logit_bias"),
    (CHAT, {"messages": MSG, "logit_bias": {"5": 101}}, "logit_bias"),
    (CHAT, {"messages": MSG, "logit_bias": {"99999999": -100}}, "logit_bias"),  # beyond the vocabulary
    (COMPLETIONS, {"prompt": "x", "logit_bias": {str(i): 1 for i in range(301)}}, "logit_bias"),
])
def test_bad_penalties_and_logit_bias_are_400(server, path, body, param):
    assert_openai_error(post(server.url + path, dict(body, max_tokens=2)), 400, param)


def test_openapi_declares_the_error_answers(server):
    spec = httpx.get(server.url + "/openapi.json").json()
    for path, codes in {"/v1/chat/completions": {"400", "401", "404", "409", "413", "415"},
                        "/v1/completions": {"400", "401", "404", "409", "413", "415"},
                        "/v1/chat/interactive": {"400", "401", "404", "409", "413", "415"},
                        "/v1/encode": {"400", "401", "413", "415"}}.items():
        declared = spec["paths"][path]["post"]["responses"]
        assert codes <= set(declared), (path, sorted(declared))
        ref = declared["400"]["content"]["application/json"]["schema"]["$ref"]
        assert ref.endswith("/ErrorResponse")
        assert "422" not in declared  # validation errors are answered 400, as OpenAI does
    assert set(spec["components"]["schemas"]["ErrorResponse"]["properties"]) == {"error"}
