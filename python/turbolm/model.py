"""Chat templates: a registry by model name (`MODELS`).

A template turns a user's text into the exact prompt the model was trained on. Two ways in:

- ``get_prompt(prompt, sequence_start)`` renders ONE round for a session whose history is kept
  in the engine's KV cache. ``sequence_start=True`` opens the conversation (BOS, system prompt);
  ``False`` continues it: the text first closes the previous answer (the engine's output excludes
  the end-of-turn token), then opens the new round. So, for every template,

      get_prompt(u1, True) + a1 + get_prompt(u2, False) + a2 + ...
        == messages2prompt([user u1, assistant a1, user u2, assistant a2, ...]) (as a prefix)

  which `tests/python/test_model_templates.py` checks for every registered name.
- ``messages2prompt(messages)`` renders a whole OpenAI-style history ending in an open assistant turn.

``stop_words`` are the end-of-turn strings the engine must stop on (besides EOS).

Names registered here are the names `turbolm convert` accepts. `HFChatTemplate` wraps a tokenizer's
own Jinja ``chat_template`` (rendered by transformers' sandboxed Jinja2 environment);
`get_chat_template` picks it whenever the model ships one, unless a registered name is asked for
explicitly (``--model-name`` / ``model_name=``); the workspace's model_name is the template of
checkpoints without their own.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Tuple, Type, Union

Messages = Union[str, Sequence[dict]]

MODELS: Dict[str, Type["BaseModel"]] = {}


def register(name: str) -> Callable:
    def deco(cls):
        MODELS[name] = cls
        return cls
    return deco


def known_model_names() -> List[str]:
    return sorted(MODELS)


def message_text(content) -> str:
    """OpenAI content is a string or a list of parts ({"type": "text", "text": ...})."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type", "text") == "text")


def split_messages(messages: Messages) -> Tuple[Optional[str], List[Tuple[str, Optional[str]]]]:
    """-> (system text or None, [(user, assistant or None), ...]). Consecutive turns of one role
    are joined with a newline; the last round's assistant is None when the history ends on a user."""
    if isinstance(messages, str):
        return None, [(messages, None)]
    system: Optional[str] = None
    rounds: List[List[Optional[str]]] = []
    for m in messages:
        role, text = m.get("role"), message_text(m.get("content"))
        if role == "system":
            system = text if system is None else system + "\n" + text
        elif role == "user":
            if rounds and rounds[-1][1] is None:
                rounds[-1][0] += "\n" + text
            else:
                rounds.append([text, None])
        elif role == "assistant":
            if not rounds:
                rounds.append(["", None])
            rounds[-1][1] = text if rounds[-1][1] is None else rounds[-1][1] + "\n" + text
        else:
            raise ValueError(f"unknown message role {role!r}: expected system, user or assistant")
    return system, [(u, a) for u, a in rounds]


@register("base")
class BaseModel:
    """No template: the text is the prompt (completion models, and `cap=completion`)."""

    default_system: Optional[str] = None
    stop_words: List[str] = []

    def __init__(self, system: Optional[str] = None, stop_words: Optional[List[str]] = None,
                 capability: str = "chat", **kwargs):
        self.system = self.default_system if system is None else system
        if stop_words is not None:
            self.stop_words = list(stop_words)
        self.capability = capability
        self.__dict__.update(kwargs)

    # -- what subclasses write: the pieces of one conversation -------------------------------
    def open(self, system: Optional[str]) -> str:
        """Text before the first user turn (BOS marker, system prompt)."""
        return ""

    def user(self, text: str) -> str:
        """One user turn plus the opening of the assistant's answer."""
        return text

    def first_user(self, system: Optional[str], text: str) -> str:
        """The opening and the first user turn (a template that folds the system prompt into the
        first turn overrides this)."""
        return self.open(system) + self.user(text)

    def close(self) -> str:
        """Text after an assistant answer (end of turn)."""
        return ""

    # -- the API ---------------------------------------------------------------------------
    def get_prompt(self, prompt: str, sequence_start: bool = True) -> str:
        if self.capability == "completion":
            return prompt
        if sequence_start:
            return self.first_user(self.system, prompt)
        return self.close() + self.user(prompt)

    def messages2prompt(self, messages: Messages, sequence_start: bool = True) -> str:
        if isinstance(messages, str):
            return self.get_prompt(messages, sequence_start)
        system, rounds = split_messages(messages)
        system = self.system if system is None else system
        if not rounds:
            return self.open(system)
        out = ""
        for i, (u, a) in enumerate(rounds):
            out += self.first_user(system, u) if i == 0 else self.user(u)
            if a is not None:
                out += a + self.close()
        return out


@register("llama2")
class Llama2(BaseModel):
    """Meta's Llama-2-chat: `<s>[INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\n{user} [/INST]`.
    No default system prompt (as in HF's current template)."""

    def open(self, system):
        return "<s>"

    def user(self, text):
        return f"[INST] {text} [/INST]"

    def first_user(self, system, text):
        sys_block = f"<<SYS>>\n{system}\n<</SYS>>\n\n" if system else ""
        return f"<s>[INST] {sys_block}{text} [/INST]"

    def close(self):
        return " </s><s>"


