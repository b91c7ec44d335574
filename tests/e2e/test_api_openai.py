"""The API server as OpenAI clients use it: the official `openai` package against the real
`turbolm serve api_server` on the tiny model (its text is noise; counts, protocol and exactness
are what is checked). Plus every kind of bad request: a 4xx in OpenAI's error shape, never a 500."""
import re

import httpx
import openai
import pytest

from e2e_servers import Server

GREEDY = dict(temperature=0.0, extra_body={"ignore_eos": True})


def test_models_health_docs(api_server, openai_client):
    models = openai_client.models.list().data
    assert [m.id for m in models] == ["base"]
    assert httpx.get(api_server.url + "/health").json() == {"status": "ok"}
    docs = httpx.get(api_server.url + "/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


def test_chat_completion(api_server, openai_client):
    r = openai_client.chat.completions.create(model="base", messages=[{"role": "user", "content": "First Citizen:"}],
                                              max_tokens=12, **GREEDY)
    (choice,) = r.choices
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason == "length"
    prompt_ids = httpx.post(api_server.url + "/v1/encode", json={"input": "First Citizen:"}).json()["input_ids"]
    assert r.usage.prompt_tokens == len(prompt_ids)
    assert r.usage.completion_tokens == 12 and r.usage.total_tokens == len(prompt_ids) + 12


def test_chat_stream_equals_non_stream_and_reports_usage(openai_client):
    msgs = [{"role": "system", "content": "be kind"}, {"role": "user", "content": "Speak, speak."}]
    whole = openai_client.chat.completions.create(model="base", messages=msgs, max_tokens=20, **GREEDY)
    stream = openai_client.chat.completions.create(model="base", messages=msgs, max_tokens=20, stream=True,
                                                   stream_options={"include_usage": True}, **GREEDY)
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 20
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens
    assert all(c.usage is None for c in chunks[:-1])


def test_completions_prompt_forms_echo_and_n(api_server, openai_client):
    one = openai_client.completions.create(model="base", prompt="First Citizen:", max_tokens=8, **GREEDY)
    assert len(one.choices) == 1 and one.usage.completion_tokens == 8
    ids = httpx.post(api_server.url + "/v1/encode", json={"input": "First Citizen:"}).json()["input_ids"]
    by_ids = openai_client.completions.create(model="base", prompt=ids, max_tokens=8, **GREEDY)
    assert by_ids.choices[0].text == one.choices[0].text
    echo = openai_client.completions.create(model="base", prompt="First Citizen:", max_tokens=8, echo=True, **GREEDY)
    assert echo.choices[0].text == "First Citizen:" + one.choices[0].text
    many = openai_client.completions.create(model="base", prompt=["To be", "or not"], n=3, max_tokens=5, seed=7,
                                            extra_body={"ignore_eos": True})
    assert sorted(c.index for c in many.choices) == list(range(6))
    assert many.usage.completion_tokens == 30


def test_seed_makes_sampling_repeatable(openai_client):
    kw = dict(model="base", prompt="All:", max_tokens=16, temperature=1.0, extra_body={"ignore_eos": True})
    a = openai_client.completions.create(seed=1234, **kw).choices[0].text
    b = openai_client.completions.create(seed=1234, **kw).choices[0].text
    assert a == b
    n = openai_client.completions.create(seed=1234, n=2, **kw).choices
    assert n[0].text == a  # choice i samples with seed + i


def _plain_window(text: str, size: int = 4):
    """A substring of letters and spaces (no replacement chars) to use as a stop string."""
    for m in re.finditer(r"[A-Za-z][A-Za-z ]{%d,}" % (size - 1), text):
        if m.start() > 0:
            return text[m.start():m.start() + size]
    return None


@pytest.mark.parametrize("stream", [False, True])
def test_multi_token_stop_string_is_cut_from_the_text(openai_client, stream):
    kw = dict(model="base", prompt="First Citizen:\nBefore we proceed", max_tokens=60, temperature=0.0)
    full = openai_client.completions.create(**kw, extra_body={"ignore_eos": True}).choices[0].text
    stop = _plain_window(full)
    assert stop, f"no plain window in {full!r}"
    want = full[:full.index(stop)]
    if stream:
        chunks = list(openai_client.completions.create(**kw, stop=[stop, "\x00never"], stream=True,
                                                       extra_body={"ignore_eos": True}))
        text = "".join(c.choices[0].text for c in chunks if c.choices)
        finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        assert finish == ["stop"]
    else:
        r = openai_client.completions.create(**kw, stop=stop, extra_body={"ignore_eos": True})
        text = r.choices[0].text
        assert r.choices[0].finish_reason == "stop"
        assert r.usage.completion_tokens < 60
    assert text == want


def test_chat_n_choices_stream(openai_client):
    stream = openai_client.chat.completions.create(model="base", messages=[{"role": "user", "content": "hi"}],
                                                   n=3, max_tokens=6, stream=True, temperature=0.9, seed=3,
                                                   stream_options={"include_usage": True},
                                                   extra_body={"ignore_eos": True})
    finish, usage = {}, []
    for c in stream:
        for ch in c.choices:
            if ch.finish_reason:
                finish[ch.index] = ch.finish_reason
        if c.usage:
            usage.append(c.usage)
    assert finish == {0: "length", 1: "length", 2: "length"}
    assert len(usage) == 1 and usage[0].completion_tokens == 18  # include_usage: exactly one usage chunk


def test_logprobs(openai_client):
    r = openai_client.chat.completions.create(model="base", messages=[{"role": "user", "content": "hi"}],
                                              max_tokens=5, logprobs=True, top_logprobs=1, **GREEDY)
    content = r.choices[0].logprobs.content
    assert len(content) == 5 and all(t.logprob <= 0 for t in content)
    c = openai_client.completions.create(model="base", prompt="hi", max_tokens=4, logprobs=1, **GREEDY)
    lp = c.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == 4 and all(x <= 0 for x in lp.token_logprobs)


def test_encode(api_server):
    r = httpx.post(api_server.url + "/v1/encode", json={"input": ["a b", "c"], "add_bos": False}).json()
    assert r["length"] == [len(x) for x in r["input_ids"]] and r["input_ids"][0][0] != 1


LONG = "word " * 3000  # far past the tiny workspace's 1024-token session

BAD = [
    ("/v1/chat/completions", b"{not json", 400),
    ("/v1/chat/completions", b"", 400),
    ("/v1/chat/completions", {"messages": "hi"}, 400),
    ("/v1/chat/completions", {"messages": []}, 400),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "max_tokens": -5}, 400),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "max_tokens": "many"}, 400),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}, 400),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "n": 0}, 400),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "stream": "yes"}, 400),
    ("/v1/chat/completions", {"messages": [{"role": "wizard", "content": "x"}]}, 400),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": LONG}]}, 400),
    ("/v1/chat/completions", {"model": "gpt-9", "messages": [{"role": "user", "content": "x"}]}, 404),
    ("/v1/completions", {"prompt": []}, 400),
    ("/v1/completions", {"prompt": [1, 2, 99999]}, 400),
    ("/v1/completions", {"prompt": LONG}, 400),
    ("/v1/completions", {"prompt": "x", "stop": 5}, 400),
    ("/v1/completions", {"prompt": "x", "session_id": 1 << 50}, 400),
    ("/v1/chat/interactive", {"prompt": "x", "session_id": "s"}, 400),
    ("/v1/encode", {}, 400),
    ("/v1/nothing", {}, 404),
]


