"""Request bodies of the API server (pydantic). Field names and ranges follow OpenAI's API; the
extras (top_k, repetition_penalty, ignore_eos, session_id) follow LMDeploy's. Anything that fails
validation is answered 400 in OpenAI's error shape (see errors.py).

Every number is bounded so that it fits the engine's C++ type (int32 lengths and top_k, uint64
seeds, float sampling parameters that stay finite and nonzero as float32), and every list a client
sends is capped (the caps below, named in the 400's message). Every text field must be valid
Unicode: a lone surrogate such as "\\ud800" (which JSON can spell) is a 400 naming the field. The
total size of a request (prompt characters included) is bounded by the body limit (guards.py)."""
from __future__ import annotations

import json
import re
from typing import Any, Dict, List, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from turbolm.serve.async_engine import MAX_USER_SESSION_ID, SERVER_SESSION_IDS

# -- caps: each over-limit request gets a 400 that names the cap ------------------------------
MAX_N = 16  # choices per request (`n`)
MAX_STOP = 16  # stop strings per request (`stop`, `stop_words`)
MAX_PROMPTS = 64  # prompts per /v1/completions request
MAX_ENCODE_INPUTS = 256  # texts per /v1/encode request
MAX_MESSAGES = 1024  # messages per chat (/v1/chat/completions, /v1/chat/interactive)
MAX_LOGIT_BIAS = 300  # logit_bias entries per request (OpenAI's own limit)
MAX_CHOICES = 256  # guided_choice strings per request
GRAMMAR_FIELDS = ("response_format", "guided_json", "guided_regex", "guided_choice", "guided_grammar")
MAX_TOP_LOGPROBS = 20  # alternatives per token (OpenAI's top_logprobs limit; the engine's kMaxTopLogprobs)

# -- bounds of the engine's types --------------------------------------------------------------
INT32_MAX = (1 << 31) - 1  # max_tokens, request_output_len, top_k are C++ ints
UINT64_MAX = (1 << 64) - 1  # the engine's random seed
MAX_SESSION_ID = MAX_USER_SESSION_ID - 1  # ids >= 2**40 are the server's own (stateless requests)
MAX_INTERACTIVE_SESSION_ID = SERVER_SESSION_IDS[1] - 1  # interactive ids the server hands out go this high
# float32 keeps these finite and nonzero; the sampler divides logits by the penalty
MIN_REPETITION_PENALTY, MAX_REPETITION_PENALTY = 0.01, 100.0
# below this a temperature is greedy in all but name, and 1/t would overflow float32: read it as 0
GREEDY_TEMPERATURE = 1e-5

_SURROGATE = re.compile("[\ud800-\udfff]")


def _bad_text(value, path: str = ""):
    """(path, char) of the first lone surrogate in a str / list / dict value, else None."""
    if isinstance(value, str):
        m = _SURROGATE.search(value)
        return (path, m.group()) if m else None
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            bad = _bad_text(v, f"{path}[{i}]")
            if bad:
                return bad
    elif isinstance(value, dict):
        for k, v in value.items():
            bad = _bad_text(k, f"{path}.<key>") or _bad_text(v, f"{path}.{k}")
            if bad:
                return bad
    return None  # numbers, bools, None, nested models (they check their own fields)


def _cap(items: Optional[list], cap: int, name: str, what: str) -> None:
    if isinstance(items, list) and len(items) > cap:
        raise PydanticCustomError("too_many", "at most {cap} {what} per request ({name}); got {got}",
                                  {"cap": cap, "what": what, "name": name, "got": len(items)})


# Accepted only with these neutral values (anything else is a 400, see _Sampling._unsupported).
UNSUPPORTED: Dict[str, tuple] = {
    "functions": ([],),
    "function_call": ("none", "auto"), "best_of": (1,), "suffix": ("",),
}


