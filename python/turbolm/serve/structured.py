"""Structured output for an engine: grammars compiled by llguidance (serve/grammar.py), their
masks computed by worker threads and handed to the C++ engine as TokenMasks.

Per request: ``compile(spec)`` -> a Matcher (a bad spec is a GrammarError: the API's 400);
``attach(matcher)`` fills the mask of the first token and returns the TokenMask to submit with the
request; after each sampled token the engine queues a job (tag, token) and a worker here advances
the matcher and fills the next mask -- while the engine computes the next forward pass (see
runtime/engine/token_mask.h). ``detach(tag)`` when the request is over.

Threads: the workers block in C++ (MaskQueue.pop releases the GIL) and llguidance computes the
mask with the GIL released, so a worker costs the event loop only its few Python lines per token.
A matcher is touched by one worker at a time: the engine queues a sequence's next job only after
it used the previous mask.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import threading
from typing import Any, Dict, Optional

from turbolm import _turbomind
from turbolm.serve.grammar import GrammarCompiler, GrammarError, Matcher

log = logging.getLogger("turbolm.serve")

__all__ = ["StructuredOutput", "GrammarError"]


class StructuredOutput:
    def __init__(self, hf_tokenizer, vocab_size: int, eos_id: int, workers: int = 2):
        self._args = (hf_tokenizer, int(vocab_size), int(eos_id))
        self._compiler: Optional[GrammarCompiler] = None
        self._compiler_lock = threading.Lock()
        self.vocab_size = int(vocab_size)
        self.queue = _turbomind.MaskQueue()
        self._matchers: Dict[int, Matcher] = {}
        self._tags = itertools.count(1)
        self._threads = [threading.Thread(target=self._work, name=f"turbolm-mask-{i}", daemon=True)
                         for i in range(workers)]
        for t in self._threads:
            t.start()

    def compiler(self) -> GrammarCompiler:
        """Built on first use (llguidance's tokenizer takes ~0.3 s for a 49k vocabulary)."""
        with self._compiler_lock:
            if self._compiler is None:
                self._compiler = GrammarCompiler(*self._args)
            return self._compiler

    async def compile(self, spec: Dict[str, Any]) -> Matcher:
        """spec -> Matcher, off the event loop (llguidance releases the GIL while it builds)."""
        return await asyncio.to_thread(lambda: self.compiler().compile(spec))

    def attach(self, matcher: Matcher):
        """The TokenMask for a request constrained by `matcher`, its first mask filled."""
        tag = next(self._tags)
        mask = _turbomind.TokenMask(self.vocab_size, self.queue, tag)
        matcher.fill_mask(mask.buffer())
        self._matchers[tag] = matcher
        mask.publish()
        return mask

    def detach(self, tag: int) -> None:
        self._matchers.pop(tag, None)

    def close(self) -> None:
        """Fail the masks still pending; the workers exit."""
        self.queue.close()
        for t in self._threads:
            t.join(timeout=5)

    def _work(self) -> None:
        while True:
            job = self.queue.pop(-1)
            if job is None:  # closed
                return
            tag, token, mask = job
            matcher = self._matchers.get(tag)
            if matcher is None:  # the request is over (cancelled): nobody waits for this mask
                mask.publish(False, "the request ended")
                continue
            try:
                matcher.consume(token)
                matcher.fill_mask(mask.buffer())  # after an error: EOS only, so the sequence ends
                mask.publish()
            except GrammarError as e:
                # the engine sampled from this matcher's own mask, so only an end token (stop
                # string, eos) can land here; the mask of EOS only ends the sequence cleanly
                matcher.fill_mask(mask.buffer())
                mask.publish()
                log.debug("grammar: %s", e)
            except Exception as e:  # noqa: BLE001 - any failure ends that request, not the worker
                log.exception("structured output worker failed")
                mask.publish(False, f"{type(e).__name__}: {e}")
