"""TextStream: streamed token ids -> text, with OpenAI stop strings cut out.

The engine matches stop *token sequences*, but a stop string can be tokenized differently in
context (" Citizen" vs "Citizen", merged with a neighbour), so the text side matches too: text is
released only when no stop string can still begin in it, and a match ends the stream with the
text before it. Released pieces never hold a split UTF-8 character (IncrementalDetokenizer)."""
from __future__ import annotations

from typing import Optional, Sequence, Tuple


class TextStream:
    def __init__(self, tokenizer, stop: Optional[Sequence[str]] = None):
        self.detok = tokenizer.detokenizer()
        self.stop = [s for s in (stop or ()) if s]
        self.pending = ""  # decoded but not released: may be the start of a stop string
        self.stopped = False

    def _release(self, final: bool) -> str:
        hits = [i for i in (self.pending.find(s) for s in self.stop) if i >= 0]
        if hits:
            out, self.pending, self.stopped = self.pending[:min(hits)], "", True
            return out
        keep = 0 if final else self._partial_suffix()
        cut = len(self.pending) - keep
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return out

    def _partial_suffix(self) -> int:
        """Length of the longest end of `pending` that is a proper prefix of some stop string."""
        best = 0
        for s in self.stop:
            for k in range(min(len(s) - 1, len(self.pending)), best, -1):
                if self.pending.endswith(s[:k]):
                    best = k
                    break
        return best

    def push(self, new_ids: Sequence[int]) -> Tuple[str, bool]:
        """-> (text to release now, whether a stop string was reached)."""
        if self.stopped:
            return "", True
        self.pending += self.detok.step(new_ids)
        return self._release(final=False), self.stopped

    def finish(self) -> Tuple[str, bool]:
        """At the end of generation: the rest of the text (held-back characters included)."""
        if self.stopped:
            return "", True
        self.pending += self.detok.flush()
        return self._release(final=True), self.stopped