@register("llama3")
class Llama3(BaseModel):
    """Meta's Llama-3-instruct header format."""

    stop_words = ["<|eot_id|>", "<|end_of_text|>"]

    def open(self, system):
        out = "<|begin_of_text|>"
        if system:
            out += f"<|start_header_id|>system<|end_header_id|>\n\n{system}<|eot_id|>"
        return out

    def user(self, text):
        return (f"<|start_header_id|>user<|end_header_id|>\n\n{text}<|eot_id|>"
                "<|start_header_id|>assistant<|end_header_id|>\n\n")

    def close(self):
        return "<|eot_id|>"


@register("vicuna")
class Vicuna(BaseModel):
    """Vicuna v1.1+: `{system} USER: {user} ASSISTANT: {answer}</s>`."""

    default_system = ("A chat between a curious user and an artificial intelligence assistant. "
                      "The assistant gives helpful, detailed, and polite answers to the user's questions.")

    def open(self, system):
        return f"{system} " if system else ""

    def user(self, text):
        return f"USER: {text} ASSISTANT: "

    def close(self):
        return "</s>"


@register("internlm-chat-7b")
class InternLMChat7B(BaseModel):
    """InternLM-chat-7b: `<s><|User|>:{user}<eoh>\\n<|Bot|>:{answer}<eoa>\\n`."""

    stop_words = ["<eoa>"]

    def open(self, system):
        return "<s>" + (f"<|System|>:{system}\n" if system else "")

    def user(self, text):
        return f"<|User|>:{text}<eoh>\n<|Bot|>:"

    def close(self):
        return "<eoa>\n"


@register("chatml")
class ChatML(BaseModel):
    """ChatML: `<|im_start|>{role}\\n{content}<|im_end|>\\n`, answer opened with `<|im_start|>assistant\\n`."""

    stop_words = ["<|im_end|>"]

    def open(self, system):
        return f"<|im_start|>system\n{system}<|im_end|>\n" if system else ""

    def user(self, text):
        return f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n"

    def close(self):
        return "<|im_end|>\n"


@register("qwen-7b")
class Qwen7BChat(ChatML):
    default_system = "You are a helpful assistant."


@register("smollm2")
class SmolLM2(ChatML):
    default_system = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def _hf_tokenizer(tokenizer):
    """The transformers tokenizer inside a turbolm Tokenizer, or the argument itself."""
    from turbolm.tokenizer import Tokenizer

    return tokenizer.model if isinstance(tokenizer, Tokenizer) else tokenizer


class HFChatTemplate(BaseModel):
    """The tokenizer's own Jinja chat_template, rendered by transformers (`tokenizer` is a
    turbolm.tokenizer.Tokenizer or a transformers tokenizer). An incremental round is the text
    the template puts after a finished assistant answer, found with a sentinel answer."""

    _SENTINEL = "\x00turbolm-answer\x00"

    def __init__(self, tokenizer, stop_words: Optional[List[str]] = None, **kwargs):
        hf = _hf_tokenizer(tokenizer)
        if not getattr(hf, "chat_template", None):
            raise ValueError("the tokenizer has no chat_template")
        self.hf = hf
        words = stop_words
        if words is None:  # every end-of-turn token (generation_config.json's eos list, GGUF eos / eot)
            from turbolm.tokenizer import Tokenizer

            if isinstance(tokenizer, Tokenizer):
                ids = tokenizer.eos_token_ids
            else:
                ids = [] if getattr(hf, "eos_token_id", None) is None else [hf.eos_token_id]
            words = [hf.convert_ids_to_tokens(int(i)) for i in ids]
        super().__init__(stop_words=words, **kwargs)

    def _render(self, messages: List[dict], add_generation_prompt: bool) -> str:
        return self.hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)

    def get_prompt(self, prompt, sequence_start=True):
        if self.capability == "completion":
            return prompt
        msgs = [] if self.system is None else [{"role": "system", "content": self.system}]
        if sequence_start:
            return self._render(msgs + [{"role": "user", "content": prompt}], True)
        full = self._render(msgs + [{"role": "user", "content": "hi"},
                                    {"role": "assistant", "content": self._SENTINEL},
                                    {"role": "user", "content": prompt}], True)
        return full[full.index(self._SENTINEL) + len(self._SENTINEL):]

    def messages2prompt(self, messages, sequence_start=True):
        if isinstance(messages, str):
            return self.get_prompt(messages, sequence_start)
        msgs = [{"role": m["role"], "content": message_text(m.get("content"))} for m in messages]
        if self.system is not None and not any(m["role"] == "system" for m in msgs):
            msgs.insert(0, {"role": "system", "content": self.system})
        return self._render(msgs, msgs[-1]["role"] != "assistant")


def get_chat_template(name: Optional[str], tokenizer=None, prefer_tokenizer: bool = True, **kwargs) -> BaseModel:
    """The model's own Jinja chat_template when its tokenizer ships one (the default: hand-written
    templates drift from the ones models are trained with); the registered template `name` when
    the tokenizer has none or `prefer_tokenizer` is False (a name given explicitly); else `base`."""
    has_own = tokenizer is not None and bool(getattr(_hf_tokenizer(tokenizer), "chat_template", None))
    if name in MODELS and not (prefer_tokenizer and has_own):
        return MODELS[name](**kwargs)
    if has_own:
        return HFChatTemplate(tokenizer, **kwargs)
    return BaseModel(**kwargs)
