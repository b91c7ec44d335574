"""TurboMind and TurboMindInstance: thin Python over the C++ Engine (turbolm._turbomind).

Threads: the C++ engine thread runs the persistent batch; Python only submits requests and
reads streams. ``stream_infer`` blocks in C++ with the GIL released; ``async_stream_infer``
waits on an eventfd that the engine writes, so asyncio servers need no helper threads. An
abandoned stream (generator closed, client gone) cancels its request.
"""
from __future__ import annotations

import asyncio
import itertools
import os
import weakref
from typing import Any, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple, Union

from turbolm import _turbomind
from turbolm.config import read_config_ini
from turbolm.errors import UserError

from .resolve import resolve_workspace

IdsArg = Union[Sequence[int], Sequence[Sequence[int]]]


TopLogprobs = List[List[Tuple[int, float]]]  # per token: [(id, logprob)], most probable first


class GenOut(tuple):
    """``(token_ids, length)`` of one request so far, with ``finish_reason`` (None while
    running, else 'stop' | 'length' | 'cancelled' | 'error'), ``error`` and, when asked for,
    ``logprobs`` (of each token), ``top_logprobs`` (the alternatives of each token) and
    ``prompt_logprobs`` (``(logprobs, top_logprobs)`` of prompt tokens 1..). Every logprob is
    log-softmax of the raw model logits: before bias, penalties and temperature."""

    finish_reason: Optional[str]
    error: Optional[str]
    logprobs: Optional[List[float]]
    top_logprobs: Optional[TopLogprobs]
    prompt_logprobs: Optional[Tuple[List[float], Optional[TopLogprobs]]]
    cached_tokens: int

    def __new__(cls, token_ids, finish_reason=None, error=None, logprobs=None, top_logprobs=None,
                prompt_logprobs=None, cached_tokens=0):
        self = super().__new__(cls, (list(token_ids), len(token_ids)))
        self.finish_reason = finish_reason or None
        self.error = error or None
        self.logprobs = logprobs
        self.top_logprobs = top_logprobs
        self.prompt_logprobs = prompt_logprobs
        self.cached_tokens = cached_tokens  # input tokens whose K/V came from the prefix cache
        return self


class Delta(NamedTuple):
    """What async_stream_deltas yields: the tokens since the previous yield and their logprobs."""
    token_ids: List[int]
    logprobs: List[float]
    finish_reason: str  # '' while running
    error: str
    top_logprobs: Optional[TopLogprobs]  # None unless top_logprobs > 0
    prompt_logprobs: Optional[Tuple[List[float], Optional[TopLogprobs]]]  # once, with the first yield
    cached_tokens: int = 0  # input tokens whose K/V came from the prefix cache


