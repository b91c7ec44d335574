"""`turbolm serve api_client URL`: a terminal chat over a running api_server's /v1/chat/interactive.

The server keeps the session's history (interactive_mode=True); `end` ends the session (its KV
blocks are freed) and starts a new one, `exit` quits. Ctrl-C during an answer stops it."""
from __future__ import annotations

import json
import sys
from typing import Iterator, Optional

import httpx


class InteractiveClient:
    def __init__(self, url: str, api_key: Optional[str] = None, timeout: float = 600.0):
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def stream(self, prompt: str, session_id: int, **params) -> Iterator[dict]:
        """Yields the server's stream items ({"text", "tokens", "finish_reason", ...})."""
        body = dict(prompt=prompt, session_id=session_id, interactive_mode=True, stream=True, **params)
        with self.http.stream("POST", "/v1/chat/interactive", json=body) as r:
            if r.status_code == 404 and session_id != -1:
                r.read()
                raise SessionGone(_error_message(r))
            if r.status_code != 200:
                r.read()
                raise RuntimeError(_error_message(r))
            for line in r.iter_lines():
                if line.strip():
                    yield json.loads(line)

    def stop(self, session_id: int) -> None:
        self.http.post("/v1/chat/interactive", json=dict(session_id=session_id, stop=True))

    def end(self, session_id: int) -> None:
        self.http.post("/v1/chat/interactive", json=dict(prompt="", session_id=session_id, interactive_mode=False,
                                                         request_output_len=0))


class SessionGone(RuntimeError):
    """The server no longer has the session (it expired, or was ended elsewhere)."""


def _round(client: InteractiveClient, prompt: str, sid: int, params: dict) -> Iterator[dict]:
    """One round's items; a session the server no longer has (404, raised before any item) is
    replaced by a fresh one, and the user is told the history is gone."""
    try:
        yield from client.stream(prompt, sid, **params)
    except SessionGone:
        print("(the session expired on the server; a new one starts)\nassistant: ", end="")
        yield from client.stream(prompt, -1, **params)


def _error_message(r: httpx.Response) -> str:
    try:
        return r.json()["error"]["message"]
    except Exception:  # noqa: BLE001 - any non-OpenAI body
        return f"HTTP {r.status_code}: {r.text[:200]}"


def main(restful_api_url: str, session_id: int = -1, api_key: Optional[str] = None, request_output_len: int = 512,
         temperature: float = 0.8, top_p: float = 0.8, top_k: int = 40):
    client = InteractiveClient(restful_api_url, api_key=api_key)
    sid = int(session_id)  # -1: the server hands out a fresh session on the first round
    where = "a new session" if sid == -1 else f"session {sid}"
    print(f"turbolm api_client: {client.url}, {where}. Type `end` to reset the session, `exit` to quit.")
    while True:
        try:
            prompt = input("\nuser >>> ")
        except EOFError:
            print()
            break
        cmd = prompt.strip()
        if cmd == "exit":
            break
        if cmd == "end":
            if sid != -1:
                client.end(sid)
            sid = -1
            print("(session ended; a new one starts)")
            continue
        if not cmd:
            continue
        sys.stdout.write("assistant: ")
        params = dict(request_output_len=request_output_len, temperature=temperature, top_p=top_p, top_k=top_k)
        try:
            for item in _round(client, prompt, sid, params):
                if item.get("error"):
                    print(f"\n[error: {item['error']}]")
                if item.get("session_id") is not None:
                    sid = int(item["session_id"])
                sys.stdout.write(item.get("text", ""))
                sys.stdout.flush()
            print()
        except KeyboardInterrupt:
            if sid != -1:
                client.stop(sid)
            print("\n(stopped)")
        except (RuntimeError, httpx.HTTPError) as e:
            print(f"\n[error: {e}]")
    if sid != -1:
        client.end(sid)
