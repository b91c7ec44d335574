"""Tool calling through the real server on SmolLM2 with the `openai` client (issue 9 item 7):
`tools` go into the prompt (SmolLM2's ChatML has no tool template, so the Hermes format's system
prompt), `tool_choice` required / a named function force a call through the grammar engine, the
calls come back as OpenAI `tool_calls` (streamed in OpenAI's delta shape too), and a `role: tool`
result continues the conversation."""
import json

import httpx
import jsonschema
import pytest

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40},
                                                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                   "required": ["city", "unit"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "Current time in a time zone",
    "parameters": {"type": "object", "properties": {"zone": {"type": "string", "maxLength": 40}},
                   "required": ["zone"], "additionalProperties": False}}}
ASK = [{"role": "user", "content": "What's the weather like in Paris today?"}]


@pytest.fixture(scope="module")
def client(smollm2_server):
    import openai

    return openai.OpenAI(base_url=smollm2_server.url + "/v1", api_key="x", max_retries=0, timeout=300)


def check_call(call, tool):
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == tool["function"]["name"]
    jsonschema.validate(json.loads(call.function.arguments), tool["function"]["parameters"])


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_required_forces_a_valid_call(client, temperature):
    r = client.chat.completions.create(model="smollm2", messages=ASK, tools=[WEATHER, TIME], tool_choice="required",
                                       temperature=temperature, seed=4, max_tokens=120, parallel_tool_calls=False)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert len(choice.message.tool_calls) == 1
    call = choice.message.tool_calls[0]
    check_call(call, WEATHER if call.function.name == "get_weather" else TIME)


def test_named_choice_calls_that_function(client):
    r = client.chat.completions.create(model="smollm2", messages=ASK, tools=[WEATHER, TIME], max_tokens=120,
                                       tool_choice={"type": "function", "function": {"name": "get_time"}})
    calls = r.choices[0].message.tool_calls
    assert [c.function.name for c in calls] == ["get_time"]
    check_call(calls[0], TIME)


def test_streamed_call_follows_openais_delta_shape(client):
    stream = client.chat.completions.create(model="smollm2", messages=ASK, tools=[WEATHER], stream=True,
                                            tool_choice={"type": "function", "function": {"name": "get_weather"}},
                                            max_tokens=120)
    deltas, reasons = [], []
    for c in stream:
        for ch in c.choices:
            if ch.delta.tool_calls:
                deltas.extend(ch.delta.tool_calls)
            if ch.finish_reason:
                reasons.append(ch.finish_reason)
            assert not ch.delta.content  # a forced call streams no content
    assert reasons == ["tool_calls"] and len(deltas) == 1
    d = deltas[0]
    assert d.index == 0 and d.id.startswith("call_") and d.type == "function"
    assert d.function.name == "get_weather"
    jsonschema.validate(json.loads(d.function.arguments), WEATHER["function"]["parameters"])


def test_a_tool_result_continues_the_conversation(client):
    first = client.chat.completions.create(model="smollm2", messages=ASK, tools=[WEATHER], tool_choice="required",
                                           temperature=0, max_tokens=120)
    call = first.choices[0].message.tool_calls[0]
    history = ASK + [first.choices[0].message.model_dump(exclude_none=True),
                     {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature_c": 21, "sky": "sunny"})}]
    r = client.chat.completions.create(model="smollm2", messages=history, tools=[WEATHER], tool_choice="none",
                                       temperature=0, max_tokens=40)
    assert r.choices[0].finish_reason in ("stop", "length") and r.choices[0].message.content
    assert not r.choices[0].message.tool_calls


@pytest.mark.parametrize("path,body,words", [
    ("/v1/chat/completions", {"messages": ASK, "tools": [WEATHER],
                              "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "not among the tools"),
    ("/v1/chat/completions", {"messages": ASK, "tool_choice": "required"}, "needs tools"),
    ("/v1/chat/completions", {"messages": ASK + [{"role": "tool", "content": "x"}]}, "tool_call_id"),
    ("/v1/chat/completions", {"messages": ASK, "tools": [WEATHER, WEATHER]}, "unique"),
    ("/v1/chat/completions", {"messages": ASK, "tools": [WEATHER], "response_format": {"type": "json_object"}},
     "one grammar"),
    ("/v1/completions", {"prompt": "x", "tools": [WEATHER]}, "tools"),
])
def test_bad_tool_requests_are_400(smollm2_server, path, body, words):
    r = httpx.post(smollm2_server.url + path, json=dict(body, model="smollm2", max_tokens=4), timeout=60)
    assert r.status_code == 400, r.text
    assert words in r.json()["error"]["message"]
