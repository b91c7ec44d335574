"""AsyncEngine: the one bridge from asyncio to the engine, shared by the API server and Gradio.

Every request iterates `TurboMindInstance.async_stream_infer`, so all requests share the
engine's one persistent batch and no thread waits per request. A request that is abandoned
(client gone, stop string reached, task cancelled) cancels its engine request at once, and a
stateless request ends its session afterwards so its KV blocks are freed.

Session ids, three ranges that never meet:
  [0, 2**40)      ids that clients name themselves (LMDeploy's API);
  [2**40, 2**62)  interactive sessions the server hands out: random, unguessable (sessions.py);
  [2**62, 2**63)  stateless requests (one id per choice, from a counter here).
"""
from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import weakref
from typing import AsyncIterator, Dict, List, Optional, Sequence, Tuple

from turbolm.serve.textstream import TextStream

log = logging.getLogger("turbolm.serve")

_INLINE_CHARS = 4096  # texts shorter than this in all are tokenized on the event loop
MAX_USER_SESSION_ID = 1 << 40
SERVER_SESSION_IDS = (1 << 40, 1 << 62)
_stateless_ids = itertools.count(1 << 62)


class EngineError(RuntimeError):
    """The engine finished a request with finish_reason 'error'."""


@dataclasses.dataclass
class GenParams:
    max_new_tokens: int = 512
    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 40  # <= 0: no top-k cut
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: Dict[int, float] = dataclasses.field(default_factory=dict)
    ignore_eos: bool = False  # also: the chat template's end-of-turn tokens do not stop
    seed: Optional[int] = None
    stop: List[str] = dataclasses.field(default_factory=list)  # stop strings (text side + token side)
    logprobs: bool = False  # raw logprob of each generated token
    top_logprobs: int = 0  # with logprobs: alternatives per generated token (<= 20)
    prompt_logprobs: Optional[int] = None  # score the prompt, with this many alternatives per token
    grammar: Optional[object] = None  # structured output: a serve.grammar.Matcher of its own


TopLogprobs = List[List[Tuple[int, float]]]


@dataclasses.dataclass
class Chunk:
    text: str  # new text (stop strings cut out)
    token_ids: List[int]  # new ids
    logprobs: Optional[List[float]]  # of the new ids
    num_tokens: int  # ids generated so far
    finish_reason: Optional[str] = None  # None while running; 'stop' | 'length' | 'cancelled'
    top_logprobs: Optional[TopLogprobs] = None  # of the new ids, with top_logprobs > 0
    # with prompt_logprobs, on the first chunk: (logprobs, alternatives) of prompt tokens 1..
    prompt_logprobs: Optional[Tuple[List[float], Optional[TopLogprobs]]] = None
    cached_tokens: int = 0  # prompt tokens whose K/V the prefix cache supplied (known from the first chunk)


_FINISH = {"stop": "stop", "length": "length", "cancelled": "cancelled"}


