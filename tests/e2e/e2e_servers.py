"""Helpers of the end-to-end tests: free ports, the `turbolm` command, servers as subprocesses."""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from typing import List, Optional

HOST = "127.0.0.1"


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def turbolm_cmd(*args: str) -> List[str]:
    """The installed `turbolm` command (as a user types it); the module when no script is on PATH."""
    exe = shutil.which("turbolm")
    return [exe, *args] if exe else [sys.executable, "-c", "from turbolm.cli import main; main()", *args]


def convert(model_name: str, src: str, dst: str, *extra: str) -> str:
    if not os.path.isfile(os.path.join(dst, "triton_models", "weights", "config.ini")):
        subprocess.run(turbolm_cmd("convert", model_name, src, "--dst_path", dst, *extra), check=True,
                       stdout=subprocess.DEVNULL, timeout=600)
    return dst


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 180.0, log: Optional[str] = None) -> None:
    import httpx

    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            tail = open(log).read()[-3000:] if log else ""
            raise RuntimeError(f"server exited with {proc.returncode} before it was ready:\n{tail}")
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{url} not ready after {timeout}s")


class Server:
    """A `turbolm` subprocess serving HTTP on a free port; its output goes to a log file."""

    def __init__(self, args: List[str], log_path: str, ready_path: str = "/health"):
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.log_path = log_path
        self._log = open(log_path, "w")
        env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", TOKENIZERS_PARALLELISM="false")
        self.proc = subprocess.Popen(turbolm_cmd(*args, "--server_name", HOST, "--server_port", str(self.port)),
                                     stdout=self._log, stderr=subprocess.STDOUT, env=env)
        try:
            wait_http(self.url + ready_path, self.proc, log=log_path)
        except Exception:
            self.close()
            raise

    def log(self) -> str:
        with open(self.log_path) as f:
            return f.read()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def wait_idle(url: str, timeout: float = 30.0) -> dict:
    """Poll GET /v1/stats until no request runs and every KV block is free again (or pooled: held
    by nobody, kept findable by the prefix cache)."""
    import httpx

    deadline, stats = time.time() + timeout, {}
    while time.time() < deadline:
        stats = httpx.get(url + "/v1/stats", timeout=5).json()
        if stats["requests_running"] == 0 and stats["running"] == 0 and stats["waiting"] == 0 \
                and stats["free_blocks"] + stats.get("pooled_blocks", 0) == stats["num_blocks"]:
            return stats
        time.sleep(0.2)
    raise AssertionError(f"server not idle after {timeout}s: {stats}")
