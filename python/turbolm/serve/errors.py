"""OpenAI's error shape, ``{"error": {"message", "type", "param", "code"}}``, for every failure.

FastAPI answers a body that fails validation with 422 and its own shape; OpenAI answers 400 —
`install` overrides that, HTTP errors and uncaught exceptions alike."""
from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("turbolm.serve")

# status -> OpenAI error type
_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
          405: "invalid_request_error", 409: "invalid_request_error", 413: "invalid_request_error",
          415: "invalid_request_error", 429: "rate_limit_exceeded"}


class APIError(Exception):
    def __init__(self, status: int, message: str, code: Optional[str] = None, param: Optional[str] = None,
                 type: Optional[str] = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = int(status), message, code, param
        self.type = type or _TYPES.get(self.status, "server_error")


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: Optional[str] = None
    code: Optional[str] = None


class ErrorResponse(BaseModel):
    """OpenAI's error shape: every 4xx / 5xx of this server has it."""
    error: ErrorDetail


_MEANING = {400: "invalid request: a bad value, a cap exceeded, an unsupported parameter, a prompt too long",
            401: "missing or wrong API key (when the server has --api_keys)",
            404: "unknown model, or a session that does not exist for this key",
            409: "the session is busy with a running round",
            413: "request body over --max_body_mb", 415: "the body is not application/json"}


def error_responses(*statuses: int) -> dict:
    """FastAPI `responses=` for these statuses, so /openapi.json declares each error answer."""
    return {s: {"model": ErrorResponse, "description": _MEANING[s]} for s in statuses}


def error_body(status: int, message: str, code=None, param=None, type=None) -> dict:
    return {"error": {"message": message, "type": type or _TYPES.get(status, "server_error"),
                      "param": param, "code": code}}


def error_response(e: APIError) -> JSONResponse:
    return JSONResponse(error_body(e.status, e.message, e.code, e.param, e.type), status_code=e.status)


# the error types of protocol.py's own checks: named before any other error of the same request
_OWN_ERRORS = ("invalid_unicode", "too_many")
_BASIC_TAGS = {"str", "int", "float", "bool", "none"}


def _is_union_tag(part) -> bool:
    """pydantic names the member of a Union that failed (`str`, `list[str]`, `ChatMessage`) in `loc`."""
    return isinstance(part, str) and (part in _BASIC_TAGS or "[" in part or part[:1].isupper())


def _validation_message(exc: RequestValidationError):
    errs = exc.errors()
    if not errs:
        return "invalid request", None
    first = next((e for e in errs if e.get("type") in _OWN_ERRORS), errs[0])
    raw = [p for p in first.get("loc", ()) if p != "body"]
    if first.get("type") == "json_invalid":
        return "the request body is not valid JSON", None
    if first.get("type") == "missing" and not raw:
        return "the request body is missing", None
    cut = next((i for i, p in enumerate(raw) if _is_union_tag(p)), len(raw))
    own = first.get("type") in _OWN_ERRORS
    param = ".".join(str(p) for p in (raw if own else raw[:cut]) if not _is_union_tag(p)) or None
    msg = first.get("msg", "invalid value")
    if cut < len(raw) and not own:  # no member of a Union matched: name the members
        tags = []
        for e in errs:
            loc = [p for p in e.get("loc", ()) if p != "body"]
            if loc[:cut] == raw[:cut] and len(loc) > cut and loc[cut] not in tags:
                tags.append(loc[cut])
        msg = f"expected {' or '.join(str(t) for t in tags)}"
    return (f"{param}: {msg}" if param else msg), param


def _openapi_without_422(app: FastAPI):
    """FastAPI declares a 422 on every route with a body; this server answers those errors 400."""
    make = app.openapi

    def openapi():
        if app.openapi_schema is None:
            spec = make()
            for ops in spec.get("paths", {}).values():
                for op in ops.values():
                    op.get("responses", {}).pop("422", None)
            for name in ("HTTPValidationError", "ValidationError"):
                spec.get("components", {}).get("schemas", {}).pop(name, None)
            app.openapi_schema = spec
        return app.openapi_schema

    return openapi


def install(app: FastAPI) -> None:
    app.openapi = _openapi_without_422(app)
    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        message, param = _validation_message(exc)
        return JSONResponse(error_body(400, message, "invalid_value" if param else "invalid_request", param),
                            status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        try:
            phrase = HTTPStatus(exc.status_code).phrase
        except ValueError:
            phrase = "error"
        message = exc.detail if isinstance(exc.detail, str) else phrase
        return JSONResponse(error_body(exc.status_code, message, phrase.lower().replace(" ", "_")),
                            status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unhandled error on %s", request.url.path)
        # the details stay in the server's log: an exception's text can show internals (paths,
        # pybind11 casts, engine state) that a client has no business reading
        return JSONResponse(error_body(500, f"internal error ({type(exc).__name__}); the server's log has the "
                                            "details", "internal_error"),
                            status_code=500)
