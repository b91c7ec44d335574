"""Logprobs (and seeded sampling) over HTTP as clients read them, against HF transformers on the same weights: chat
`top_logprobs`, legacy completions `logprobs` (tokens, token_logprobs, top_logprobs, text_offset),
and prompt scoring with `echo` + `max_tokens=0` -- the request lm-evaluation-harness makes."""
import json

import httpx
import pytest
import torch

from e2e_servers import Server, convert
from tests.python.engine_oracle import hf_logprobs, text_prompts

ATOL = 2e-3  # nats, fp16 KV cache against HF's fp32 one


@pytest.fixture(scope="module")
def soft(tiny_model, tmp_path_factory):
    """A server on the tiny `soft` model (logits of a few units, so logprobs are informative)."""
    hf_dir = tiny_model("soft")
    ws = convert("base", hf_dir, str(tmp_path_factory.mktemp("ws") / "soft"))
    srv = Server(["serve", "api_server", ws, "--instance_num", "8"], str(tmp_path_factory.mktemp("logs") / "lp.log"))
    yield hf_dir, srv
    srv.close()


@pytest.fixture(scope="module")
def client(soft):
    import openai

    return openai.OpenAI(base_url=soft[1].url + "/v1", api_key="x", max_retries=0, timeout=120)


def tok(soft):
    from turbolm.tokenizer import Tokenizer

    return Tokenizer(soft[0])


def test_completions_echo_scores_the_prompt_like_hf(soft, client):
    hf_dir, _ = soft
    prompt = text_prompts(hf_dir)[1]
    r = client.completions.create(model="base", prompt=prompt, max_tokens=0, echo=True, logprobs=3, temperature=0)
    lp = r.choices[0].logprobs
    assert r.usage.completion_tokens == 0 and r.choices[0].finish_reason == "length"
    t = tok(soft)
    assert lp.tokens == [t.token_text(i) for i in prompt]
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    ref = hf_logprobs(hf_dir, prompt)
    ref_tok = ref[:-1].gather(1, torch.tensor(prompt[1:]).unsqueeze(1)).squeeze(1)
    got = torch.tensor(lp.token_logprobs[1:], dtype=torch.float64)
    assert float((got - ref_tok).abs().max()) < ATOL
    # the summed loglikelihood within 1e-3 per token
    assert abs(float(got.sum() - ref_tok.sum())) < 1e-3 * len(got)
    for j in range(1, len(prompt)):
        top = lp.top_logprobs[j]
        # the 3 alternatives plus the prompt token itself, as vLLM reports them
        assert 3 <= len(top) <= 4 and t.token_text(prompt[j]) in top
        best_val = float(ref[j - 1].max())
        assert abs(max(top.values()) - best_val) < ATOL
    # text_offset: where each token's text starts in the echoed text
    assert lp.text_offset == [sum(len(x) for x in lp.tokens[:k]) for k in range(len(lp.tokens))]


def test_completions_echo_with_generation_and_streaming(soft, client):
    hf_dir, srv = soft
    prompt = text_prompts(hf_dir)[0]
    kw = dict(model="base", prompt=prompt, max_tokens=4, echo=True, logprobs=2, temperature=0)
    r = client.completions.create(**kw)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(prompt) + 4 and len(lp.token_logprobs) == len(prompt) + 4
    ref = hf_logprobs(hf_dir, prompt + [0])  # positions of the prompt only
    assert abs(lp.token_logprobs[1] - float(ref[0, prompt[1]])) < ATOL
    assert all(isinstance(x, float) for x in lp.token_logprobs[1:])
    # the same through SSE: the first chunk echoes the prompt with its logprobs
    chunks = [c for c in client.completions.create(stream=True, **kw) if c.choices]
    first = chunks[0].choices[0]
    assert first.logprobs.token_logprobs[0] is None and len(first.logprobs.tokens) == len(prompt)
    streamed = [x for c in chunks if c.choices[0].logprobs for x in c.choices[0].logprobs.token_logprobs]
    assert streamed[1:] == pytest.approx(lp.token_logprobs[1:], abs=1e-6)


