"""Tokenizer: transformers' AutoTokenizer over a workspace's tokenizer folder, plus what serving
needs beyond encode/decode:

- ``encode(text, add_bos=True)`` adds the tokenizer's own special prefix (BOS for LLaMA
  sentencepiece, nothing for SmolLM2) but never a second BOS when the text (a rendered chat
  template) already starts with one;
- ``IncrementalDetokenizer``: text for streamed ids that never ends in a split UTF-8 character and
  keeps sentencepiece / byte-level BPE spaces right: its pieces, concatenated, equal
  ``decode(all ids)``;
- ``stop_words_to_ids``: stop strings -> token id sequences for the engine (which matches whole
  sequences); text-side matching of the same strings lives in ``turbolm.serve.textstream``.
"""
from __future__ import annotations

import functools
import json
import os
import re
from typing import FrozenSet, List, Optional, Sequence

from turbolm.errors import UserError

# decode() settings shared by decode() and the incremental detokenizer, so their texts agree.
_BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")
_DECODE = dict(skip_special_tokens=True, clean_up_tokenization_spaces=False)


def _load_hf(model_dir: str):
    """tokenizer.json holds the whole pipeline (normalizer, pre-tokenizer, BOS post-processor,
    decoder), so PreTrainedTokenizerFast reads it directly: AutoTokenizer would read config.json
    and import torch through the model's config class, which serving never needs."""
    from transformers import AutoTokenizer, LlamaTokenizerFast, PreTrainedTokenizerFast

    if os.path.isfile(os.path.join(model_dir, "tokenizer.json")):
        return PreTrainedTokenizerFast.from_pretrained(model_dir, local_files_only=True)
    try:
        return AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False, local_files_only=True)
    except Exception as first:  # a bare sentencepiece model without tokenizer_config.json
        sp = os.path.join(model_dir, "tokenizer.model")
        if not os.path.exists(sp):
            raise UserError(f"cannot load a tokenizer from {model_dir}: {first}") from first
        return LlamaTokenizerFast(vocab_file=sp)