class _Req(BaseModel):
    # An unknown parameter (a typo such as `temperture`, or one this server does not have) is a 400
    # naming it, as OpenAI's API answers, never accepted and ignored. NaN / Infinity are valid in
    # Python's JSON: refuse them in every float field.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @field_validator("*", mode="after")
    @classmethod
    def _valid_unicode(cls, v, info: ValidationInfo):
        bad = _bad_text(v)
        if bad:
            where, ch = bad
            raise PydanticCustomError(
                "invalid_unicode", "the text{where} contains a lone surrogate {code}; text must be valid Unicode "
                                   "(send the character's UTF-8, or a whole surrogate pair in JSON)",
                {"where": f" at {info.field_name}{where}" if where else "", "code": f"U+{ord(ch):04X}"})
        return v

    # the fields below are those of the models that have them
    @field_validator("stop", "stop_words", check_fields=False)
    @classmethod
    def _stop_strings(cls, v):
        _cap(v, MAX_STOP, "MAX_STOP", "stop strings")
        return v

    @field_validator("temperature", check_fields=False)
    @classmethod
    def _greedy(cls, v):
        return 0.0 if v < GREEDY_TEMPERATURE else v


class StreamOptions(_Req):
    include_usage: StrictBool = False


class ContentPart(_Req):
    type: Literal["text"] = "text"  # images and audio: not supported (a 400, not dropped)
    text: str = ""


MAX_TOOLS = 128  # tool definitions per request
_TOOL_NAME = r"^[a-zA-Z0-9_-]{1,64}$"  # OpenAI's rule for function names


class FunctionCall(_Req):
    name: str = Field(..., pattern=_TOOL_NAME)
    arguments: str = Field(..., description="the arguments as a JSON text")


class ToolCall(_Req):
    id: str = Field(..., max_length=128)
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Req):
    # Clients replay the assistant messages they got back, with every field of OpenAI's message
    # object: those fields are accepted when empty (null / []), refused when they carry content.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: Optional[Union[str, List[ContentPart]]] = None
    name: Optional[str] = None
    refusal: Optional[str] = None
    annotations: Optional[List[Any]] = None
    audio: Any = Field(None, description="not supported: null")
    function_call: Any = Field(None, description="not supported (deprecated by OpenAI; use tool_calls): null")
    tool_calls: Optional[List[ToolCall]] = Field(None, description="an assistant message's calls, as returned")
    tool_call_id: Optional[str] = Field(None, max_length=128, description="a tool message: the call it answers")

    @field_validator("audio", "function_call")
    @classmethod
    def _empty_only(cls, v, info: ValidationInfo):
        if v not in (None, []):
            raise PydanticCustomError("unsupported", "{name} in a message is not supported by this server",
                                      {"name": info.field_name})
        return None

    @model_validator(mode="after")
    def _tool_fields(self):
        if self.role == "tool" and not self.tool_call_id:
            raise PydanticCustomError("invalid_value", "a tool message needs tool_call_id", {})
        if self.tool_calls and self.role != "assistant":
            raise PydanticCustomError("invalid_value", "only assistant messages carry tool_calls", {})
        return self


class FunctionDef(_Req):
    name: str = Field(..., pattern=_TOOL_NAME)
    description: Optional[str] = None
    parameters: Optional[Dict[str, Any]] = Field(None, description="a JSON schema of the arguments object")
    strict: Optional[StrictBool] = None


class Tool(_Req):
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(_Req):
    name: str


class NamedToolChoice(_Req):
    type: Literal["function"]
    function: NamedFunction


