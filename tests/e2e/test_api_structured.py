"""Structured output through the real server on SmolLM2 with the `openai` client (issue 9 item 6):
response_format json_object / json_schema and vLLM's guided_regex / guided_choice / guided_json
constrain decoding (llguidance masks applied in the engine's sampler); every output is parsed with
json.loads and validated with jsonschema, at temperature 0 and 1.0, streamed and not; bad grammars
are a 400 naming the parameter; a constrained request does not disturb the others in its batch."""
import json
import re
from concurrent.futures import ThreadPoolExecutor

import httpx
import jsonschema
import pytest

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 40},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "city": {"type": "string", "enum": ["Paris", "London", "Berlin", "Madrid"]},
        "hobbies": {"type": "array", "items": {"type": "string", "maxLength": 30}, "maxItems": 3},
    },
    "required": ["name", "age", "city", "hobbies"],
    "additionalProperties": False,
}
ASK = [{"role": "user", "content": "Describe a person who lives in Europe as JSON."}]


@pytest.fixture(scope="module")
def client(smollm2_server):
    import openai

    return openai.OpenAI(base_url=smollm2_server.url + "/v1", api_key="x", max_retries=0, timeout=300)


def schema_format(strict=True):
    return {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": strict}}


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_json_schema_outputs_validate(client, temperature):
    r = client.chat.completions.create(model="smollm2", messages=ASK, response_format=schema_format(),
                                       temperature=temperature, n=3 if temperature else 1, seed=11, max_tokens=200)
    for choice in r.choices:
        assert choice.finish_reason == "stop", choice.message.content
        jsonschema.validate(json.loads(choice.message.content), PERSON)
    if temperature:
        assert len({c.message.content for c in r.choices}) > 1  # really sampled


def test_json_object_streamed(client):
    chunks = client.chat.completions.create(model="smollm2", messages=ASK, response_format={"type": "json_object"},
                                            temperature=1.0, seed=3, max_tokens=200, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert isinstance(json.loads(text), dict)


def test_guided_regex_choice_and_json_on_both_endpoints(client):
    # seeded: an unseeded sample once picked Unicode digits (U+1FBF0..., which the grammar's Rust
    # regex \d accepts, as Python's does), four byte tokens each, and ran out of max_tokens
    r = client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "Give me a phone number."}], temperature=1.0,
        seed=11, max_tokens=60, extra_body={"guided_regex": r"\(\d{3}\) \d{3}-\d{4}"})
    assert r.choices[0].finish_reason == "stop"
    assert re.fullmatch(r"\(\d{3}\) \d{3}-\d{4}", r.choices[0].message.content)
    # greedy constrained decoding picks token by token: here the model's "L" (as in "Le") outranks
    # "Paris" as a first token, so any of the three may come out -- but only one of them, whole
    choices = ["Paris", "London", "Berlin"]
    r = client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "What is the capital of France?"}], temperature=1.0,
        n=4, seed=2, max_tokens=10, extra_body={"guided_choice": choices})
    assert all(c.message.content in choices and c.finish_reason == "stop" for c in r.choices)
    c = client.completions.create(model="smollm2", prompt="A JSON record of a person: ", max_tokens=200,
                                  temperature=1.0, seed=5, extra_body={"guided_json": json.dumps(PERSON)})
    jsonschema.validate(json.loads(c.choices[0].text), PERSON)


def test_constrained_request_leaves_its_neighbours_alone(client):
    """Greedy unconstrained requests give the same text alone and next to structured ones."""
    plain = dict(model="smollm2", messages=[{"role": "user", "content": "Name three colours."}], temperature=0,
                 max_tokens=40)
    alone = client.chat.completions.create(**plain).choices[0].message.content
    with ThreadPoolExecutor(6) as pool:
        structured = [pool.submit(client.chat.completions.create, model="smollm2", messages=ASK, temperature=1.0,
                                  seed=i, max_tokens=200, response_format=schema_format()) for i in range(4)]
        together = [pool.submit(client.chat.completions.create, **plain) for _ in range(2)]
        for f in together:
            assert f.result().choices[0].message.content == alone
        for f in structured:
            jsonschema.validate(json.loads(f.result().choices[0].message.content), PERSON)


@pytest.mark.parametrize("body,param,words", [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nope"}}}},
     "response_format", "schema"),
    ({"response_format": {"type": "xml"}}, "response_format", "json_object"),
    ({"response_format": {"type": "json_schema"}}, "response_format", "schema"),
    ({"guided_regex": "(unclosed"}, "guided_regex", "regex"),
    ({"guided_json": "{not json"}, "guided_json", "JSON"),
    ({"guided_choice": []}, "guided_choice", "at least one"),
    ({"guided_regex": "a", "guided_choice": ["a"]}, None, "at most one"),
    ({"response_format": {"type": "json_object"}, "ignore_eos": True}, None, "ignore_eos"),
])
def test_bad_grammars_are_400_and_the_server_goes_on(smollm2_server, body, param, words):
    r = httpx.post(smollm2_server.url + "/v1/chat/completions", timeout=60,
                   json=dict(body, model="smollm2", messages=[{"role": "user", "content": "hi"}], max_tokens=5))
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert words in err["message"], err
    if param:
        assert err["param"] == param
    ok = httpx.post(smollm2_server.url + "/v1/chat/completions", timeout=60,
                    json={"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})
    assert ok.status_code == 200
