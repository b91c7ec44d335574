"""Calibration samples: ``[n_samples, seqlen]`` token ids drawn from a text.

Sources (``SOURCES`` registry):

- a path to a ``.txt`` file (the whole file is one text) or a ``.jsonl`` file (one JSON object
  per line with a ``"text"`` field, or a bare JSON string; documents are joined with blank
  lines). This always works offline: any plain text in the language the model will see.
- the named sets ``c4``, ``ptb``, ``wikitext2``, ``pileval``, read from the local Hugging Face
  datasets cache only; nothing is downloaded. When the set (or the ``datasets`` package) is
  absent the error says how to fetch it, or to pass a .txt path instead.

Sampling: the text is tokenized (no BOS/EOS) and ``n_samples`` windows of ``seqlen`` tokens are
taken at offsets drawn with a fixed seed, as LMDeploy/GPTQ's loaders do. Windows may overlap when
the text is short; a text shorter than one window is an error.
"""
from __future__ import annotations

import dataclasses
import json
import os
import random
from typing import Callable, Dict, List, Optional

import torch

from turbolm.errors import UserError

_CHARS_PER_TOKEN_BUDGET = 8  # how much text to take from a big named set per wanted token
_TOKENIZE_CHUNK = 1 << 16    # characters per tokenizer call (long texts tokenized in pieces)


@dataclasses.dataclass(frozen=True)
class NamedSet:
    """A named calibration set in the Hugging Face datasets cache."""
    path: str
    name: Optional[str]
    split: str
    field: str
    joiner: str
    data_files: Optional[Dict[str, str]] = None
    fetch: str = ""  # the command that puts it in the cache, for the error message


NAMED_SETS: Dict[str, NamedSet] = {
    "wikitext2": NamedSet("wikitext", "wikitext-2-raw-v1", "test", "text", "\n\n",
                          fetch="load_dataset('wikitext', 'wikitext-2-raw-v1', split='test')"),
    "ptb": NamedSet("ptb_text_only", "penn_treebank", "train", "sentence", " ",
                    fetch="load_dataset('ptb_text_only', 'penn_treebank', split='train')"),
    "c4": NamedSet("allenai/c4", None, "train", "text", "\n\n",
                   data_files={"train": "en/c4-train.00000-of-01024.json.gz"},
                   fetch="load_dataset('allenai/c4', data_files={'train': "
                         "'en/c4-train.00000-of-01024.json.gz'}, split='train')"),
    "pileval": NamedSet("mit-han-lab/pile-val-backup", None, "validation", "text", "\n\n",
                        fetch="load_dataset('mit-han-lab/pile-val-backup', split='validation')"),
}

EXAMPLE_TXT = "my_text.txt"  # in messages: any local plain-text file will do

RECORD_FILE = "calib_meta.json"  # work_dir/calib_meta.json: the set `calibrate` used, for `auto_awq`


def _read_txt(path: str, budget_chars: int) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


def _read_jsonl(path: str, budget_chars: int) -> str:
    docs: List[str] = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{lineno}: not valid JSON ({e.msg}); a .jsonl calibration file "
                                "holds one {\"text\": ...} object per line") from None
            text = obj if isinstance(obj, str) else obj.get("text") if isinstance(obj, dict) else None
            if not isinstance(text, str):
                raise UserError(f"{path}:{lineno}: no \"text\" string field; a .jsonl calibration file "
                                "holds one {\"text\": ...} object per line")
            docs.append(text)
    return "\n\n".join(docs)


SOURCES: Dict[str, Callable[[str, int], str]] = {".txt": _read_txt, ".jsonl": _read_jsonl}


def _read_named(name: str, budget_chars: int, seed: int) -> str:
    spec = NAMED_SETS[name]
    how = (f"put it in the local HF datasets cache on a machine with network "
           f"(pip install datasets; python -c \"from datasets import load_dataset; {spec.fetch}\") "
           f"or pass a local .txt/.jsonl file instead, e.g. --calib_dataset {EXAMPLE_TXT}")
    try:
        import datasets
    except ImportError:
        raise UserError(f"calib_dataset '{name}' is read from the local HF datasets cache, but the `datasets` "
                        f"package is not installed; {how}") from None
    old = os.environ.get("HF_DATASETS_OFFLINE")
    os.environ["HF_DATASETS_OFFLINE"] = "1"  # never download, whatever the caller's environment says
    try:
        ds = datasets.load_dataset(spec.path, spec.name, split=spec.split, data_files=spec.data_files)
    except Exception as e:  # the datasets library raises many types for "not cached"
        raise UserError(f"calib_dataset '{name}' is not in the local HF datasets cache "
                        f"({type(e).__name__}); {how}") from None
    finally:
        if old is None:
            os.environ.pop("HF_DATASETS_OFFLINE", None)
        else:
            os.environ["HF_DATASETS_OFFLINE"] = old
    # Big sets (c4, pileval): documents in a seeded order until the text budget is met.
    order = list(range(len(ds)))
    if len(ds) > 10000:
        random.Random(seed).shuffle(order)
    docs, total = [], 0
    for i in order:
        text = ds[i][spec.field]
        docs.append(text)
        total += len(text)
        if total >= budget_chars and len(ds) > 10000:
            break
    return spec.joiner.join(docs)


