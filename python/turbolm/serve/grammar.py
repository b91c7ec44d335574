"""Structured output: a request's grammar (JSON schema, regex, choice, lark/GBNF) -> a per-step
token mask, over llguidance (the grammar engine; we write none of our own).

- ``GrammarCompiler``: one per served model. Wraps the HF tokenizer into llguidance's
  ``LLTokenizer`` once (a token trie over the whole vocabulary, ~0.3 s for 49k tokens) and turns a
  request's spec into a ``Matcher``; a bad spec raises ``GrammarError`` (a ValueError) whose
  message is meant for the client's 400.
- ``Matcher``: one per sequence, used by one thread at a time. Each step: ``fill_mask(out)``, the
  sampler keeps only allowed ids, ``consume(id)``. The mask allows ``eos_id`` exactly when the
  output so far is a complete match, and nothing else once ``is_stopped()``.

Spec forms (``compile``):
  {"type": "json_object"}                                   any JSON object
  {"type": "json_schema", "json_schema": {"name", "schema", "strict"}}   OpenAI response_format
  {"type": "regex", "regex": "..."}                         vLLM guided_regex (Rust regex syntax)
  {"type": "choice", "choice": ["a", "b"]}                  vLLM guided_choice: exactly one string
  {"type": "grammar", "grammar": "..."}                     vLLM guided_grammar: llguidance lark,
                                                            or GBNF (converted by llguidance)

JSON whitespace: none outside strings, with the separators ``", "`` and ``": "`` (what
``json.dumps`` prints, the form models have seen most). Free whitespace lets a small model emit
newlines/spaces forever instead of closing the object; fixed separators cost nothing, since
they are forced bytes. A schema may still opt in via llguidance's ``"x-guidance":
{"whitespace_flexible": true}``, which overrides these defaults. ``strict`` is accepted and
ignored: the schema is always enforced exactly, which is what OpenAI's strict mode promises.

GIL: llguidance drops the GIL in ``LLMatcher(...)`` (grammar construction) and in
``unsafe_compute_mask_ptr`` (the mask, the heavy part); ``consume_token`` is cheap and keeps it.
"""
from __future__ import annotations

import json
from typing import Any, Dict, Optional, Tuple

import numpy as np

# JsonCompileOptions applied before a schema's own "x-guidance" (see the module docstring).
_JSON_DEFAULTS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
_KINDS = ("json_object", "json_schema", "regex", "choice", "grammar")


class GrammarError(ValueError):
    """An invalid spec (bad schema, regex, grammar, unknown type) or a token the grammar forbids."""


def _llg():
    try:
        import llguidance
        import llguidance.hf  # noqa: F401  (imports transformers, never torch)
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError("structured output needs llguidance: pip install llguidance") from e
    return llguidance


def _first_line(msg: str) -> str:
    return msg.strip().splitlines()[0] if msg.strip() else "unknown error"


class Matcher:
    """One sequence's grammar state (an ``llguidance.LLMatcher``)."""

    __slots__ = ("_m", "_vocab_size", "_words")

    def __init__(self, ll_matcher, vocab_size: int):
        self._m = ll_matcher
        self._vocab_size = vocab_size
        self._words = (vocab_size + 31) // 32

    def fill_mask(self, out: np.ndarray) -> None:
        """out: uint32 (or int32) [mask_words], C-contiguous; bit t % 32 of word t // 32 is set iff
        token t may come next. Never raises for grammar reasons: if the matcher is in an error
        state (a forbidden token was consumed, or a parser limit was hit) the mask allows only
        EOS, so the sequence ends; ``error`` says why."""
        if out.dtype not in (np.uint32, np.int32) or out.shape != (self._words,) or not out.flags.c_contiguous:
            raise ValueError(f"mask must be a contiguous uint32 array of shape ({self._words},), "
                             f"got {out.dtype} {out.shape}")
        # Writes all mask_words words (ids >= the tokenizer's size are 0); drops the GIL.
        self._m.unsafe_compute_mask_ptr(out.ctypes.data, out.nbytes)

    def consume(self, token: int) -> None:
        """Advance by one sampled token. A token the mask did not allow raises GrammarError and
        leaves the matcher in llguidance's error state for good (every later mask: EOS only)."""
        token = int(token)
        if not 0 <= token < self._vocab_size:
            raise GrammarError(f"token {token} is outside the vocabulary [0, {self._vocab_size})")
        if not self._m.consume_token(token):
            raise GrammarError(f"token {token} is not allowed by the grammar: {_first_line(self._m.get_error())}")

    def is_accepting(self) -> bool:
        """The output so far is a complete match (EOS is allowed)."""
        return self._m.is_accepting()

    def is_stopped(self) -> bool:
        """Nothing can follow but EOS (also true in the error state)."""
        return self._m.is_stopped()

    @property
    def error(self) -> Optional[str]:
        """Why the matcher is in its error state, or None."""
        return _first_line(self._m.get_error()) if self._m.is_error() else None


