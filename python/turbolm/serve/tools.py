"""Tool calling (OpenAI `tools` / `tool_choice`): tool definitions into the prompt, tool calls
out of the generated text, and the grammar that forces a call for `required` / a named function.

The format is the model family's, one ToolParser each (a registry, `PARSERS`):
  hermes       <tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>   Qwen 2/2.5/3, Hermes,
               and the default for ChatML models without a tool template (SmolLM2)
  llama3_json  {"name": ..., "parameters": {...}}  (optionally after <|python_tag|>)   Llama 3.x
  mistral      [TOOL_CALLS] [{"name": ..., "arguments": {...}}]                    Mistral

Prompt: a tokenizer chat template that knows tools (its Jinja mentions `tools`) renders them
itself, with OpenAI-shaped messages; any other template gets the parser's system prompt listing
the tools, and tool calls / tool results written back as the parser's text.
"""
from __future__ import annotations

import json
import re
import uuid
from typing import Any, Callable, Dict, List, Optional, Tuple

PARSERS: Dict[str, "ToolParser"] = {}


def register(name: str) -> Callable:
    def deco(cls):
        cls.name = name
        PARSERS[name] = cls()
        return cls
    return deco


def _schema_no_ws(schema: dict) -> dict:
    """A JSON schema for llguidance's %json with compact separators (small models otherwise pad
    with whitespace forever); see serve/grammar.py."""
    out = dict(schema)
    out["x-guidance"] = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
    return out


def _call_schema(tool: dict, args_key: str) -> dict:
    fn = tool["function"]
    params = fn.get("parameters") or {"type": "object"}
    return {"type": "object", "properties": {"name": {"const": fn["name"]}, args_key: params},
            "required": ["name", args_key], "additionalProperties": False}


def _call_rules(tools: List[dict], args_key: str) -> str:
    """Lark rules: `call` is one call of any of the tools, as a JSON object (llguidance's %json)."""
    alts = " | ".join(f"call{i}" for i in range(len(tools)))
    return f"call: {alts}\n" + "".join(
        f"call{i}: %json {json.dumps(_schema_no_ws(_call_schema(t, args_key)))}\n" for i, t in enumerate(tools))


def _loads(text: str) -> Optional[Any]:
    try:
        return json.loads(text)
    except ValueError:
        return None


class ToolParser:
    name = "?"
    args_key = "arguments"
    marker = ""  # text that starts a tool call

    # -- prompt ---------------------------------------------------------------------------------
    def system_prompt(self, tools: List[dict]) -> str:
        raise NotImplementedError

    def call_text(self, name: str, arguments: Any) -> str:
        raise NotImplementedError

    def result_text(self, content: str) -> str:
        return content

    # -- output ---------------------------------------------------------------------------------
    def parse(self, text: str) -> Tuple[str, List[dict]]:
        """-> (content outside the calls, [{"name", "arguments" (a JSON string)}])."""
        raise NotImplementedError

    def may_start_call(self, text: str) -> int:
        """Where in `text` a tool call starts or may still start (len(text): nowhere): content
        before it can be streamed."""
        i = text.find(self.marker)
        if i >= 0:
            return i
        for k in range(min(len(self.marker) - 1, len(text)), 0, -1):
            if text.endswith(self.marker[:k]):
                return len(text) - k
        return len(text)

    def call_started(self, text: str, cut: int) -> bool:
        """A call surely started at `cut` (may_start_call's answer)."""
        return text.startswith(self.marker, cut)

    # -- grammar (tool_choice required / named) --------------------------------------------------
    def grammar(self, tools: List[dict], multiple: bool = True) -> str:
        """A lark grammar (llguidance) whose outputs are one call -- or several, with `multiple` --
        of the given tools, in this format and nothing else."""
        raise NotImplementedError


