"""Source readers: checkpoint format name -> class (``SOURCES``). A source validates its input in
``__init__`` (every problem is a ``UserError`` raised before anything is written), then hands out
tensors in the canonical form of ``converter/spec.py``.

Adding a format = one module with a ``Source`` subclass decorated ``@register_source("name")``.
"""
from __future__ import annotations

from typing import Dict, Optional, Type

import numpy as np

from ..spec import ModelSpec

SOURCES: Dict[str, Type["Source"]] = {}


def register_source(name: str):
    def deco(cls):
        cls.format_name = name
        SOURCES[name] = cls
        return cls
    return deco


class Source:
    format_name = ""
    claim_priority = 0  # format guessing asks higher first (an AWQ folder is also an HF folder)
    spec: ModelSpec

    def __init__(self, model_path: str, tokenizer_path: Optional[str] = None):
        raise NotImplementedError

    @classmethod
    def claims(cls, model_path: str) -> bool:
        """True when ``model_path`` looks like this format (used when --model-format is not given)."""
        return False

    def tok_embeddings(self) -> np.ndarray:  # [vocab, hidden]
        raise NotImplementedError

    def output(self) -> np.ndarray:  # [vocab, hidden]; the embeddings when tied
        raise NotImplementedError

    def norm(self) -> np.ndarray:  # [hidden]
        raise NotImplementedError

    def layer(self, i: int) -> Dict[str, np.ndarray]:
        """Layer i's tensors keyed as spec.LAYER_KEYS (+ OPTIONAL_LAYER_KEYS present in the checkpoint)."""
        raise NotImplementedError

    def write_tokenizer(self, dst_dir: str) -> None:
        """Write an HF tokenizer folder that ``AutoTokenizer.from_pretrained(dst_dir)`` loads."""
        raise NotImplementedError

    def close(self) -> None:
        pass


def _load_builtin():
    from . import awq, gguf, gptq, hf, w8a8  # noqa: F401  (registration side effect)


_load_builtin()