@pytest.mark.parametrize("path,body,status", BAD)
def test_bad_requests_get_openai_errors(api_server, path, body, status):
    kw = {"content": body} if isinstance(body, bytes) else {"json": body}
    r = httpx.post(api_server.url + path, headers={"content-type": "application/json"}, timeout=30, **kw)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]


def test_openai_client_raises_typed_errors(openai_client):
    with pytest.raises(openai.NotFoundError):
        openai_client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError) as e:
        openai_client.completions.create(model="base", prompt=LONG, max_tokens=4)
    assert e.value.code == "context_length_exceeded"


def test_server_survived_the_bad_requests(api_server, openai_client):
    assert "Traceback" not in api_server.log()
    assert openai_client.completions.create(model="base", prompt="ok", max_tokens=2).usage.completion_tokens >= 1


def test_api_keys(tiny_ws, tmp_path):
    srv = Server(["serve", "api_server", tiny_ws, "--api-keys", "k1,k2", "--served-model-name", "tiny"],
                 str(tmp_path / "keys.log"))
    try:
        body = {"model": "tiny", "prompt": "x", "max_tokens": 2}
        assert httpx.post(srv.url + "/v1/completions", json=body).status_code == 401
        bad = httpx.post(srv.url + "/v1/completions", json=body, headers={"Authorization": "Bearer nope"})
        assert bad.status_code == 401 and bad.json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(srv.url + "/health").status_code == 200
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="k2", max_retries=0)
        assert [m.id for m in client.models.list().data] == ["tiny"]
        assert client.completions.create(**body).usage.completion_tokens >= 1
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=srv.url + "/v1", api_key="k3", max_retries=0).models.list()
    finally:
        srv.close()
