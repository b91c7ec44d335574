"""The server says when it is exposed (issue 8 §3): listening beyond loopback with no API key
logs a warning at start; the default bind stays LMDeploy's 0.0.0.0. Traffic goes to 127.0.0.1."""
from __future__ import annotations

import os
import subprocess

import httpx
import pytest

from e2e_servers import HOST, free_port, turbolm_cmd, wait_http


@pytest.mark.parametrize("host,keys,warns", [("0.0.0.0", [], True), ("::", [], True), ("192.0.2.7", [], True),
                                             ("0.0.0.0", ["k"], False), ("127.0.0.1", [], False),
                                             ("localhost", [], False), ("::1", [], False)])
def test_warn_if_exposed(host, keys, warns, caplog):
    from turbolm.serve.api_server import warn_if_exposed

    with caplog.at_level("WARNING", logger="turbolm.serve"):
        assert warn_if_exposed(host, keys) is warns
    assert ("without an API key" in caplog.text) is warns


@pytest.mark.parametrize("extra,warns", [([], True), (["--api_keys", "k1"], False)])
def test_server_on_all_interfaces_warns_without_a_key(tiny_ws, tmp_path, extra, warns):
    port = free_port()
    log = tmp_path / "server.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(turbolm_cmd("serve", "api_server", tiny_ws, "--server_name", "0.0.0.0",
                                            "--server_port", str(port), *extra),
                                stdout=out, stderr=subprocess.STDOUT, env=dict(os.environ))
    try:
        wait_http(f"http://{HOST}:{port}/health", proc, log=str(log))
        assert httpx.get(f"http://{HOST}:{port}/health").status_code == 200
        assert ("without an API key" in log.read_text()) is warns
    finally:
        proc.terminate()
        proc.wait(timeout=20)