class _Sampling(_Req):
    model: Optional[str] = None
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, le=MAX_N, description=f"choices to generate, at most {MAX_N} (MAX_N)")
    stop: Optional[Union[str, List[str]]] = Field(None, json_schema_extra={"maxItems": MAX_STOP})
    stream: StrictBool = False
    stream_options: Optional[StreamOptions] = None
    seed: Optional[int] = Field(None, ge=0, le=UINT64_MAX)
    user: Optional[str] = None
    # OpenAI parameters this server does not implement yet: refused (400) unless neutral, never
    # accepted and ignored. Typed Any so the 400 says "not supported", not "wrong type".
    # OpenAI's penalties over the generated tokens, applied in the engine's sampler
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    logit_bias: Optional[Dict[str, float]] = Field(
        None, description=f"token id (as a string) -> bias in [-100, 100]; -100 bans the token; at most "
                          f"{MAX_LOGIT_BIAS} entries", json_schema_extra={"maxProperties": MAX_LOGIT_BIAS})
    # Structured output (serve/grammar.py): OpenAI's response_format, or one of vLLM's guided_*.
    response_format: Optional[Dict[str, Any]] = Field(
        None, description='{"type": "text"}, {"type": "json_object"} or {"type": "json_schema", "json_schema": '
                          '{"name": ..., "schema": {...}, "strict": true}}')
    guided_json: Optional[Union[Dict[str, Any], str]] = Field(None, description="a JSON schema the output follows")
    guided_regex: Optional[str] = Field(None, description="a regular expression the whole output matches")
    guided_choice: Optional[List[str]] = Field(None, description="the output is exactly one of these strings",
                                               json_schema_extra={"maxItems": MAX_CHOICES})
    guided_grammar: Optional[str] = Field(None, description="a grammar (llguidance lark, or GBNF) the output follows")
    functions: Any = Field(None, description="not supported yet: [] or absent")
    function_call: Any = Field(None, description='not supported yet: "none" / "auto" or absent')

    @field_validator("response_format")
    @classmethod
    def _response_format(cls, v):
        if v is None:
            return v
        kind = v.get("type")
        extra = set(v) - {"type", "json_schema"}
        if kind not in ("text", "json_object", "json_schema") or extra:
            raise PydanticCustomError("invalid_format", 'type must be "text", "json_object" or "json_schema"{more}',
                                      {"more": f"; unknown keys {sorted(extra)}" if extra else ""})
        if kind == "json_schema":
            js = v.get("json_schema")
            if not isinstance(js, dict) or not isinstance(js.get("schema"), dict):
                raise PydanticCustomError("invalid_format", "json_schema must be an object with a 'schema' object", {})
            unknown = set(js) - {"name", "description", "schema", "strict"}
            if unknown:
                raise PydanticCustomError("invalid_format", "json_schema: unknown keys {k}", {"k": sorted(unknown)})
        elif "json_schema" in v:
            raise PydanticCustomError("invalid_format", 'json_schema goes with type "json_schema" only', {})
        return v

    @field_validator("guided_json")
    @classmethod
    def _schema_text(cls, v):
        if isinstance(v, str):  # vLLM takes the schema as an object or as its JSON text
            try:
                v = json.loads(v)
            except ValueError as e:
                raise PydanticCustomError("invalid_json", "not valid JSON: {e}", {"e": str(e)})
            if not isinstance(v, dict):
                raise PydanticCustomError("invalid_json", "a JSON schema is an object", {})
        return v

    @field_validator("guided_choice")
    @classmethod
    def _choices(cls, v):
        _cap(v, MAX_CHOICES, "MAX_CHOICES", "guided_choice strings")
        if v is not None and not v:
            raise PydanticCustomError("invalid_value", "guided_choice needs at least one string", {})
        return v

    @model_validator(mode="after")
    def _one_grammar(self):
        given = [k for k in GRAMMAR_FIELDS if getattr(self, k) is not None]
        if self.response_format is not None and self.response_format.get("type") == "text":
            given.remove("response_format")
        if len(given) > 1:
            raise PydanticCustomError("invalid_value", "at most one of {given} per request", {"given": given})
        if given and self.ignore_eos:
            raise PydanticCustomError("invalid_value", "ignore_eos cannot be combined with {g}: the grammar "
                                                       "decides where the output ends", {"g": given[0]})
        return self

    def grammar_spec(self) -> Optional[tuple]:
        """(the parameter, the grammar spec of serve/grammar.py) of a structured request, else None."""
        rf = self.response_format
        if rf is not None and rf.get("type") != "text":
            return "response_format", rf
        if self.guided_json is not None:
            return "guided_json", {"type": "json_schema", "json_schema": {"schema": self.guided_json}}
        if self.guided_regex is not None:
            return "guided_regex", {"type": "regex", "regex": self.guided_regex}
        if self.guided_choice is not None:
            return "guided_choice", {"type": "choice", "choice": self.guided_choice}
        if self.guided_grammar is not None:
            return "guided_grammar", {"type": "grammar", "grammar": self.guided_grammar}
        return None

    @field_validator("logit_bias")
    @classmethod
    def _logit_bias(cls, v):
        if v is None:
            return v
        if len(v) > MAX_LOGIT_BIAS:
            raise PydanticCustomError("too_many", "at most {cap} entries (MAX_LOGIT_BIAS); got {got}",
                                      {"cap": MAX_LOGIT_BIAS, "got": len(v)})
        for k, b in v.items():
            if not k.strip().isdigit() or int(k) > INT32_MAX:
                raise PydanticCustomError("invalid_token", "keys are token ids (non-negative integers), got '{k}'",
                                          {"k": k})
            if not -100.0 <= b <= 100.0:
                raise PydanticCustomError("invalid_bias", "biases are in [-100, 100], got {b} for token {k}",
                                          {"b": b, "k": k})
        return v

    def bias(self) -> Dict[int, float]:
        return {int(k): float(b) for k, b in (self.logit_bias or {}).items()}

    @field_validator(*UNSUPPORTED, check_fields=False)
    @classmethod
    def _unsupported(cls, v, info: ValidationInfo):
        neutral = UNSUPPORTED[info.field_name]
        if v is not None and not any(v == n and type(v) is type(n) for n in neutral):  # noqa: E721
            raise PydanticCustomError("unsupported", "{name} is not supported by this server yet; leave it out "
                                      "(or send {neutral})", {"name": info.field_name,
                                                              "neutral": " or ".join(map(json.dumps, neutral))})
        return None
    # extras
    top_k: int = Field(0, ge=0, le=INT32_MAX, description="0 (or >= the vocabulary): no top-k cut")
    repetition_penalty: float = Field(1.0, ge=MIN_REPETITION_PENALTY, le=MAX_REPETITION_PENALTY)
    ignore_eos: StrictBool = False
    session_id: Optional[int] = Field(None, ge=-1, le=MAX_SESSION_ID)

    def stop_list(self) -> List[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class ChatCompletionRequest(_Sampling):
    messages: List[ChatMessage] = Field(..., min_length=1, json_schema_extra={"maxItems": MAX_MESSAGES})
    tools: Optional[List[Tool]] = Field(None, json_schema_extra={"maxItems": MAX_TOOLS})
    tool_choice: Optional[Union[Literal["none", "auto", "required"], NamedToolChoice]] = None
    parallel_tool_calls: StrictBool = True

    @model_validator(mode="after")
    def _tool_choice(self):
        _cap(self.tools, MAX_TOOLS, "MAX_TOOLS", "tools")
        choice = self.tool_choice
        names = [t.function.name for t in self.tools or []]
        if len(set(names)) != len(names):
            raise PydanticCustomError("invalid_value", "tools: function names must be unique", {})
        if isinstance(choice, NamedToolChoice) and choice.function.name not in names:
            raise PydanticCustomError("invalid_value", "tool_choice names {n}, which is not among the tools",
                                      {"n": choice.function.name})
        if choice == "required" and not names:
            raise PydanticCustomError("invalid_value", "tool_choice 'required' needs tools", {})
        if self.uses_tools() and self.grammar_spec() is not None:
            raise PydanticCustomError("invalid_value", "tools cannot be combined with {p}: one grammar per request",
                                      {"p": self.grammar_spec()[0]})
        return self

    def uses_tools(self) -> bool:
        return bool(self.tools) and self.tool_choice != "none"
    max_tokens: Optional[int] = Field(None, ge=1, le=INT32_MAX)
    max_completion_tokens: Optional[int] = Field(None, ge=1, le=INT32_MAX)
    logprobs: StrictBool = False
    top_logprobs: Optional[int] = Field(None, ge=0, le=MAX_TOP_LOGPROBS,
                                        description="alternatives per token, with logprobs=true")

    @model_validator(mode="after")
    def _top_needs_logprobs(self):
        if self.top_logprobs and not self.logprobs:
            raise PydanticCustomError("invalid_value", "top_logprobs needs logprobs=true", {})
        return self

    @field_validator("messages")
    @classmethod
    def _messages(cls, v):
        _cap(v, MAX_MESSAGES, "MAX_MESSAGES", "messages")
        return v


class CompletionRequest(_Sampling):
    # one prompt (text or token ids) or a list of them, at most MAX_PROMPTS
    prompt: Union[str, List[str], List[int], List[List[int]]]
    max_tokens: Optional[int] = Field(16, ge=0, le=INT32_MAX, description="0 only with echo (prompt scoring)")
    logprobs: Optional[int] = Field(None, ge=0, le=MAX_TOP_LOGPROBS,
                                    description="alternatives per token; with echo the prompt's tokens too")
    echo: StrictBool = False

    @model_validator(mode="after")
    def _zero_needs_echo(self):
        if self.max_tokens == 0 and not self.echo:
            raise PydanticCustomError("invalid_value", "max_tokens = 0 generates nothing: it is only allowed with "
                                                       "echo = true (to score the prompt with logprobs)", {})
        return self
    suffix: Any = Field(None, description='not supported yet: "" or absent')
    best_of: Any = Field(None, description="not supported yet: 1 or absent")

    @field_validator("prompt")
    @classmethod
    def _prompts(cls, v):
        if isinstance(v, list) and v and not isinstance(v[0], int):  # a list of prompts, not one of ids
            _cap(v, MAX_PROMPTS, "MAX_PROMPTS", "prompts")
        return v


class InteractiveRequest(_Req):
    """POST /v1/chat/interactive (LMDeploy's): one round of a server-side session."""
    prompt: Union[str, List[ChatMessage]] = Field("", json_schema_extra={"maxItems": MAX_MESSAGES})
    session_id: int = Field(-1, ge=-1, le=MAX_INTERACTIVE_SESSION_ID)  # also ids the server handed out
    interactive_mode: StrictBool = False  # keep the history for the next round
    stream: StrictBool = False
    stop: StrictBool = False  # cancel the session's running request
    cancel: Optional[StrictBool] = None  # alias of stop
    request_output_len: int = Field(512, ge=0, le=INT32_MAX)
    top_p: float = Field(0.8, gt=0.0, le=1.0)
    top_k: int = Field(40, ge=0, le=INT32_MAX)
    temperature: float = Field(0.8, ge=0.0, le=2.0)
    repetition_penalty: float = Field(1.0, ge=MIN_REPETITION_PENALTY, le=MAX_REPETITION_PENALTY)
    ignore_eos: StrictBool = False
    seed: Optional[int] = Field(None, ge=0, le=UINT64_MAX)
    stop_words: Optional[List[str]] = Field(None, json_schema_extra={"maxItems": MAX_STOP})

    @field_validator("prompt")
    @classmethod
    def _messages(cls, v):
        _cap(v, MAX_MESSAGES, "MAX_MESSAGES", "messages")
        return v


class EncodeRequest(_Req):
    input: Union[str, List[str]] = Field(..., json_schema_extra={"maxItems": MAX_ENCODE_INPUTS})
    do_preprocess: StrictBool = False  # render the chat template around each input first
    add_bos: StrictBool = True

    @field_validator("input")
    @classmethod
    def _inputs(cls, v):
        _cap(v, MAX_ENCODE_INPUTS, "MAX_ENCODE_INPUTS", "inputs")
        return v


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> Dict[str, Any]:
    """OpenAI's usage; cached_tokens: prompt tokens the prefix cache supplied (not computed)."""
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached_tokens}}
