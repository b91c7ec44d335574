"""Penalties, logit_bias and ignore_eos through the real server with the `openai` client (issue 9
items 1 and 5): a banned token never appears, penalties change repetitive output, and ignore_eos
is honoured on chat too (the template's end-of-turn token no longer stops it)."""
from __future__ import annotations

import os
from collections import Counter

import pytest

from e2e_servers import Server

GREEDY = dict(temperature=0, max_tokens=40, extra_body={"ignore_eos": True})


@pytest.fixture(scope="module")
def vocab_text(tiny_ws):
    from turbolm.tokenizer import Tokenizer

    tok = Tokenizer(os.path.join(tiny_ws, "triton_models", "tokenizer"))
    texts = [tok.decode([i], skip_special_tokens=False) for i in range(tok.vocab_size)]
    return texts, Counter(texts)


def tokens_of(client, **kw):
    r = client.completions.create(model=None, prompt="First Citizen: we are accounted poor citizens", logprobs=1, **kw)
    return r.choices[0].logprobs.tokens


def test_a_banned_token_never_appears(openai_client, vocab_text):
    texts, counts = vocab_text
    plain = tokens_of(openai_client, **GREEDY)
    common = [t for t, _ in Counter(plain).most_common() if counts[t] == 1]  # a token its text names
    assert common, plain
    banned = texts.index(common[0])
    for temperature in (0, 1.0):
        out = tokens_of(openai_client, **dict(GREEDY, temperature=temperature,
                                               extra_body={"ignore_eos": True, "logit_bias": {str(banned): -100}}))
        assert common[0] not in out and len(out) == 40


def test_penalties_change_repetitive_output(openai_client):
    """The frequency penalty grows with each repeat, so it breaks this model's loops; the tiny
    model's logits span hundreds, which a flat presence penalty of 2 cannot move (presence is
    checked against the reference on a softer model in tests/python/test_engine_penalties.py)."""
    plain = tokens_of(openai_client, **GREEDY)
    top = Counter(plain).most_common(1)[0][1]
    assert top > 2, plain  # the tiny model repeats itself: something to penalize
    out = tokens_of(openai_client, **GREEDY, frequency_penalty=2.0)
    assert out != plain
    assert Counter(out).most_common(1)[0][1] < top, out


def test_ignore_eos_on_chat_outlives_the_end_of_turn(smollm2_ws, tmp_path):
    """SmolLM2's ChatML template ends a turn with <|im_end|> (a stop word and its eos); with
    ignore_eos the answer runs on to max_tokens."""
    import openai

    srv = Server(["serve", "api_server", smollm2_ws], str(tmp_path / "smollm2.log"))
    try:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="none", max_retries=0)
        msgs = [{"role": "user", "content": "Say hello."}]
        short = client.chat.completions.create(model=None, messages=msgs, max_tokens=60, temperature=0)
        assert short.choices[0].finish_reason == "stop" and short.usage.completion_tokens < 60
        ran = client.chat.completions.create(model=None, messages=msgs, max_tokens=60, temperature=0,
                                             extra_body={"ignore_eos": True})
        assert ran.choices[0].finish_reason == "length" and ran.usage.completion_tokens == 60
        assert ran.choices[0].message.content.startswith(short.choices[0].message.content)
    finally:
        srv.close()

