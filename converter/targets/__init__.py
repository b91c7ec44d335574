"""Target writers: weight type name -> class (``TARGETS``). A target turns canonical tensors
(converter/spec.py) into workspace files (DESIGN.md §3) for every TP rank, and names the config.ini
keys that depend on it.

Adding a weight type = one module with a ``Target`` subclass decorated ``@register_target("name")``.
"""
from __future__ import annotations

from typing import Dict, Type

import numpy as np

from ..spec import ModelSpec

TARGETS: Dict[str, Type["Target"]] = {}
EMBEDDING_FORMAT_VERSION = 3  # config.ini format_version with a quantized embedding_type (runtime: weights.h)


def register_target(name: str):
    def deco(cls):
        cls.weight_type = name
        TARGETS[name] = cls
        return cls
    return deco


class Target:
    weight_type = ""

    def __init__(self, out_dir: str, spec: ModelSpec, tp: int, group_size: int = 0):
        self.out_dir, self.spec, self.tp, self.group_size = out_dir, spec, tp, group_size
        self.embedding_bits = 0  # 8 / 4: the embedding table and lm head quantized (config.ini embedding_type)
        self.embedding_group = 0  # their group size along hidden (config.ini embedding_group_size)

    @classmethod
    def validate(cls, spec: ModelSpec, tp: int, group_size: int) -> None:
        """Refuse (UserError) a spec / tp / group size this target cannot write, before any file is."""

    def export_misc(self, tok_embeddings: np.ndarray, norm: np.ndarray, output: np.ndarray) -> None:
        raise NotImplementedError

    def export_layer(self, i: int, tensors: Dict[str, np.ndarray]) -> None:
        raise NotImplementedError

    def config_keys(self) -> dict:
        """config.ini keys this target decides (weight_type, group_size, ...)."""
        return {"weight_type": self.weight_type, "group_size": self.group_size, **self.embedding_keys()}

    def embedding_keys(self) -> dict:
        if not self.embedding_bits:
            return {}
        return {"embedding_type": f"int{self.embedding_bits}",  # (`int` here is the targets.int module)
                "embedding_group_size": self.embedding_group,
                "tie_word_embeddings": 1 if self.spec.tied else 0, "format_version": EMBEDDING_FORMAT_VERSION}


def _load_builtin():
    from . import fp, int  # noqa: F401  (registration side effect)


_load_builtin()
