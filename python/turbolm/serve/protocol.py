"""Request bodies of the API server (pydantic). Field names and ranges follow OpenAI's API; the
extras (top_k, repetition_penalty, ignore_eos, session_id) follow LMDeploy's. Anything that fails
validation is answered 400 in OpenAI's error shape (see errors.py)."""
from __future__ import annotations

from typing import Dict, List, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator

StopArg = Optional[Union[str, List[str]]]


class _Req(BaseModel):
    model_config = ConfigDict(extra="ignore")


class StreamOptions(_Req):
    include_usage: StrictBool = False


class ContentPart(_Req):
    type: str = "text"
    text: str = ""


class ChatMessage(_Req):
    role: Literal["system", "user", "assistant", "developer"]
    content: Optional[Union[str, List[ContentPart]]] = None
    name: Optional[str] = None


class _Sampling(_Req):
    model: Optional[str] = None
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, le=16)
    stop: StopArg = None
    stream: StrictBool = False
    stream_options: Optional[StreamOptions] = None
    seed: Optional[int] = None
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)  # accepted, not applied
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)  # accepted, not applied
    user: Optional[str] = None
    # extras
    top_k: int = Field(0, ge=0)
    repetition_penalty: float = Field(1.0, gt=0.0)
    ignore_eos: StrictBool = False
    session_id: Optional[int] = Field(None, ge=-1)

    @field_validator("stop")
    @classmethod
    def _stop(cls, v):
        if isinstance(v, list) and len(v) > 16:
            raise ValueError("at most 16 stop strings")
        return v

    def stop_list(self) -> List[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class ChatCompletionRequest(_Sampling):
    messages: List[ChatMessage] = Field(..., min_length=1)
    max_tokens: Optional[int] = Field(None, ge=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1)
    logprobs: StrictBool = False
    top_logprobs: Optional[int] = Field(None, ge=0, le=20)


class CompletionRequest(_Sampling):
    prompt: Union[str, List[str], List[int], List[List[int]]]
    max_tokens: Optional[int] = Field(16, ge=1)
    logprobs: Optional[int] = Field(None, ge=0, le=5)
    echo: StrictBool = False
    suffix: Optional[str] = None


class InteractiveRequest(_Req):
    """POST /v1/chat/interactive (LMDeploy's): one round of a server-side session."""
    prompt: Union[str, List[ChatMessage]] = ""
    session_id: int = Field(-1, ge=-1)
    interactive_mode: StrictBool = False  # keep the history for the next round
    stream: StrictBool = False
    stop: StrictBool = False  # cancel the session's running request
    cancel: Optional[StrictBool] = None  # alias of stop
    request_output_len: int = Field(512, ge=0)
    top_p: float = Field(0.8, gt=0.0, le=1.0)
    top_k: int = Field(40, ge=0)
    temperature: float = Field(0.8, ge=0.0, le=2.0)
    repetition_penalty: float = Field(1.0, gt=0.0)
    ignore_eos: StrictBool = False
    seed: Optional[int] = None
    stop_words: Optional[List[str]] = None


class EncodeRequest(_Req):
    input: Union[str, List[str]]
    do_preprocess: StrictBool = False  # render the chat template around each input first
    add_bos: StrictBool = True


def usage(prompt_tokens: int, completion_tokens: int) -> Dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}