@register("hermes")
class Hermes(ToolParser):
    marker = "<tool_call>"
    _CALL = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.S)

    def system_prompt(self, tools):
        sigs = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
        return ("You are a function calling AI model. You are provided with function signatures within "
                f"<tools></tools> XML tags:\n<tools>\n{sigs}\n</tools>\nFor each function call, return a json "
                "object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n"
                '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>')

    def call_text(self, name, arguments):
        return "<tool_call>\n" + json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False) + "\n</tool_call>"

    def result_text(self, content):
        return f"<tool_response>\n{content}\n</tool_response>"

    def parse(self, text):
        calls, spans = [], []
        for m in self._CALL.finditer(text):
            obj = _loads(m.group(1))
            if isinstance(obj, dict) and isinstance(obj.get("name"), str):
                calls.append({"name": obj["name"], "arguments": json.dumps(obj.get("arguments", {}), ensure_ascii=False)})
                spans.append(m.span())
        content, last = "", 0
        for a, b in spans:
            content += text[last:a]
            last = b
        return (content + text[last:]).strip(), calls

    def grammar(self, tools, multiple=True):
        return (f'start: ("<tool_call>\\n" call "\\n</tool_call>"){"+" if multiple else ""}\n'
                + _call_rules(tools, "arguments"))


@register("llama3_json")
class Llama3Json(ToolParser):
    args_key = "parameters"
    marker = "{"

    def system_prompt(self, tools):
        sigs = "\n\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
        return ("Given the following functions, please respond with a JSON for a function call with its proper "
                "arguments that best answers the given prompt.\n\nRespond in the format "
                '{"name": function name, "parameters": dictionary of argument name and its value}. '
                f"Do not use variables.\n\n{sigs}")

    def call_text(self, name, arguments):
        return json.dumps({"name": name, "parameters": arguments}, ensure_ascii=False)

    def may_start_call(self, text):
        stripped = text.lstrip()
        if not stripped:
            return 0
        return 0 if stripped.startswith(("{", "<|python_tag|>")) or "<|python_tag|>".startswith(stripped) else len(text)

    def call_started(self, text, cut):
        return cut == 0 and text.lstrip().startswith(("{", "<|python_tag|>"))

    def parse(self, text):
        body = text.strip()
        if body.startswith("<|python_tag|>"):
            body = body[len("<|python_tag|>"):].strip()
        if not body.startswith("{"):
            return text.strip(), []
        calls = []
        for part in re.split(r";\s*(?=\{)", body):
            obj = _loads(part.strip())
            if not (isinstance(obj, dict) and isinstance(obj.get("name"), str)):
                return text.strip(), []
            calls.append({"name": obj["name"],
                          "arguments": json.dumps(obj.get("parameters", obj.get("arguments", {})), ensure_ascii=False)})
        return "", calls

    def grammar(self, tools, multiple=True):
        more = ' ("; " call)*' if multiple else ""
        return f"start: call{more}\n" + _call_rules(tools, "parameters")


@register("mistral")
class Mistral(ToolParser):
    marker = "[TOOL_CALLS]"

    def system_prompt(self, tools):
        return "[AVAILABLE_TOOLS] " + json.dumps(tools, ensure_ascii=False) + " [/AVAILABLE_TOOLS]"

    def call_text(self, name, arguments):
        return "[TOOL_CALLS] " + json.dumps([{"name": name, "arguments": arguments}], ensure_ascii=False)

    def result_text(self, content):
        return f"[TOOL_RESULTS] {content} [/TOOL_RESULTS]"

    def parse(self, text):
        i = text.find(self.marker)
        if i < 0:
            return text.strip(), []
        arr = _loads(text[i + len(self.marker):].strip())
        if isinstance(arr, dict):
            arr = [arr]
        if not isinstance(arr, list) or not all(isinstance(c, dict) and isinstance(c.get("name"), str) for c in arr):
            return text.strip(), []
        return text[:i].strip(), [{"name": c["name"], "arguments": json.dumps(c.get("arguments", {}), ensure_ascii=False)}
                                  for c in arr]

    def grammar(self, tools, multiple=True):
        more = ' (", " call)*' if multiple else ""
        return f'start: "[TOOL_CALLS] [" call{more} "]"\n' + _call_rules(tools, "arguments")