class TurboMind:
    """A loaded model: the engine, its tokenizer and its chat template."""

    def __init__(self, weights_dir: str, model_name: Optional[str] = None, tp: int = 1, *,
                 max_batch_size: Optional[int] = None, session_len: Optional[int] = None,
                 cache_max_entry_count: Optional[float] = None, max_context_token_num: Optional[int] = None,
                 num_threads: Optional[int] = None, chat_template_from_tokenizer: bool = False,
                 act_type: Optional[str] = None):
        """``act_type``: None runs the workspace's; 'float', 'int8' or 'bf16' override it (int8
        needs an int4/int8 workspace: activations quantized per token in blocks of 32, int8 dot
        products; bf16 an fp16/bf16 workspace and a CPU with AVX512-BF16: bf16 dot products)."""
        self.weights_dir = weights_dir
        self.config: Dict[str, Any] = read_config_ini(os.path.join(weights_dir, "config.ini"))
        if act_type not in (None, "float", "int8", "bf16"):
            raise UserError(f"act_type {act_type!r} is not one of float, int8, bf16")
        self.engine = _turbomind.Engine(
            weights_dir, tp=tp or 0, num_threads=num_threads or 0, max_batch_size=max_batch_size or 0,
            session_len=session_len or 0, max_context_token_num=max_context_token_num or 0,
            cache_max_entry_count=-1.0 if cache_max_entry_count is None else float(cache_max_entry_count),
            act_type=act_type or "")
        self.act_type = act_type or self.config["act_type"]
        self.tp = tp
        self.session_len = session_len or self.config["session_len"]
        self.eos_id = self.config["end_id"]
        self.tokenizer_dir = os.path.join(os.path.dirname(weights_dir.rstrip("/")), "tokenizer")
        from turbolm.tokenizer import Tokenizer

        self.tokenizer = Tokenizer(self.tokenizer_dir)
        self.model_name = model_name or self.config["model_name"]
        # The checkpoint's own chat template unless a model_name was asked for (then that one).
        self.model = self._chat_template(self.model_name, chat_template_from_tokenizer or model_name is None)

    def _chat_template(self, name: str, from_tokenizer: bool):
        from turbolm import model as templates

        return templates.get_chat_template(name, self.tokenizer, prefer_tokenizer=from_tokenizer)

    @classmethod
    def from_pretrained(cls, path: str, model_name: Optional[str] = None, tp: int = 1, **kwargs) -> "TurboMind":
        """``path``: a workspace, an HF model directory or a .gguf file (converted once into
        ~/.cache/turbolm/workspaces). ``model_name`` picks the chat template; by default the
        workspace's, or for a converted source the tokenizer's own chat_template."""
        weights_dir, converted = resolve_workspace(path, model_name)
        if converted and model_name is None:
            kwargs.setdefault("chat_template_from_tokenizer", True)
        return cls(weights_dir, model_name=model_name, tp=tp, **kwargs)

    def create_instance(self, cuda_stream_id: int = 0) -> "TurboMindInstance":
        return TurboMindInstance(self)

    def get_ppl(self, input_ids: Sequence[Sequence[int]]) -> List[float]:
        """Perplexity of each sequence (exp of the mean next-token NLL), computed in C++."""
        return self.engine.get_ppl([list(map(int, ids)) for ids in input_ids])

    def stats(self) -> Dict[str, int]:
        return self.engine.stats()


# Sampling settings beyond the reference signature, taken as keyword arguments; any other keyword
# is a TypeError (never accepted and ignored).
_EXTRAS = {"presence_penalty": float, "frequency_penalty": float, "top_logprobs": int, "prompt_logprobs": int}