@functools.lru_cache(maxsize=1)
def _gpt2_byte_decoder():
    """GPT-2's byte-level BPE alphabet, reversed: printable stand-in character -> byte."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\u00a1"), ord("\u00ac") + 1)) + \
        list(range(ord("\u00ae"), ord("\u00ff") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


class Tokenizer:
    def __init__(self, model_dir: str):
        if not os.path.isdir(model_dir):
            raise UserError(f"tokenizer folder not found: {model_dir}")
        self.model_dir = model_dir
        self.model = _load_hf(model_dir)
        # A fast tokenizer's Rust backend decodes exactly as decode(..., clean_up_tokenization_spaces
        # =False) does; serving decodes a few ids per streamed token, so the wrapper's cost counts.
        rust = getattr(self.model, "_tokenizer", None)
        self._rust = rust if rust is not None and hasattr(rust, "decode") else None

    # -- facts -----------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return len(self.model)

    @property
    def bos_token_id(self) -> Optional[int]:
        return self.model.bos_token_id

    @property
    def eos_token_id(self) -> Optional[int]:
        return self.model.eos_token_id

    @functools.cached_property
    def eos_token_ids(self) -> List[int]:
        """Every end-of-turn id: the tokenizer's EOS plus generation_config.json's eos_token_id
        (a list for Llama 3 / Qwen / Gemma chat models; the converter writes one for GGUF's eos/eot)."""
        ids = [] if self.eos_token_id is None else [int(self.eos_token_id)]
        path = os.path.join(self.model_dir, "generation_config.json")
        if os.path.isfile(path):
            try:
                with open(path) as f:
                    eos = json.load(f).get("eos_token_id")
            except (ValueError, AttributeError):
                eos = None
            for i in eos if isinstance(eos, list) else [] if eos is None else [eos]:
                if isinstance(i, int) and 0 <= i < len(self.model) and i not in ids:
                    ids.append(i)
        return ids

    @property
    def chat_template(self) -> Optional[str]:
        return getattr(self.model, "chat_template", None) or None

    # -- text <-> ids --------------------------------------------------------------------
    def encode(self, text: str, add_bos: bool = True) -> List[int]:
        ids = list(self.model.encode(text, add_special_tokens=add_bos))
        bos = self.bos_token_id
        if add_bos and bos is not None and len(ids) >= 2 and ids[0] == bos and ids[1] == bos:
            ids = ids[1:]  # the text carried its own BOS (a chat template's `<s>`)
        return ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        if self._rust is not None:  # the same decode without transformers' Python wrapper (3x faster)
            return self._rust.decode(list(ids), skip_special_tokens=skip_special_tokens)
        return self.model.decode(list(ids), **{**_DECODE, "skip_special_tokens": skip_special_tokens})

    def id_to_token(self, i: int) -> str:
        return self.model.convert_ids_to_tokens(int(i))

    @functools.cached_property
    def special_ids(self) -> FrozenSet[int]:
        added = getattr(self.model, "added_tokens_decoder", {}) or {}
        return frozenset(self.model.all_special_ids) | {i for i, t in added.items() if getattr(t, "special", False)}

    @functools.cached_property
    def byte_fallback_ids(self) -> FrozenSet[int]:
        """Ids of sentencepiece byte pieces `<0xNN>` (empty for byte-level BPE)."""
        return frozenset(i for t, i in self.model.get_vocab().items() if _BYTE_PIECE.fullmatch(t))

    def detokenizer(self) -> "IncrementalDetokenizer":
        return IncrementalDetokenizer(self)

    @functools.cached_property
    def _byte_level(self) -> bool:
        rust = getattr(self.model, "backend_tokenizer", None)
        return rust is not None and "ByteLevel" in str(rust.decoder)

    def token_bytes(self, i: int) -> bytes:
        """The bytes token `i` stands for (OpenAI's logprobs `bytes`): byte-level BPE pieces map
        back through GPT-2's byte alphabet, sentencepiece's `▁` is a space and `<0xNN>` one byte,
        special tokens are their text. A piece may be part of a UTF-8 character."""
        cache = self.__dict__.setdefault("_token_bytes", {})
        b = cache.get(i)
        if b is None:
            piece = self.id_to_token(i) or ""
            if int(i) in self.special_ids:
                b = piece.encode("utf-8")
            elif _BYTE_PIECE.fullmatch(piece):
                b = bytes([int(piece[3:5], 16)])
            elif self._byte_level:
                dec = _gpt2_byte_decoder()
                b = bytes(dec[c] for c in piece) if all(c in dec for c in piece) else piece.encode("utf-8")
            else:
                b = piece.replace("\u2581", " ").encode("utf-8")
            cache[i] = b
        return b

    def token_text(self, i: int) -> str:
        """token_bytes(i) as text (U+FFFD for a partial UTF-8 character): concatenated over a
        sequence it spells the text, so logprobs' text_offset adds up."""
        return self.token_bytes(i).decode("utf-8", errors="replace")

    def stop_words_to_ids(self, words: Optional[Sequence[str]]) -> List[List[int]]:
        """Stop strings as the token id sequences the engine should stop on (it drops a matched
        sequence from the output, so a sequence must decode to exactly the stop string).

        Special tokens (`<|im_end|>`) become their one id. A string whose encoding starts with a
        word-start marker (sentencepiece's `▁`, byte-level BPE's `Ġ`) it does not itself start
        with would match " word" and cut the space too: it is left to the text-side matcher
        (turbolm.serve.textstream), as are strings that encode to nothing."""
        out: List[List[int]] = []
        for w in words or ():
            if not w:
                continue
            ids = self.encode(w, add_bos=False)
            if not ids:
                continue
            first = self.model.convert_ids_to_tokens(ids[0]) or ""
            if len(ids) > 1 and first == "\u2581" and not w[0].isspace():
                ids = ids[1:]  # a lone dummy-prefix piece
                first = self.model.convert_ids_to_tokens(ids[0]) or ""
            if first[:1] in ("\u2581", "\u0120") and not w[0].isspace():
                continue
            if ids not in out:
                out.append(ids)
        return out


class IncrementalDetokenizer:
    """Streams text for a growing list of ids; the pieces concatenate to ``decode(all ids)``.

    Decodes a short window of recent ids twice (with and without the new ones) and emits the
    difference, as vLLM does: decoding a window rather than single ids keeps the spaces that
    sentencepiece and byte-level BPE attach to the next word. Three things are held back:
    - text ending in U+FFFD: a multi-byte character whose last byte has not arrived;
    - a trailing run of sentencepiece byte pieces (`<0xE4>`): HF's ByteFallback decoder turns a
      whole run into U+FFFDs when any byte of it is invalid, so text decoded from a run is final
      only once the run ends;
    - nothing else: special ids are dropped up front (decode skips them anyway), so a window never
      starts at one, which would make the decoder strip the next word's space.
    """

    def __init__(self, tokenizer: Tokenizer):
        self.tok = tokenizer
        self.ids: List[int] = []  # output ids, special ids left out
        self.prefix_offset = 0  # start of the decode window
        self.read_offset = 0  # ids before this one have been emitted as text
        self.emitted = 0  # characters emitted

    def step(self, new_ids: Sequence[int]) -> str:
        """Text that the ids appended since the last call complete ('' while held back)."""
        special = self.tok.special_ids
        self.ids.extend(int(i) for i in new_ids if int(i) not in special)
        if self.read_offset >= len(self.ids) or self.ids[-1] in self.tok.byte_fallback_ids:
            return ""
        prefix = self.tok.decode(self.ids[self.prefix_offset:self.read_offset])
        full = self.tok.decode(self.ids[self.prefix_offset:])
        if full.endswith("\ufffd") or not full.startswith(prefix):
            return ""
        text = full[len(prefix):]
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        self.emitted += len(text)
        return text

    def flush(self) -> str:
        """At the end: what is still held back, as decode() shows it."""
        return self.tok.decode(self.ids)[self.emitted:]
