"""Tool-call formats (serve/tools.py) against hand-written model outputs, and their forcing
grammars against llguidance on SmolLM2's real tokenizer: random walks under each grammar's mask
always parse back to calls whose arguments validate against the tool's schema. Also: a tokenizer
chat template that knows tools renders them itself."""
import json

import jsonschema
import pytest

from turbolm.serve import tools
from turbolm.serve.tools import PARSERS, ToolStream

from test_grammar import Setup

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string", "maxLength": 12},
                                     "days": {"type": "integer", "minimum": 1, "maximum": 7}},
    "required": ["city", "days"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {
    "type": "object", "properties": {"zone": {"enum": ["UTC", "CET"]}}, "required": ["zone"]}}}
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER, TIME)}


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_written_calls_parse_back(name):
    p = PARSERS[name]
    text = p.call_text("get_weather", {"city": "Paris", "days": 2})
    content, calls = p.parse(text)
    assert content == "" and calls == [{"name": "get_weather", "arguments": '{"city": "Paris", "days": 2}'}]


@pytest.mark.parametrize("name,text,content,names", [
    ("hermes", 'Let me check.\n<tool_call>\n{"name": "a", "arguments": {}}\n</tool_call>\n'
               '<tool_call>\n{"name": "b", "arguments": {"x": 1}}\n</tool_call>', "Let me check.", ["a", "b"]),
    ("hermes", "<tool_call>\n{not json}\n</tool_call>", "<tool_call>\n{not json}\n</tool_call>", []),
    ("hermes", "no call here", "no call here", []),
    ("llama3_json", '<|python_tag|>{"name": "a", "parameters": {"q": "x; y"}}', "", ["a"]),
    ("llama3_json", 'The answer is {"name": "a"}', 'The answer is {"name": "a"}', []),
    ("mistral", 'Sure [TOOL_CALLS] [{"name": "a", "arguments": {}}, {"name": "b", "arguments": {}}]', "Sure",
     ["a", "b"]),
])
def test_model_outputs_parse(name, text, content, names):
    got_content, calls = PARSERS[name].parse(text)
    assert got_content == content and [c["name"] for c in calls] == names


def test_tool_stream_holds_back_the_call():
    ts = ToolStream(PARSERS["hermes"])
    pieces = ["Checking ", "now <", "tool_", 'call>\n{"name": "a", ', '"arguments": {}}\n</tool_call>']
    assert "".join(ts.push(p) for p in pieces) == "Checking now "
    assert ts.finish() == ("", [{"name": "a", "arguments": "{}"}])
    ts = ToolStream(PARSERS["hermes"])  # a "<" that is not a call is released at the end
    assert ts.push("a <") == "a " and ts.push("b") == "<b" and ts.finish() == ("", [])


@pytest.fixture(scope="module")
def smol(smollm2_hf):
    return Setup(smollm2_hf)


@pytest.mark.parametrize("name", sorted(PARSERS))
@pytest.mark.parametrize("multiple", [False, True])
def test_forcing_grammar_walks_parse_to_valid_calls(smol, name, multiple):
    p = PARSERS[name]
    grammar = p.grammar([WEATHER, TIME], multiple)
    for seed in range(4):
        text = smol.walk({"type": "grammar", "grammar": grammar}, seed, closers='"}]>', p_eos=0.7)
        content, calls = p.parse(text)
        assert content == "" and calls, text
        assert multiple or len(calls) == 1
        for c in calls:
            jsonschema.validate(json.loads(c["arguments"]), SCHEMAS[c["name"]])


def test_a_template_that_knows_tools_renders_them(smollm2_hf):
    from turbolm.model import HFChatTemplate
    from turbolm.tokenizer import Tokenizer

    tok = Tokenizer(smollm2_hf)
    tok.model.chat_template = (
        "{% if tools %}TOOLS:{% for t in tools %}{{ t.function.name }};{% endfor %}\n{% endif %}"
        "{% for m in messages %}{{ m.role }}: {% if m.tool_calls %}{% for c in m.tool_calls %}"
        "CALL {{ c.function.name }} {{ c.function.arguments.city }}{% endfor %}{% else %}{{ m.content }}{% endif %}\n"
        "{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}")
    template = HFChatTemplate(tok)
    msgs = [{"role": "user", "content": "hi"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "cold"}]
    out = tools.render(template, msgs, [WEATHER, TIME], tools.parser_for(template))
    # (transformers renders with trim_blocks: the newline after each block tag goes)
    assert out == "TOOLS:get_weather;get_time;user: hiassistant: CALL get_weather Oslotool: coldassistant: "