def _sampling_extras(kwargs: Dict[str, Any]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for k, v in kwargs.items():
        if k in _EXTRAS:
            out[k] = _EXTRAS[k](v)
        elif k == "logit_bias":  # {token id: bias}; -100 bans the token
            out[k] = [(int(t), float(b)) for t, b in dict(v or {}).items()]
        elif k == "token_mask":  # structured output: a _turbomind.TokenMask (serve/structured.py)
            out[k] = v
        else:
            raise TypeError(f"unexpected keyword argument {k!r}; sampling settings are top_k, top_p, temperature, "
                            f"repetition_penalty, presence_penalty, frequency_penalty, logit_bias, top_logprobs, "
                            f"prompt_logprobs, ...")
    return out


class TurboMindInstance:
    """A handle for submitting requests; any number may share one TurboMind, from any thread."""

    def __init__(self, tm: TurboMind):
        self.tm = tm
        self.engine = tm.engine

    # -- session control -----------------------------------------------------------------
    def cancel(self, session_id: int) -> None:
        self.engine.stop(int(session_id), False)

    def end(self, session_id: int) -> None:
        self.engine.end(int(session_id))

    # -- generation ------------------------------------------------------------------------
    def _submit(self, session_id, input_ids, request_output_len, sequence_start, sequence_end, step, top_k, top_p,
                temperature, repetition_penalty, ignore_eos, random_seed, stop_words, logprobs, extra=None):
        ids = list(input_ids)
        if ids and isinstance(ids[0], (list, tuple)):
            if len(ids) != 1:
                raise ValueError("stream_infer takes one sequence per call; use one instance call per session")
            ids = list(ids[0])
        if request_output_len is None or int(request_output_len) < 0:
            raise ValueError(f"request_output_len must be >= 0, got {request_output_len}")
        gen = dict(max_new_tokens=int(request_output_len), top_k=int(top_k), top_p=float(top_p),
                   temperature=float(temperature), repetition_penalty=float(repetition_penalty),
                   ignore_eos=bool(ignore_eos), logprobs=bool(logprobs),
                   stop_sequences=[list(map(int, s)) for s in (stop_words or []) if len(s)])
        gen.update(_sampling_extras(extra or {}))
        # The engine treats every seed, 0 included, as a real seed: draw one when none is given.
        seed = int.from_bytes(os.urandom(8), "little") if random_seed is None else int(random_seed)
        gen["random_seed"] = seed & 0xFFFFFFFFFFFFFFFF
        # `step` rewinds a continued session to `step` tokens; 0 (the default) appends.
        rewind = int(step) if (not sequence_start and step and step > 0) else -1
        return self.engine.submit(int(session_id), [int(t) for t in ids], bool(sequence_start), bool(sequence_end),
                                  rewind, gen)

    def stream_infer(self, session_id: int, input_ids: IdsArg, request_output_len: int = 512,
                     sequence_start: bool = True, sequence_end: bool = False, step: int = 0, stop: bool = False,
                     top_k: int = 40, top_p: float = 0.8, temperature: float = 0.8,
                     repetition_penalty: float = 1.0, ignore_eos: bool = False, random_seed: Optional[int] = None,
                     stream_output: bool = True, stop_words: Optional[List[List[int]]] = None,
                     logprobs: bool = False, **kwargs) -> Iterator[List[GenOut]]:
        """Yields ``[GenOut]`` as tokens arrive (only the final one when stream_output=False).
        ``stop=True`` cancels the session's running request and yields nothing."""
        if stop:
            self.cancel(session_id)
            return
        stream = self._submit(session_id, input_ids, request_output_len, sequence_start, sequence_end, step, top_k,
                              top_p, temperature, repetition_penalty, ignore_eos, random_seed, stop_words, logprobs,
                              kwargs)
        ids: List[int] = []
        acc = _Accum(logprobs)
        done = False
        try:
            while not done:
                # A timeout keeps Ctrl-C responsive; only the new tail crosses from C++.
                new_ids, new_lps, finish, error, total, tops, prompt, cached = stream.wait_tail(len(ids), 200)
                ids.extend(new_ids)
                acc.add(new_lps, tops, prompt, cached)
                done = bool(finish)
                if done or (stream_output and new_ids):
                    yield [acc.out(ids, finish, error)]
                # without stream_output: wait for the next token, never spin
        finally:
            if not done:
                self.cancel(session_id)

    async def async_stream_infer(self, session_id: int, input_ids: IdsArg, request_output_len: int = 512,
                                 sequence_start: bool = True, sequence_end: bool = False, step: int = 0,
                                 stop: bool = False, top_k: int = 40, top_p: float = 0.8, temperature: float = 0.8,
                                 repetition_penalty: float = 1.0, ignore_eos: bool = False,
                                 random_seed: Optional[int] = None, stream_output: bool = True,
                                 stop_words: Optional[List[List[int]]] = None, logprobs: bool = False, **kwargs):
        """The asyncio twin of stream_infer: waits on the loop's Notifier, never on a thread."""
        if stop:
            self.cancel(session_id)
            return
        ids: List[int] = []
        acc = _Accum(logprobs)
        async for d in self.async_stream_deltas(
                session_id, input_ids, request_output_len, sequence_start, sequence_end, step, top_k, top_p,
                temperature, repetition_penalty, ignore_eos, random_seed, stop_words, logprobs, **kwargs):
            ids.extend(d.token_ids)
            acc.add(d.logprobs, d.top_logprobs, d.prompt_logprobs, d.cached_tokens)
            if d.finish_reason or stream_output:
                yield [acc.out(ids, d.finish_reason, d.error)]

    async def async_stream_deltas(self, session_id: int, input_ids: IdsArg, request_output_len: int = 512,
                                  sequence_start: bool = True, sequence_end: bool = False, step: int = 0,
                                  top_k: int = 40, top_p: float = 0.8, temperature: float = 0.8,
                                  repetition_penalty: float = 1.0, ignore_eos: bool = False,
                                  random_seed: Optional[int] = None, stop_words: Optional[List[List[int]]] = None,
                                  logprobs: bool = False, **kwargs):
        """What servers use: yields a ``Delta`` with only the tokens since the previous yield
        (several when the reader fell behind), so the cost of a yield does not grow with the
        output. ``finish_reason`` is '' while running. Leaving the loop early (break, task
        cancelled) cancels the request."""
        waiter = _LoopWaiter.get(asyncio.get_running_loop())
        tag, event = waiter.register()
        stream = None
        done = False
        try:
            stream = self._submit(session_id, input_ids, request_output_len, sequence_start, sequence_end, step,
                                  top_k, top_p, temperature, repetition_penalty, ignore_eos, random_seed,
                                  stop_words, logprobs, kwargs)
            stream.set_notifier(waiter.notifier, tag)
            seen = 0
            while True:
                event.clear()  # before the read: a commit after it marks the tag again
                new_ids, new_lps, finish, error, total, tops, prompt, cached = stream.tail(seen)
                if seen:
                    prompt = None  # copied only while `seen` is 0: the first yield carries it
                seen = total
                if finish:
                    done = True
                    yield Delta(new_ids, new_lps, finish, error, tops, prompt, cached)
                    return
                if new_ids:
                    yield Delta(new_ids, new_lps, finish, error, tops, prompt, cached)
                await event.wait()
        finally:
            waiter.unregister(tag)
            if stream is not None:
                stream.set_notifier(None, 0)
                if not done:
                    self.cancel(session_id)


class _Accum:
    """Logprobs of one request, accumulated over its stream's reads."""

    def __init__(self, wanted: bool):
        self.wanted = wanted
        self.lps: List[float] = []
        self.tops: Optional[TopLogprobs] = None
        self.prompt = None
        self.cached = 0

    def add(self, lps, tops, prompt, cached=0) -> None:
        self.cached = max(self.cached, cached)
        self.lps.extend(lps)
        if tops is not None:
            if self.tops is None:
                self.tops = []
            self.tops.extend(tops)  # in place: a copy per read would cost O(n^2) over a long stream
        if prompt is not None and self.prompt is None:
            self.prompt = prompt

    def out(self, ids, finish, error) -> GenOut:
        if not self.wanted:
            return GenOut(ids, finish, error, prompt_logprobs=self.prompt, cached_tokens=self.cached)
        return GenOut(ids, finish, error, list(self.lps), None if self.tops is None else list(self.tops), self.prompt,
                      self.cached)


class _LoopWaiter:
    """One Notifier per asyncio loop: the engine marks the tags of streams with news and writes
    the eventfd once per step; one reader callback drains the tags and wakes those streams'
    tasks. So serving N streams costs one wake-up per engine step, not N eventfds and N syscalls."""

    _by_loop: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopWaiter]" = weakref.WeakKeyDictionary()

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.notifier = _turbomind.Notifier()
        self.events: Dict[int, asyncio.Event] = {}
        self._tags = itertools.count(1)
        loop.add_reader(self.notifier.fd, self._on_ready)

    @classmethod
    def get(cls, loop: asyncio.AbstractEventLoop) -> "_LoopWaiter":
        w = cls._by_loop.get(loop)
        if w is None:
            w = cls._by_loop[loop] = cls(loop)
        return w

    def register(self):
        tag = next(self._tags)
        ev = self.events[tag] = asyncio.Event()
        return tag, ev

    def unregister(self, tag: int) -> None:
        self.events.pop(tag, None)

    def _on_ready(self) -> None:
        events = self.events
        for tag in self.notifier.drain():
            ev = events.get(tag)
            if ev is not None:
                ev.set()
