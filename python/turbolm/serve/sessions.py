"""Interactive sessions: multi-round chats whose history stays in the engine's KV cache.

State per session id (held by the server, not the client): `step`, the number of tokens the
session's history holds; `round`, the round running on it (None when idle); `owner`, the API key
that created it; `last_used`, for expiry.

    (none) --new_id / first round--> idle --begin_round--> busy --round over--> idle (step grows)
    idle|busy --end / expiry--> gone (a running round is cancelled first)

Ids. `session_id = -1` asks the server for a new session: it draws a random id in
[USER_IDS, SERVER_IDS) (2**40 .. 2**62, 61 bits of `secrets`), unguessable, and reserves it in
the table before it answers, so concurrent requests never share one. A client may also name its
own id below 2**40 (LMDeploy's API), which it must keep secret itself. Either way a session
belongs to the API key that created it; another key gets 404, as if it did not exist.

Concurrency. Everything here runs on the event loop thread, and each check-and-claim happens
without an `await` in between, so two rounds on one session cannot both start: the second gets
409 `session_busy`. A round that is claimed but never iterated (a client gone before its
streaming response started) is released when its generator is garbage-collected.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
import time
import weakref
from typing import AsyncIterator, Dict, List, Optional, Union

from turbolm.serve.async_engine import (MAX_USER_SESSION_ID, SERVER_SESSION_IDS, AsyncEngine, Chunk, EngineError,
                                        GenParams)
from turbolm.serve.errors import APIError

log = logging.getLogger("turbolm.serve")


@dataclasses.dataclass(eq=False)
class Round:
    """One accepted round, from begin_round() to the end of its generator."""
    session_id: int
    ids: List[int]
    start: bool
    step: int


@dataclasses.dataclass
class Session:
    owner: Optional[str] = None
    step: int = 0  # tokens in the history
    round: Optional[Round] = None  # the running round; None when idle
    last_used: float = dataclasses.field(default_factory=time.monotonic)

    @property
    def busy(self) -> bool:
        return self.round is not None


class Sessions:
    def __init__(self, engine: AsyncEngine, ttl: float = 1800.0):
        self.engine = engine
        self.ttl = float(ttl)  # idle seconds before a session is ended; <= 0: never
        self.table: Dict[int, Session] = {}
        self._reaper: Optional[asyncio.Task] = None

    # -- ids --------------------------------------------------------------------------------
    def new_id(self, owner: Optional[str]) -> int:
        """A fresh unguessable id, reserved (in the table, idle, empty) before it is returned."""
        lo, hi = SERVER_SESSION_IDS
        while True:
            sid = lo + secrets.randbelow(hi - lo)
            if sid not in self.table and sid not in self.engine.running:
                self.table[sid] = Session(owner=owner)
                return sid

    def lookup(self, session_id: int, owner: Optional[str], create: bool) -> Session:
        """The session `session_id` as seen by `owner`; 400 for an id no client may name, 404 for
        one that does not exist (or belongs to another key)."""
        sid = int(session_id)
        s = self.table.get(sid)
        if s is not None:
            if s.owner != owner:
                raise APIError(404, f"session {sid} not found", "session_not_found", "session_id")
            return s
        if 0 <= sid < MAX_USER_SESSION_ID:
            if not create:
                raise APIError(404, f"session {sid} not found", "session_not_found", "session_id")
            if sid in self.engine.running:  # a stateless request named this id
                raise APIError(409, f"session {sid} is in use by another request", "session_busy", "session_id")
            s = self.table[sid] = Session(owner=owner)
            return s
        lo, hi = SERVER_SESSION_IDS
        if lo <= sid < hi:  # handed out once, since ended or expired
            raise APIError(404, f"session {sid} not found (ended or expired); start a new one with "
                                "session_id -1", "session_not_found", "session_id")
        raise APIError(400, f"session_id must be -1 (a new session), an id this server handed out, or "
                            f"an id of your own in [0, {MAX_USER_SESSION_ID})", "invalid_value", "session_id")

    def step(self, session_id: int) -> int:
        s = self.table.get(session_id)
        return s.step if s else 0

    # -- control ----------------------------------------------------------------------------
    def stop(self, session_id: int) -> None:
        s = self.table.get(session_id)
        if s is not None and s.busy:
            self.engine.cancel(session_id)

    def end(self, session_id: int) -> None:
        s = self.table.pop(session_id, None)
        if s is not None:
            if s.busy:
                self.engine.cancel(session_id)
            self.engine.end(session_id)

    # -- rounds -----------------------------------------------------------------------------
    async def begin_round(self, session: Session, session_id: int, prompt: Union[str, List[dict]]) -> Round:
        """Claims the session for one round: -> the Round (input ids, sequence_start, step).
        Raises APIError: 409 when a round is running (or starts while this prompt is being
        tokenized), 400 when the messages are malformed or the round would not fit in the session
        length. A refused round changes nothing, and a session with no history yet (just handed out
        or named) is forgotten with its refused first round. Tokenizing runs in a worker thread."""
        try:
            return await self._claim(session, session_id, prompt)
        except APIError:
            if self.table.get(session_id) is session and session.step == 0 and not session.busy:
                del self.table[session_id]
            raise

    async def _claim(self, session: Session, session_id: int, prompt: Union[str, List[dict]]) -> Round:
        def busy():
            return APIError(409, f"session {session_id} is busy with a running request; wait for it or stop it",
                            "session_busy", "session_id")

        if session.busy:
            raise busy()
        if not isinstance(prompt, str) and not prompt:
            raise APIError(400, "prompt: an empty message list has nothing to answer", "invalid_value", "prompt")
        step = 0 if not isinstance(prompt, str) else session.step  # a whole history replaces the session's
        try:
            text = (self.engine.template.messages2prompt(prompt) if not isinstance(prompt, str)
                    else self.engine.template.get_prompt(prompt, sequence_start=step == 0))
        except (ValueError, IndexError, KeyError) as e:
            raise APIError(400, f"bad prompt: {e}", "invalid_value", "prompt") from None
        before = session.step
        ids = await self.engine.encode_async(text, add_bos=step == 0)
        # The await let other requests run: claim only if nobody took or changed the session.
        if session.busy or session.step != before or self.table.get(session_id) is not session:
            raise busy()
        if step + len(ids) >= self.engine.session_len:
            raise APIError(400, f"session {session_id} would exceed the session length: {step} tokens of "
                                f"history + {len(ids)} of prompt >= {self.engine.session_len}; end the session",
                           "context_length_exceeded", "prompt")
        r = Round(session_id, ids, step == 0, step)
        session.round = r
        session.last_used = time.monotonic()
        return r

    def _release(self, session_id: int, r: Round) -> None:
        s = self.table.get(session_id)
        if s is not None and s.round is r:
            s.round = None
            s.last_used = time.monotonic()

    def run_round(self, r: Round, params: GenParams, interactive_mode: bool = True) -> AsyncIterator[Chunk]:
        """The round's chunks. interactive_mode=False: the session is ended after it. The claim
        is released when the generator ends, or when it is collected without ever running."""
        gen = self._run(r, params, interactive_mode)
        weakref.finalize(gen, self._release, r.session_id, r)
        return gen

    async def _run(self, r: Round, params: GenParams, interactive_mode: bool) -> AsyncIterator[Chunk]:
        sid = r.session_id
        s = self.table.get(sid)
        if s is None or s.round is not r:
            return  # ended (or taken over) between begin_round and now: submit nothing
        room = self.engine.session_len - r.step - len(r.ids)
        params = dataclasses.replace(params, max_new_tokens=max(0, min(params.max_new_tokens, room)))
        generated, refused = 0, False
        # Submitting happens synchronously in the first iteration, before any await, so once this
        # loop has started the engine holds the round's prompt (unless it refused it).
        inner = self.engine.generate(r.ids, params, session_id=sid, sequence_start=r.start, step=r.step,
                                     end_session=False)
        try:
            async for c in inner:
                generated = c.num_tokens
                if s.round is r:
                    s.step = r.step + len(r.ids) + generated
                yield c
        except EngineError:
            refused = generated == 0  # the engine kept nothing of this round: the history is unchanged
            raise
        finally:
            # Close the engine stream now, not when the collector gets to it: its request must be
            # cancelled and its id released before the session is free for the next round.
            await inner.aclose()
            if s.round is r and not refused:
                s.step = r.step + len(r.ids) + generated
            self._release(sid, r)
            if not interactive_mode:
                self.end(sid)

    # -- expiry -----------------------------------------------------------------------------
    def expire(self, now: Optional[float] = None) -> List[int]:
        """Ends every idle session unused for `ttl` seconds; -> their ids."""
        if self.ttl <= 0:
            return []
        now = time.monotonic() if now is None else now
        old = [sid for sid, s in self.table.items() if not s.busy and now - s.last_used >= self.ttl]
        for sid in old:
            self.end(sid)
        if old:
            log.info("expired %d idle interactive session(s)", len(old))
        return old

    def start_reaper(self) -> None:
        """Runs expire() periodically on the running loop (the server's lifespan starts it)."""
        if self.ttl <= 0 or self._reaper is not None:
            return
        period = min(max(self.ttl / 4, 0.05), 30.0)

        async def reap():
            while True:
                await asyncio.sleep(period)
                try:
                    self.expire()
                except Exception:  # noqa: BLE001 - the reaper must outlive one bad pass
                    log.exception("session expiry failed")

        self._reaper = asyncio.ensure_future(reap())

    async def stop_reaper(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            await asyncio.gather(self._reaper, return_exceptions=True)
            self._reaper = None