def test_generated_logprobs_and_alternatives_are_raw(soft, client):
    """Sampling at temperature 1.7 with a penalty: the logprobs reported are still the model's raw
    log-softmax, teacher-forced by HF on the tokens we produced."""
    hf_dir, _ = soft
    prompt = text_prompts(hf_dir)[1]
    r = client.completions.create(model="base", prompt=prompt, max_tokens=8, logprobs=5, temperature=1.7,
                                  presence_penalty=1.0, seed=5, extra_body={"ignore_eos": True})
    lp = r.choices[0].logprobs
    t = tok(soft)
    ids = t.encode(r.choices[0].text, add_bos=False)
    ref = hf_logprobs(hf_dir, prompt + ids)[len(prompt) - 1:-1]
    if [t.token_text(i) for i in ids] == lp.tokens:  # re-encoding gave back the same ids
        for k, i in enumerate(ids):
            assert abs(lp.token_logprobs[k] - float(ref[k, i])) < ATOL
    for k, top in enumerate(lp.top_logprobs):
        assert 5 <= len(top) <= 6 and lp.tokens[k] in top
        assert max(top.values()) >= lp.token_logprobs[k]


def test_chat_top_logprobs_fill_openais_fields(soft, client):
    r = client.chat.completions.create(model="base", messages=[{"role": "user", "content": "hello there"}],
                                       max_tokens=6, logprobs=True, top_logprobs=3, temperature=0)
    content = r.choices[0].logprobs.content
    assert len(content) == 6
    for e in content:
        assert e.bytes == list(e.token.encode("utf-8")) or "\ufffd" in e.token
        assert len(e.top_logprobs) == 3
        vals = [a.logprob for a in e.top_logprobs]
        assert vals == sorted(vals, reverse=True)
        assert e.top_logprobs[0].token == e.token and e.top_logprobs[0].logprob == pytest.approx(e.logprob)  # greedy
        assert all(isinstance(a.bytes, list) for a in e.top_logprobs)
    assert "".join(e.token for e in content) == r.choices[0].message.content


@pytest.mark.parametrize("body,param", [
    ({"prompt": "hi", "max_tokens": 0}, None),  # 0 tokens without echo: nothing to return
    ({"prompt": "hi", "logprobs": 21}, "logprobs"),
])
def test_bad_logprob_requests_are_400(soft, body, param):
    r = httpx.post(soft[1].url + "/v1/completions", json=dict(body, model="base"))
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    if param:
        assert err["param"] == param
    else:
        assert "echo" in err["message"]


def test_chat_top_logprobs_need_logprobs(soft):
    r = httpx.post(soft[1].url + "/v1/chat/completions",
                   json={"model": "base", "messages": [{"role": "user", "content": "x"}], "top_logprobs": 2})
    assert r.status_code == 400 and "logprobs" in json.dumps(r.json())


def test_a_seed_gives_the_same_text_alone_and_among_eight(client):
    """Issue 9 item 4 over HTTP: the seeded request's text is the same whether it runs alone or
    while 8 other requests (other prompts, seeds and temperatures) share the engine's batch. On
    the `soft` model, whose sampling really varies: another seed gives another text."""
    from concurrent.futures import ThreadPoolExecutor

    mine = dict(model="base", prompt="First Citizen: we are accounted poor citizens", max_tokens=32, temperature=1.0,
                seed=77, extra_body={"ignore_eos": True})
    alone = client.completions.create(**mine).choices[0].text

    def other(i):
        return client.completions.create(model="base", prompt=f"Second Citizen {i}: " + "words " * (3 * i + 1),
                                                max_tokens=32, temperature=0.5 + 0.1 * i, seed=i,
                                                extra_body={"ignore_eos": True}).choices[0].text

    with ThreadPoolExecutor(9) as pool:
        futures = [pool.submit(other, i) for i in range(4)]
        batched = pool.submit(lambda: client.completions.create(**mine).choices[0].text)
        futures += [pool.submit(other, i) for i in range(4, 8)]
        assert batched.result() == alone
        assert all(f.result() for f in futures)
    assert client.completions.create(**dict(mine, seed=78)).choices[0].text != alone
