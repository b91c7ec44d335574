"""What keeps the API server safe to expose on a network: pure-ASGI middleware in front of the app.

- A request body must be JSON: a POST (PUT, PATCH) whose body is not `application/json` (a
  `charset` parameter is fine) gets a 415 before the app sees it. Web pages can send `text/plain`,
  form and multipart bodies cross-origin without a CORS preflight; refusing them means such a
  request from a page the user happens to visit is never executed.
- A body over `max_body_bytes` gets a 413 at once: a Content-Length over the limit is refused
  before a byte of the body is read, and a streamed (chunked) body is counted as it arrives and
  refused as soon as it crosses the limit. The body is never buffered whole, so a huge upload
  neither fills memory nor holds up the other clients.
- CORS is closed by default: no Access-Control-Allow-* header on any answer, so browsers refuse
  pages of other origins both the preflight and the answer. `allowed_origins` (a list; "*" for
  every origin) opens it with Starlette's CORSMiddleware.

Every refusal has OpenAI's error shape (errors.error_body)."""
from __future__ import annotations

import json
from typing import Optional, Sequence

from turbolm.serve.errors import error_body

DEFAULT_MAX_BODY_BYTES = 4 << 20
_BODY_METHODS = {"POST", "PUT", "PATCH"}


def _header(scope, name: bytes) -> Optional[bytes]:
    for k, v in scope.get("headers", ()):
        if k.lower() == name:
            return v
    return None


def _is_json(content_type: bytes) -> bool:
    media = content_type.split(b";", 1)[0].strip().lower()
    return media == b"application/json"


async def _send_error(send, status: int, message: str, code: str, param: Optional[str] = None) -> None:
    body = json.dumps(error_body(status, message, code, param), separators=(",", ":")).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class RequestGuard:
    """415 for a body that is not JSON, 413 for a body over `max_body_bytes` (see the module doc)."""

    def __init__(self, app, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES):
        if int(max_body_bytes) <= 0:
            raise ValueError(f"max_body_bytes must be > 0, got {max_body_bytes}")
        self.app = app
        self.max_body_bytes = int(max_body_bytes)

    def _too_large(self) -> str:
        return (f"the request body is larger than the server's limit of {self.max_body_bytes} bytes "
                f"({self.max_body_bytes / (1 << 20):g} MiB)")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = _header(scope, b"content-length")
        chunked = _header(scope, b"transfer-encoding") is not None
        try:
            declared = int(length) if length is not None else None
        except ValueError:  # the HTTP server refuses these first; kept for other servers
            return await _send_error(send, 400, "invalid Content-Length header", "invalid_request")
        has_body = chunked or bool(declared)
        if scope["method"] in _BODY_METHODS:
            ctype = _header(scope, b"content-type")
            if (ctype is not None and not _is_json(ctype)) or (ctype is None and has_body):
                shown = ctype.decode("latin-1")[:100] if ctype is not None else "none"
                return await _send_error(send, 415, f"the request body must be JSON: send 'Content-Type: "
                                                    f"application/json' (got {shown!r})", "unsupported_media_type")
        if declared is not None and declared > self.max_body_bytes:
            return await _send_error(send, 413, self._too_large(), "request_too_large")
        if not has_body:
            return await self.app(scope, receive, send)

        limit, state = self.max_body_bytes, {"read": 0, "cut": False, "answered": False, "started": False}

        async def guarded_receive():
            if state["cut"]:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                state["read"] += len(message.get("body", b""))
                if state["read"] > limit:
                    # read no further; the app sees a client that went away
                    state["cut"] = True
                    if not state["started"]:  # answer now (an app that answered already finishes its own)
                        state["answered"] = state["started"] = True
                        await _send_error(send, 413, self._too_large(), "request_too_large")
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message):
            if state["answered"]:
                return  # the 413 is the answer: whatever the app makes of the cut-off body is dropped
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        try:
            await self.app(scope, guarded_receive, guarded_send)
        except Exception:
            if not state["answered"]:
                raise
            # the app failed on the cut-off body after the 413 went out: nothing more to say


def install_guards(app, *, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, allowed_origins: Sequence[str] = ()) -> None:
    """Add the guards to a Starlette / FastAPI app (before it starts). CORS, when open, is the
    outermost layer, so that refusals carry its headers too and a browser shows them."""
    from starlette.middleware.cors import CORSMiddleware

    app.add_middleware(RequestGuard, max_body_bytes=max_body_bytes)
    if isinstance(allowed_origins, str):  # "a,b" as a command line gives it
        allowed_origins = allowed_origins.split(",")
    origins = [str(o).strip() for o in (allowed_origins or ()) if str(o).strip()]
    if origins:
        app.add_middleware(CORSMiddleware, allow_origins=origins, allow_methods=["*"], allow_headers=["*"],
                           max_age=600)
