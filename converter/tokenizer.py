"""The workspace's tokenizer folder (DST/triton_models/tokenizer/): an HF tokenizer folder that
``AutoTokenizer.from_pretrained`` loads offline.

- HF sources: the tokenizer files are copied as they are.
- GGUF sources: llama.cpp keeps only the vocabulary, merges and special ids; a byte-level BPE
  ``tokenizer.json`` is rebuilt from them with ``tokenizers``, the same way transformers does when
  it reads a GGUF (``gguf_file=``), so both give identical ids.
"""
from __future__ import annotations

import json
import os
import shutil
from typing import List, Optional

from turbolm.errors import UserError

# files that make up an HF tokenizer (plus config.json, which AutoTokenizer reads to pick a class)
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "vocab.json", "merges.txt", "vocab.txt", "qwen.tiktoken",
                   "generation_config.json", "config.json", "chat_template.jinja", "chat_template.json")
_ESSENTIAL = ("tokenizer.model", "tokenizer.json", "vocab.json", "qwen.tiktoken", "vocab.txt")


def copy_hf_tokenizer(src_dir: str, dst_dir: Optional[str]) -> List[str]:
    """Copy the tokenizer files of ``src_dir`` into ``dst_dir`` (None: only check they exist)."""
    if not os.path.isdir(src_dir):
        raise UserError(f"tokenizer path {src_dir} is not a directory")
    found = [n for n in TOKENIZER_FILES if os.path.isfile(os.path.join(src_dir, n))]
    if not any(n in found for n in _ESSENTIAL):
        raise UserError(f"no tokenizer in {src_dir} (need tokenizer.model or tokenizer.json); "
                        "pass --tokenizer_path DIR")
    if dst_dir is not None:
        os.makedirs(dst_dir, exist_ok=True)
        for name in found:
            shutil.copy(os.path.join(src_dir, name), os.path.join(dst_dir, name))
    return found


def _bytes_to_unicode():
    """GPT-2's byte -> printable character table (the byte-level alphabet)."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


TOKEN_TYPE_CONTROL = 3
TOKEN_TYPE_USER_DEFINED = 4


# llama.cpp's tokenizer.ggml.pre -> how the model's own tokenizer splits text before BPE (the
# regexes are those of the models' tokenizer.json files). Anything else: GPT-2's split.
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                r"\s*[\r\n]+|\s+(?!\S)|\s+")
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                 r"\s*[\r\n]+|\s+(?!\S)|\s+")


def _pre_tokenizer(pre: Optional[str]):
    from tokenizers import Regex, pre_tokenizers

    def split(pattern):
        return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
                                        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])

    if pre == "smollm":  # SmolLM / SmolLM2: every digit alone, then GPT-2's split
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    if pre == "qwen2":
        return split(_QWEN2_SPLIT)
    if pre in ("llama-bpe", "llama3"):
        return split(_LLAMA3_SPLIT)
    if pre not in (None, "default", "gpt-2", "gpt2"):
        import sys

        print(f"turbolm convert: warning: GGUF pre-tokenizer {pre!r} is not known here; GPT-2's split is used "
              f"(pass --tokenizer_path with the model's HF tokenizer for exact tokenization)", file=sys.stderr)
    return pre_tokenizers.ByteLevel(add_prefix_space=False)


def write_byte_level_bpe(dst_dir: str, tokens: List[str], token_types: List[int], merges: List[str],
                         bos_id: Optional[int], eos_id: Optional[int], unk_id: Optional[int], pad_id: Optional[int],
                         add_bos: bool, add_eos: bool, chat_template: Optional[str], pre: Optional[str] = None) -> None:
    """tokenizer.json + tokenizer_config.json for a llama.cpp ``gpt2`` (byte-level BPE) vocabulary;
    `pre`: its tokenizer.ggml.pre (the pre-tokenizer's name)."""
    from tokenizers import AddedToken, Tokenizer, decoders
    from tokenizers.models import BPE

    spelling = _bytes_to_unicode()
    alphabet = set(spelling.values())
    vocab = {}
    for i, tok in enumerate(tokens):
        spelled = tok if set(tok) <= alphabet else "".join(spelling[b] for b in tok.encode("utf-8"))
        vocab.setdefault(spelled, i)
    pairs = [tuple(m.split(" ")) for m in merges]
    tk = Tokenizer(BPE(vocab=vocab, merges=pairs, dropout=None, continuing_subword_prefix="", end_of_word_suffix="",
                       fuse_unk=False))
    tk.pre_tokenizer = _pre_tokenizer(pre)
    tk.decoder = decoders.ByteLevel()
    types = list(token_types) if token_types is not None else [1] * len(tokens)
    control = [t for t, ty in zip(tokens, types) if ty == TOKEN_TYPE_CONTROL and set(t) <= alphabet]
    user = [t for t, ty in zip(tokens, types) if ty == TOKEN_TYPE_USER_DEFINED and t in vocab]
    tk.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in control])
    if add_bos and bos_id is not None:
        from tokenizers import processors

        bos = tokens[bos_id]
        tk.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                          special_tokens=[(bos, bos_id)])
    if user:
        tk.add_tokens([AddedToken(t, normalized=False, special=False) for t in user])
    os.makedirs(dst_dir, exist_ok=True)
    tk.save(os.path.join(dst_dir, "tokenizer.json"))

    name = lambda i: tokens[i] if i is not None and 0 <= i < len(tokens) else None  # noqa: E731
    config = {"tokenizer_class": "GPT2Tokenizer", "add_prefix_space": False, "add_bos_token": bool(add_bos),
              "add_eos_token": bool(add_eos), "bos_token": name(bos_id), "eos_token": name(eos_id),
              "unk_token": name(unk_id), "pad_token": name(pad_id), "model_max_length": 1 << 30,
              "clean_up_tokenization_spaces": False}
    if control:
        config["extra_special_tokens"] = [t for t in control if t not in (config["bos_token"], config["eos_token"],
                                                                          config["unk_token"], config["pad_token"])]
    if chat_template:
        config["chat_template"] = chat_template
    with open(os.path.join(dst_dir, "tokenizer_config.json"), "w") as f:
        json.dump(config, f, indent=2, ensure_ascii=False)