def load_text(calib_dataset: str, budget_chars: int = 1 << 62, seed: int = 0) -> str:
    """The raw text of a calibration source (file path or named set)."""
    ext = os.path.splitext(calib_dataset)[1].lower()
    if ext in SOURCES:
        if not os.path.isfile(calib_dataset):
            raise UserError(f"calibration file {calib_dataset} not found")
        return SOURCES[ext](calib_dataset, budget_chars)
    if calib_dataset in NAMED_SETS:
        return _read_named(calib_dataset, budget_chars, seed)
    if os.path.exists(calib_dataset):
        raise UserError(f"calibration file {calib_dataset}: only .txt and .jsonl files are read")
    raise UserError(f"calib_dataset '{calib_dataset}' is neither a .txt/.jsonl path nor one of "
                    f"{', '.join(NAMED_SETS)}; pass a local text file, e.g. --calib_dataset {EXAMPLE_TXT}")


def tokenize(tokenizer, text: str) -> List[int]:
    """Token ids of a long text, without special tokens, tokenized in newline-aligned pieces."""
    pieces, start = [], 0
    while start < len(text):
        end = min(len(text), start + _TOKENIZE_CHUNK)
        if end < len(text):
            nl = text.rfind("\n", start, end)
            end = nl + 1 if nl > start else end
        pieces.append(text[start:end])
        start = end
    ids: List[int] = []
    for piece_ids in tokenizer(pieces, add_special_tokens=False)["input_ids"]:
        ids.extend(piece_ids)
    return ids


def get_calib_data(calib_dataset: str, tokenizer, n_samples: int, seqlen: int, seed: int = 0) -> torch.Tensor:
    """``[n_samples, seqlen]`` int64 token ids from ``calib_dataset`` (see module docstring)."""
    if int(n_samples) <= 0 or int(seqlen) <= 0:
        raise UserError(f"calib_samples ({n_samples}) and calib_seqlen ({seqlen}) must be positive")
    n_samples, seqlen = int(n_samples), int(seqlen)
    text = load_text(calib_dataset, budget_chars=n_samples * seqlen * _CHARS_PER_TOKEN_BUDGET, seed=seed)
    ids = tokenize(tokenizer, text)
    if len(ids) < seqlen:
        raise UserError(f"calibration text {calib_dataset} has {len(ids)} tokens, fewer than calib_seqlen "
                        f"{seqlen}; use a longer text or a smaller --calib_seqlen")
    ids_t = torch.tensor(ids, dtype=torch.int64)
    rng = random.Random(seed)
    starts = [rng.randint(0, len(ids) - seqlen) for _ in range(n_samples)]
    return torch.stack([ids_t[s:s + seqlen] for s in starts])


def save_record(work_dir: str, calib_dataset: str, n_samples: int, seqlen: int) -> str:
    """Write ``work_dir/calib_meta.json``: which set (a file as its absolute path), how many samples
    of how many tokens; `auto_awq` reads it back so both steps calibrate on the same text."""
    dataset = os.path.abspath(calib_dataset) if os.path.exists(calib_dataset) else calib_dataset
    path = os.path.join(work_dir, RECORD_FILE)
    os.makedirs(work_dir, exist_ok=True)
    with open(path, "w") as f:
        json.dump({"calib_dataset": dataset, "calib_samples": int(n_samples), "calib_seqlen": int(seqlen)}, f,
                  indent=1)
    return path


def load_record(work_dir: str) -> Optional[dict]:
    """The record of ``save_record``, or None when ``work_dir`` has none."""
    path = os.path.join(work_dir, RECORD_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            rec = json.load(f)
        return {"calib_dataset": str(rec["calib_dataset"]), "calib_samples": int(rec["calib_samples"]),
                "calib_seqlen": int(rec["calib_seqlen"])}
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path}: not a calibration record of `turbolm lite calibrate` ({type(e).__name__}); "
                        "re-run calibrate or pass --calib_dataset") from None
