"""AsyncEngine: the one bridge from asyncio to the engine, shared by the API server and Gradio.

Every request iterates `TurboMindInstance.async_stream_infer`, so all requests share the
engine's one persistent batch and no thread waits per request. A request that is abandoned
(client gone, stop string reached, task cancelled) cancels its engine request at once, and a
stateless request ends its session afterwards so its KV blocks are freed.

Session ids: stateless requests get ids from the engine's allocator (1 << 40 upward); ids that
clients pick for interactive sessions must stay below `MAX_USER_SESSION_ID`, so the two never meet.
"""
from __future__ import annotations

import dataclasses
import itertools
import logging
from typing import AsyncIterator, Dict, List, Optional, Sequence

from turbolm.serve.textstream import TextStream

log = logging.getLogger("turbolm.serve")

MAX_USER_SESSION_ID = 1 << 40

try:  # the engine's own allocator, so ids stay unique within the process
    from turbolm.turbomind.turbomind import new_session_id as _new_session_id
except Exception:  # pragma: no cover - engine not built
    _counter = itertools.count(MAX_USER_SESSION_ID)

    def _new_session_id() -> int:
        return next(_counter)


class EngineError(RuntimeError):
    """The engine finished a request with finish_reason 'error'."""


@dataclasses.dataclass
class GenParams:
    max_new_tokens: int = 512
    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 40  # <= 0: no top-k cut
    repetition_penalty: float = 1.0
    ignore_eos: bool = False
    seed: Optional[int] = None
    stop: List[str] = dataclasses.field(default_factory=list)  # stop strings (text side + token side)
    logprobs: bool = False


@dataclasses.dataclass
class Chunk:
    text: str  # new text (stop strings cut out)
    token_ids: List[int]  # new ids
    logprobs: Optional[List[float]]  # of the new ids
    num_tokens: int  # ids generated so far
    finish_reason: Optional[str] = None  # None while running; 'stop' | 'length' | 'cancelled'


_FINISH = {"stop": "stop", "length": "length", "cancelled": "cancelled"}


class AsyncEngine:
    def __init__(self, tm):
        self.tm = tm
        self.tokenizer = tm.tokenizer
        self.template = tm.model
        self.session_len = int(tm.session_len)
        self.model_name = tm.model_name
        self._template_stop_ids = self.tokenizer.stop_words_to_ids(getattr(self.template, "stop_words", []))
        self.running: Dict[int, int] = {}  # session id -> ids generated so far (requests in flight)
        self.requests_total = 0

    @classmethod
    def from_path(cls, model_path: str, tp: int = 1, instance_num: Optional[int] = None,
                  model_name: Optional[str] = None, **kwargs) -> "AsyncEngine":
        from turbolm import turbomind as tm

        return cls(tm.TurboMind.from_pretrained(model_path, model_name=model_name, tp=tp,
                                                max_batch_size=instance_num, **kwargs))

    # -- ids --------------------------------------------------------------------------------
    @staticmethod
    def new_session_id() -> int:
        return _new_session_id()

    def encode(self, text: str, add_bos: bool = True) -> List[int]:
        return self.tokenizer.encode(text, add_bos=add_bos)

    def stop_ids(self, stop: Sequence[str]) -> List[List[int]]:
        extra = self.tokenizer.stop_words_to_ids(stop)
        return self._template_stop_ids + [s for s in extra if s not in self._template_stop_ids]

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
    async def generate(self, input_ids: List[int], params: GenParams, session_id: Optional[int] = None,
                       sequence_start: bool = True, step: int = 0, end_session: bool = True
                       ) -> AsyncIterator[Chunk]:
        """Stream one request. `end_session=False` keeps the session's KV cache for a next round
        (interactive sessions); otherwise the session is ended when the request is over, however
        it ends. Raises EngineError when the engine reports an error."""
        sid = self.new_session_id() if session_id is None else int(session_id)
        inst = self.tm.create_instance()
        text = TextStream(self.tokenizer, params.stop)
        agen = inst.async_stream_infer(
            sid, input_ids, request_output_len=int(params.max_new_tokens), sequence_start=sequence_start,
            sequence_end=False, step=step, top_k=int(params.top_k), top_p=float(params.top_p),
            temperature=float(params.temperature), repetition_penalty=float(params.repetition_penalty),
            ignore_eos=bool(params.ignore_eos), random_seed=params.seed, stream_output=True,
            stop_words=self.stop_ids(params.stop), logprobs=bool(params.logprobs))
        self.requests_total += 1
        self.running[sid] = 0
        seen, finished = 0, False
        try:
            async for outs in agen:
                out = outs[0]
                ids = out[0]
                new = list(ids[seen:])
                lps = list(out.logprobs[seen:len(ids)]) if params.logprobs and out.logprobs is not None else None
                seen = len(ids)
                self.running[sid] = seen
                if out.finish_reason == "error":
                    finished = True
                    raise EngineError(out.error or "the engine failed the request")
                piece, hit = text.push(new)
                if hit:
                    finished = False  # still running in the engine: cancelled below
                    yield Chunk(piece, new, lps, seen, "stop")
                    return
                if out.finish_reason is not None:
                    finished = True
                    rest, hit = text.finish()
                    reason = "stop" if hit else _FINISH.get(out.finish_reason, out.finish_reason)
                    yield Chunk(piece + rest, new, lps, seen, reason)
                    return
                if piece or new:
                    yield Chunk(piece, new, lps, seen, None)
        finally:
            self.running.pop(sid, None)
            if not finished:
                inst.cancel(sid)
            try:
                await agen.aclose()
            except BaseException:  # noqa: BLE001 - cleanup must not mask the original exit
                pass
            if end_session:
                inst.end(sid)

    async def generate_all(self, input_ids: List[int], params: GenParams, **kw) -> Chunk:
        """Run a request to the end; one Chunk with the whole text, ids and logprobs."""
        texts, ids, lps, last = [], [], [], Chunk("", [], None, 0, None)
        async for c in self.generate(input_ids, params, **kw):
            texts.append(c.text)
            ids.extend(c.token_ids)
            if c.logprobs is not None:
                lps.extend(c.logprobs)
            last = c
        return Chunk("".join(texts), ids, lps if params.logprobs else None, last.num_tokens, last.finish_reason)
