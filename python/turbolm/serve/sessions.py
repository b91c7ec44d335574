"""Interactive sessions: multi-round chats whose history stays in the engine's KV cache.

State per session id (held by the server, not the client): `step`, the number of tokens the
session's history holds, and whether a request is running on it. Round k sends only its own
prompt (`get_prompt(text, sequence_start=step == 0)`) with `step` so the engine continues the
history exactly; `end` frees the session's blocks and forgets it.

    idle --chat--> running --finish/stop--> idle (step grows)
    idle|running --end--> gone (running requests are cancelled first)
"""
from __future__ import annotations

import dataclasses
from typing import AsyncIterator, Dict, List, Union

from turbolm.serve.async_engine import MAX_USER_SESSION_ID, AsyncEngine, Chunk, GenParams
from turbolm.serve.errors import APIError


@dataclasses.dataclass
class Session:
    step: int = 0  # tokens in the history
    busy: bool = False


class Sessions:
    def __init__(self, engine: AsyncEngine):
        self.engine = engine
        self.table: Dict[int, Session] = {}

    @staticmethod
    def check_id(session_id: int) -> int:
        if not 0 <= int(session_id) < MAX_USER_SESSION_ID:
            raise APIError(400, f"session_id must be in [0, {MAX_USER_SESSION_ID}) (or -1 for a new one)",
                           "invalid_value", "session_id")
        return int(session_id)

    def new_id(self) -> int:
        """A fresh interactive id: the smallest unused one from 1 (ids < 2**40 are the clients')."""
        sid = 1
        while sid in self.table:
            sid += 1
        return sid

    def step(self, session_id: int) -> int:
        s = self.table.get(session_id)
        return s.step if s else 0

    def stop(self, session_id: int) -> None:
        if session_id in self.table and self.table[session_id].busy:
            self.engine.cancel(session_id)

    def end(self, session_id: int) -> None:
        s = self.table.pop(session_id, None)
        if s is not None:
            if s.busy:
                self.engine.cancel(session_id)
            self.engine.end(session_id)

    def prepare(self, session_id: int, prompt: Union[str, List[dict]]):
        """-> (input ids, sequence_start, step) for the next round; raises APIError (400) when the
        session is busy, the messages are malformed, or the round would not fit in the session
        length. Nothing is recorded until the round is accepted: a refused round leaves no session."""
        s = self.table.get(session_id) or Session()
        if s.busy:
            raise APIError(400, f"session {session_id} is busy with a running request; stop it first",
                           "session_busy", "session_id")
        if not isinstance(prompt, str) and not prompt:
            raise APIError(400, "prompt: an empty message list has nothing to answer", "invalid_value", "prompt")
        step = 0 if not isinstance(prompt, str) else s.step  # a whole history replaces the session's
        try:
            text = (self.engine.template.messages2prompt(prompt) if not isinstance(prompt, str)
                    else self.engine.template.get_prompt(prompt, sequence_start=step == 0))
        except (ValueError, IndexError, KeyError) as e:
            raise APIError(400, f"bad prompt: {e}", "invalid_value", "prompt") from None
        ids = self.engine.encode(text, add_bos=step == 0)
        if step + len(ids) >= self.engine.session_len:
            raise APIError(400, f"session {session_id} would exceed the session length: {step} tokens of "
                                f"history + {len(ids)} of prompt >= {self.engine.session_len}; end the session",
                           "context_length_exceeded", "prompt")
        return ids, step == 0, step

    async def chat(self, session_id: int, prepared, params: GenParams,
                   interactive_mode: bool = True) -> AsyncIterator[Chunk]:
        """One round, from prepare()'s result. interactive_mode=False: the session is ended after it."""
        ids, start, step = prepared
        s = self.table.setdefault(session_id, Session())
        room = self.engine.session_len - step - len(ids)
        params = dataclasses.replace(params, max_new_tokens=max(0, min(params.max_new_tokens, room)))
        s.busy = True
        generated = 0
        try:
            async for c in self.engine.generate(ids, params, session_id=session_id, sequence_start=start,
                                                step=step, end_session=False):
                generated = c.num_tokens
                s.step = step + len(ids) + generated
                yield c
        finally:
            s.busy = False
            s.step = step + len(ids) + generated
            if not interactive_mode:
                self.end(session_id)