# -- choosing the format and building the prompt ------------------------------------------------

def _template_source(template) -> str:
    hf = getattr(template, "hf", None)
    src = getattr(hf, "chat_template", None) if hf is not None else None
    return src if isinstance(src, str) else ""


def parser_for(template) -> ToolParser:
    """The tool-call format of the model behind `template` (registered name, or the Jinja)."""
    src = _template_source(template)
    if "[TOOL_CALLS]" in src:
        return PARSERS["mistral"]
    if "<tool_call>" in src:
        return PARSERS["hermes"]
    if "<|python_tag|>" in src or "ipython" in src or type(template).__name__ == "Llama3":
        return PARSERS["llama3_json"]
    return PARSERS["hermes"]


def template_renders_tools(template) -> bool:
    return "tools" in _template_source(template)


def new_call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


def render(template, messages: List[dict], tools: Optional[List[dict]], parser: ToolParser) -> str:
    """The prompt for an OpenAI message list that may hold tool calls and tool results, with
    `tools` (None: no tools offered) described in the model's way."""
    if template_renders_tools(template):
        msgs = []
        for m in messages:
            m = dict(m)
            if m.get("tool_calls"):  # Jinja templates index arguments as a mapping
                m["tool_calls"] = [{"type": "function", "id": c.get("id"),
                                    "function": {"name": c["function"]["name"],
                                                 "arguments": _loads(c["function"]["arguments"]) or {}}}
                                   for c in m["tool_calls"]]
            msgs.append(m)
        return template.hf.apply_chat_template(msgs, tools=tools or None, tokenize=False,
                                               add_generation_prompt=msgs[-1]["role"] != "assistant")
    plain: List[dict] = []
    for m in messages:
        role, content = m["role"], m.get("content") or ""
        if isinstance(content, list):
            content = "".join(p.get("text", "") for p in content)
        if role == "tool":
            plain.append({"role": "user", "content": parser.result_text(content)})
        elif role == "assistant" and m.get("tool_calls"):
            calls = [parser.call_text(c["function"]["name"], _loads(c["function"]["arguments"]) or {})
                     for c in m["tool_calls"]]
            plain.append({"role": "assistant", "content": "\n".join([content] * bool(content) + calls)})
        else:
            plain.append({"role": role, "content": content})
    if tools:
        prompt = parser.system_prompt(tools)
        if plain and plain[0]["role"] == "system":
            plain[0] = {"role": "system", "content": plain[0]["content"] + "\n\n" + prompt}
        else:
            base = getattr(template, "system", None)
            plain.insert(0, {"role": "system", "content": (base + "\n\n" if base else "") + prompt})
    return template.messages2prompt(plain)


class ToolStream:
    """Streams a choice's text as content until a tool call (may) start, then holds the rest; at
    the end, the calls parsed from the whole text (OpenAI's streamed shape: content deltas, then
    one tool_calls delta per call)."""

    def __init__(self, parser: ToolParser):
        self.parser = parser
        self.text = ""
        self.sent = 0  # characters of `text` already streamed as content
        self.in_call = False

    def push(self, piece: str) -> str:
        self.text += piece
        if self.in_call:
            return ""
        cut = self.parser.may_start_call(self.text)
        self.in_call = self.parser.call_started(self.text, cut)
        out = self.text[self.sent:cut] if cut > self.sent else ""
        self.sent = max(self.sent, cut)
        return out

    def finish(self) -> Tuple[str, List[dict]]:
        """-> (content not streamed yet, calls)."""
        content, calls = self.parser.parse(self.text)
        if not calls:  # no call after all: the held text is content
            rest, self.sent = self.text[self.sent:], len(self.text)
            return rest, []
        streamed = self.text[:self.sent].strip()
        return (content[len(streamed):].strip() if content.startswith(streamed) else ""), calls