class GrammarCompiler:
    """One per served model: llguidance's tokenizer is built once here (the expensive part)."""

    def __init__(self, hf_tokenizer, vocab_size: int, eos_id: int):
        """hf_tokenizer: a transformers PreTrainedTokenizerFast. vocab_size: the model's logits
        width, >= the tokenizer's size; the extra (padding) ids are never allowed. eos_id: the
        engine's end id, allowed exactly when the grammar may end."""
        llg = _llg()
        n_tok = len(hf_tokenizer)
        if vocab_size < n_tok:
            raise ValueError(f"model vocab_size {vocab_size} is smaller than the tokenizer's {n_tok} tokens")
        if not 0 <= eos_id < vocab_size:
            raise ValueError(f"eos_id {eos_id} is outside the vocabulary [0, {vocab_size})")
        self.vocab_size = int(vocab_size)
        self.eos_id = int(eos_id)
        self._llg = llg
        # n_vocab pads llguidance's masks to the model's width; eos_token replaces the tokenizer's.
        self._tok = llg.hf.from_tokenizer(hf_tokenizer, n_vocab=self.vocab_size, eos_token=self.eos_id)
        # verbose_errors=False: keeps parser state and the client's grammar out of error texts.
        self._limits = llg.LLParserLimits(verbose_errors=False)

    @property
    def mask_words(self) -> int:
        return (self.vocab_size + 31) // 32

    def compile(self, spec: Dict[str, Any]) -> Matcher:
        """spec (see the module docstring) -> a fresh Matcher; GrammarError if spec is invalid."""
        what, grammar = self._grammar(spec)
        m = self._llg.LLMatcher(self._tok, grammar, log_level=0, limits=self._limits)  # drops the GIL
        if m.is_error():
            raise GrammarError(f"invalid {what}: {m.get_error().strip()}")
        return Matcher(m, self.vocab_size)

    def _grammar(self, spec) -> Tuple[str, str]:
        """spec -> (what it is, for messages; llguidance's grammar string)."""
        LLMatcher = self._llg.LLMatcher
        if not isinstance(spec, dict):
            raise GrammarError(f"a grammar spec must be an object, got {type(spec).__name__}")
        kind = spec.get("type")
        if kind == "json_object":
            return "JSON object", LLMatcher.grammar_from_json_schema({"type": "object"}, defaults=_JSON_DEFAULTS)
        if kind == "json_schema":
            js = spec.get("json_schema")
            if not isinstance(js, dict):
                raise GrammarError("json_schema must be an object with a 'schema' field")
            schema = js.get("schema")
            if not isinstance(schema, dict):
                raise GrammarError(f"json_schema.schema must be a JSON object, got {type(schema).__name__}")
            try:
                return "JSON schema", LLMatcher.grammar_from_json_schema(schema, defaults=_JSON_DEFAULTS)
            except (ValueError, TypeError) as e:  # not serializable / not an object
                raise GrammarError(f"invalid JSON schema: {e}") from None
        if kind == "regex":
            regex = spec.get("regex")
            if not isinstance(regex, str):
                raise GrammarError("regex must be a string")
            return "regex", LLMatcher.grammar_from_regex(regex)
        if kind == "choice":
            choice = spec.get("choice")
            if not isinstance(choice, list) or not choice or not all(isinstance(c, str) for c in choice):
                raise GrammarError("choice must be a non-empty list of strings")
            # As llguidance's grammar_from("choice"): JSON string literals are lark literals.
            return "choice", LLMatcher.grammar_from_lark("start: " + " | ".join(json.dumps(c) for c in choice))
        if kind == "grammar":
            text = spec.get("grammar")
            if not isinstance(text, str) or not text.strip():
                raise GrammarError("grammar must be a non-empty string (lark or GBNF)")
            try:  # lark as is (it has `start:`); otherwise GBNF, converted to lark
                return "grammar", self._llg.grammar_from("grammar", text)
            except ValueError as e:
                raise GrammarError(f"invalid grammar: {e}") from None
        raise GrammarError(f"unknown grammar type {kind!r}; expected one of {', '.join(_KINDS)}")