class AsyncEngine:
    def __init__(self, tm):
        self.tm = tm
        self.tokenizer = tm.tokenizer
        self.template = tm.model
        self.session_len = int(tm.session_len)
        self.model_name = tm.model_name
        self._template_stop_ids = self.tokenizer.stop_words_to_ids(getattr(self.template, "stop_words", []))
        # session id -> a token of the request in flight on it (identity only: a late release of
        # an older request must not free a newer one's id)
        self.running: Dict[int, object] = {}
        self.metrics = None  # serve.metrics.Metrics when a server exports /metrics
        self.requests_total = 0
        self._structured = None

    @property
    def structured(self):
        """Grammar compiler and mask workers (serve/structured.py), made on first use."""
        if self._structured is None:
            from turbolm.serve.structured import StructuredOutput

            self._structured = StructuredOutput(self.tokenizer.model, int(self.tm.config["vocab_size"]),
                                                int(self.tm.eos_id))
        return self._structured

    @classmethod
    def from_path(cls, model_path: str, tp: int = 1, instance_num: Optional[int] = None,
                  model_name: Optional[str] = None, **kwargs) -> "AsyncEngine":
        from turbolm import turbomind as tm

        return cls(tm.TurboMind.from_pretrained(model_path, model_name=model_name, tp=tp,
                                                max_batch_size=instance_num, **kwargs))

    def close_structured(self) -> None:
        """Stops the grammar mask workers, if any ran (server shutdown)."""
        if self._structured is not None:
            self._structured.close()

    # -- ids --------------------------------------------------------------------------------
    @staticmethod
    def new_session_id() -> int:
        return next(_stateless_ids)

    def _release(self, sid: int, claim: object) -> None:
        if self.running.get(sid) is claim:
            del self.running[sid]

    def encode(self, text: str, add_bos: bool = True) -> List[int]:
        return self.tokenizer.encode(text, add_bos=add_bos)

    async def encode_async(self, text: str, add_bos: bool = True) -> List[int]:
        """encode() in a worker thread: the tokenizer releases the GIL, so a huge prompt does not
        stall the event loop (and every other client's stream) while it is tokenized."""
        return (await self.encode_many_async([text], add_bos))[0]

    async def encode_many_async(self, texts: Sequence[str], add_bos: bool = True) -> List[List[int]]:
        """Several texts, in one worker-thread hop when they are long together."""
        if sum(len(t) for t in texts) < _INLINE_CHARS:  # a thread hop costs more than a short text
            return [self.encode(t, add_bos=add_bos) for t in texts]
        return await asyncio.to_thread(lambda: [self.encode(t, add_bos=add_bos) for t in texts])

    def stop_ids(self, stop: Sequence[str], ignore_eos: bool = False) -> List[List[int]]:
        """The request's stop strings as token ids, plus the template's end-of-turn tokens unless
        ignore_eos (then only the request's own stop strings end it early)."""
        extra = self.tokenizer.stop_words_to_ids(stop)
        base = [] if ignore_eos else self._template_stop_ids
        return base + [s for s in extra if s not in base]

    # -- control ----------------------------------------------------------------------------
    def cancel(self, session_id: int) -> None:
        self.tm.create_instance().cancel(session_id)

    def end(self, session_id: int) -> None:
        self.tm.create_instance().end(session_id)

    def stats(self) -> dict:
        out = dict(self.tm.stats())
        out.update(requests_running=len(self.running), requests_total=self.requests_total)
        return out

    # -- generation -------------------------------------------------------------------------
    def generate(self, input_ids: List[int], params: GenParams, session_id: Optional[int] = None,
                 sequence_start: bool = True, step: int = 0, end_session: bool = True) -> AsyncIterator[Chunk]:
        """Stream one request (see _generate). The session id is marked running from this call on,
        and the mark goes when the stream ends, or when it is collected without ever running."""
        sid = self.new_session_id() if session_id is None else int(session_id)
        if sid in self.running:
            raise EngineError(f"session {sid}: busy: a request of this session is still running")
        claim = self.running[sid] = object()
        gen = self._generate(input_ids, params, sid, claim, sequence_start, step, end_session)
        weakref.finalize(gen, self._release, sid, claim)
        return gen

    async def _generate(self, input_ids: List[int], params: GenParams, sid: int, claim: object,
                        sequence_start: bool, step: int, end_session: bool) -> AsyncIterator[Chunk]:
        """Stream one request. `end_session=False` keeps the session's KV cache for a next round
        (interactive sessions); otherwise the session is ended when the request is over, however
        it ends. Raises EngineError when the engine reports an error."""
        inst = self.tm.create_instance()
        text = TextStream(self.tokenizer, params.stop)
        mask = self.structured.attach(params.grammar) if params.grammar is not None else None
        timer = self.metrics.request_timer(len(input_ids)) if self.metrics is not None else None
        agen = inst.async_stream_deltas(
            sid, input_ids, request_output_len=int(params.max_new_tokens), sequence_start=sequence_start,
            sequence_end=False, step=step, top_k=int(params.top_k), top_p=float(params.top_p),
            temperature=float(params.temperature), repetition_penalty=float(params.repetition_penalty),
            ignore_eos=bool(params.ignore_eos), random_seed=params.seed,
            stop_words=self.stop_ids(params.stop, params.ignore_eos), logprobs=bool(params.logprobs),
            presence_penalty=float(params.presence_penalty), frequency_penalty=float(params.frequency_penalty),
            logit_bias=dict(params.logit_bias), top_logprobs=int(params.top_logprobs if params.logprobs else 0),
            prompt_logprobs=-1 if params.prompt_logprobs is None else int(params.prompt_logprobs),
            **({} if mask is None else {"token_mask": mask}))
        self.requests_total += 1
        seen, finished = 0, False
        try:
            async for d in agen:
                new, finish_reason = d.token_ids, d.finish_reason
                seen += len(new)
                if timer is not None:
                    timer.tokens(len(new))
                lps = d.logprobs if params.logprobs else None
                extra = dict(top_logprobs=d.top_logprobs, prompt_logprobs=d.prompt_logprobs,
                             cached_tokens=d.cached_tokens)
                if finish_reason == "error":
                    finished = True
                    raise EngineError(d.error or "the engine failed the request")
                piece, hit = text.push(new)
                if hit:
                    finished = False  # still running in the engine: cancelled below
                    yield Chunk(piece, new, lps, seen, "stop", **extra)
                    return
                if finish_reason:
                    finished = True
                    rest, hit = text.finish()
                    reason = "stop" if hit else _FINISH.get(finish_reason, finish_reason)
                    yield Chunk(piece + rest, new, lps, seen, reason, **extra)
                    return
                if piece or new:
                    yield Chunk(piece, new, lps, seen, None, **extra)
        finally:
            if mask is not None:
                self.structured.detach(mask.tag)
            self._release(sid, claim)
            if not finished:
                inst.cancel(sid)
            try:
                await agen.aclose()
            except BaseException:  # noqa: BLE001 - cleanup must not mask the original exit
                pass
            if end_session:
                inst.end(sid)
