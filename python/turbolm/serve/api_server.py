"""`turbolm serve api_server`: an OpenAI-compatible HTTP API over one engine (FastAPI + uvicorn).

Endpoints
  GET  /health                 200 {"status": "ok"} while the engine runs (no key needed)
  GET  /v1/models              the one served model
  POST /v1/chat/completions    OpenAI chat (stream, n, stop, seed, logprobs, stream_options.include_usage)
  POST /v1/completions         OpenAI completions (string / list / token prompts, echo, logprobs)
  POST /v1/chat/interactive    LMDeploy's stateful multi-round sessions (server keeps the history)
  POST /v1/encode              text -> token ids
  GET  /v1/stats               engine KV blocks (num_blocks, free_blocks, cached_blocks), running /
                               waiting sequences, requests in flight, interactive sessions
  GET  /metrics                Prometheus metrics (requests, tokens, latency histograms, KV blocks)
  GET  /docs                   the interactive API docs (Swagger UI)

Every request shares the engine's one persistent batch: handlers iterate the engine's stream
deltas (AsyncEngine.generate); no pool of instances, no busy waiting, no thread per request.

Multi-user safety: `--api_keys k1,k2` requires `Authorization: Bearer k` on /v1/*; interactive
sessions are unguessable, reserved when handed out, owned by the key that made them and expire
after `--session_ttl` idle seconds (sessions.py); POST bodies must be application/json (415,
so a cross-origin form or text/plain post never runs) and at most `--max_body_mb` (413, read no
further); CORS is closed unless `--allowed_origins` opens it (guards.py). Tokenizing runs in a
worker thread, so a huge prompt never stalls the other clients' streams.

Errors use OpenAI's JSON shape with 400 / 401 / 404 / 409 / 413 / 415 (never FastAPI's 422), and
bad input never gets a 5xx.
"""
from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import time
from typing import List, Optional, Sequence, Union

from fastapi import Depends, FastAPI, Request
from fastapi.responses import Response, StreamingResponse

from turbolm.errors import UserError
from turbolm.serve import errors
from turbolm.serve.async_engine import AsyncEngine, EngineError, GenParams
from turbolm.serve.errors import APIError, error_responses
from turbolm.serve.guards import DEFAULT_MAX_BODY_BYTES, install_guards
from turbolm.serve.openai_api import build_router, engine_error, until_disconnect
from turbolm.serve.protocol import EncodeRequest, InteractiveRequest
from turbolm.serve.sessions import Sessions

log = logging.getLogger("turbolm.serve")


def parse_api_keys(api_keys: Union[None, str, Sequence[str]]) -> List[str]:
    """`--api_keys a,b` (one comma-separated str), or keys already split (a list / tuple)."""
    if api_keys is None or api_keys is False:
        return []
    items = api_keys.split(",") if isinstance(api_keys, str) else [str(k) for k in api_keys]
    return [k.strip() for k in items if k and k.strip()]


class ServerState:
    def __init__(self, engine: AsyncEngine, served_model_name: Optional[str] = None,
                 api_keys: Sequence[str] = (), session_ttl: float = 1800.0):
        self.engine = engine
        self.sessions = Sessions(engine, ttl=session_ttl)
        self.model_name = served_model_name or engine.model_name
        self.api_keys = set(api_keys)
        self.started = int(time.time())
        self.auth = [Depends(self._check_key)] if self.api_keys else []

    async def _check_key(self, request: Request):
        header = request.headers.get("authorization", "")
        key = header[7:].strip() if header.lower().startswith("bearer ") else ""
        if key not in self.api_keys:
            raise APIError(401, "Incorrect API key provided." if key else "Missing API key: send "
                           "'Authorization: Bearer KEY'.", "invalid_api_key")

    def owner(self, request: Request) -> Optional[str]:
        """Who owns the sessions a request creates: its API key (None when the server has none)."""
        if not self.api_keys:
            return None
        header = request.headers.get("authorization", "")
        return header[7:].strip() if header.lower().startswith("bearer ") else None

    def check_model(self, name: Optional[str]) -> None:
        if name is not None and name != self.model_name:
            raise APIError(404, f"The model `{name}` does not exist; this server serves `{self.model_name}`.",
                           "model_not_found", "model")


def _ndjson(obj) -> str:
    return json.dumps(obj) + "\n"


def create_app(engine: AsyncEngine, served_model_name: Optional[str] = None, api_keys: Sequence[str] = (), *,
               max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, allowed_origins: Sequence[str] = (),
               session_ttl: float = 1800.0) -> FastAPI:
    state = ServerState(engine, served_model_name, api_keys, session_ttl=session_ttl)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        state.sessions.start_reaper()  # idle interactive sessions expire after session_ttl
        yield
        await state.sessions.stop_reaper()
        engine.close_structured()  # pending grammar masks fail now: the engine never waits on a gone worker

    # docs_url/redoc_url off: FastAPI's pages load Swagger / ReDoc from a CDN, blank offline
    app = FastAPI(title="turbolm API server", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="OpenAI-compatible API over the turbolm engine. Extras: top_k, repetition_penalty, "
                              "ignore_eos, session_id, guided_json/regex/choice/grammar; /v1/chat/interactive for "
                              "server-side sessions.")
    app.state.turbolm = state
    install_guards(app, max_body_bytes=max_body_bytes, allowed_origins=allowed_origins)
    from turbolm.serve.metrics import HTTPMetricsMiddleware, Metrics

    metrics = Metrics(lambda: dict(engine.stats(), interactive_sessions=len(state.sessions.table)))
    engine.metrics = metrics
    routes: set = set()  # filled below, once every route exists: other paths count as "other"
    app.add_middleware(HTTPMetricsMiddleware, metrics=metrics, routes=routes)
    errors.install(app)
    api_router = build_router(state)
    app.include_router(api_router)

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    install_docs(app)

    @app.get("/metrics")
    async def prometheus_metrics():
        """Prometheus metrics (no API key needed: load, never content); see serve/metrics.py."""
        return Response(metrics.render(), media_type=metrics.content_type)

    @app.get("/v1/models", dependencies=state.auth, responses=error_responses(401))
    async def models():
        return {"object": "list", "data": [{"id": state.model_name, "object": "model", "created": state.started,
                                            "owned_by": "turbolm", "max_model_len": engine.session_len}]}

    @app.get("/v1/stats", dependencies=state.auth, responses=error_responses(401))
    async def stats():
        """KV pool and load: num_blocks, free_blocks, cached_blocks (kept for interactive sessions),
        pooled_blocks and prefix_cached_tokens (the prefix cache),
        running / waiting sequences, requests_running (in flight here), requests_total,
        interactive_sessions, session_len, plus the engine's counters (tokens_generated, ...)."""
        out = engine.stats()
        out["interactive_sessions"] = len(state.sessions.table)
        out["session_len"] = engine.session_len
        return out

    @app.post("/v1/encode", dependencies=state.auth, responses=error_responses(400, 401, 413, 415))
    async def encode(req: EncodeRequest):
        texts = [req.input] if isinstance(req.input, str) else list(req.input)
        if req.do_preprocess:
            texts = [engine.template.get_prompt(t, sequence_start=True) for t in texts]
        ids = await engine.encode_many_async(texts, add_bos=req.add_bos)
        if isinstance(req.input, str):
            out = {"input_ids": ids[0], "length": len(ids[0])}
        else:
            out = {"input_ids": ids, "length": [len(i) for i in ids]}
        # A body limit's worth of text is ~10^6 ids: render their JSON off the event loop too.
        n_ids = sum(len(i) for i in ids)
        body = json.dumps(out) if n_ids < 4096 else await asyncio.to_thread(json.dumps, out)
        return Response(body, media_type="application/json")

    @app.post("/v1/chat/interactive", dependencies=state.auth,
              responses=error_responses(400, 401, 404, 409, 413, 415))
    async def interactive(req: InteractiveRequest, request: Request):
        """One round of a server-side session. interactive_mode=true keeps the history for the next
        round; stop=true cancels the session's running round; an empty prompt with
        interactive_mode=false and request_output_len=0 ends the session. stream=true answers
        newline-delimited JSON items {text, tokens, finish_reason, history_tokens, session_id}."""
        sessions = state.sessions
        owner = state.owner(request)
        if req.stop or req.cancel:
            if req.session_id != -1:
                sessions.lookup(req.session_id, owner, create=False)
                sessions.stop(req.session_id)
            return {"text": "", "tokens": 0, "finish_reason": "cancelled", "session_id": req.session_id}
        prompt = req.prompt if isinstance(req.prompt, str) else [m.model_dump() for m in req.prompt]
        if not req.interactive_mode and not prompt and req.request_output_len == 0:
            if req.session_id != -1:  # LMDeploy's way of ending a session
                sessions.lookup(req.session_id, owner, create=False)
                sessions.end(req.session_id)
            return {"text": "", "tokens": 0, "finish_reason": "end", "session_id": req.session_id}
        params = GenParams(max_new_tokens=req.request_output_len, temperature=req.temperature, top_p=req.top_p,
                           top_k=req.top_k, repetition_penalty=req.repetition_penalty, ignore_eos=req.ignore_eos,
                           seed=req.seed, stop=list(req.stop_words or []))
        if req.session_id == -1:
            sid = sessions.new_id(owner)  # reserved now: concurrent requests never share it
            session = sessions.table[sid]
        else:
            sid = int(req.session_id)
            session = sessions.lookup(sid, owner, create=True)
        rnd = await sessions.begin_round(session, sid, prompt)  # errors (busy, bad, too long) before any byte
        gen = sessions.run_round(rnd, params, interactive_mode=req.interactive_mode)

        if req.stream:
            async def lines():
                try:
                    async for c in gen:
                        yield _ndjson({"text": c.text, "tokens": c.num_tokens, "finish_reason": c.finish_reason,
                                       "history_tokens": sessions.step(sid), "session_id": sid})
                except EngineError as e:
                    yield _ndjson({"text": "", "tokens": 0, "finish_reason": "error", "error": str(e),
                                   "session_id": sid})
                finally:
                    await gen.aclose()  # ends the round (cancels it in the engine) now

            return StreamingResponse(lines(), media_type="application/x-ndjson")
        text, last = [], None

        async def collect():
            nonlocal last
            async for c in gen:
                text.append(c.text)
                last = c

        try:  # a client that goes away cancels the round (and frees the session) like a stop
            await until_disconnect(request, collect())
        except EngineError as e:
            raise engine_error(e)
        return {"text": "".join(text), "tokens": last.num_tokens if last else 0,
                "finish_reason": last.finish_reason if last else None, "history_tokens": sessions.step(sid),
                "session_id": sid}

    routes.update(r.path for r in list(app.routes) + list(api_router.routes) if getattr(r, "path", None))
    return app


def install_docs(app: FastAPI) -> None:
    """/docs: Swagger UI served from the files the fastapi-offline package ships (Swagger UI 5,
    which renders FastAPI's OpenAPI 3.1), so it works with no network (FastAPI's default page
    loads them from a CDN)."""
    import importlib.util

    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.staticfiles import StaticFiles

    spec = importlib.util.find_spec("fastapi_offline")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("No module named 'fastapi_offline'", name="fastapi_offline")
    assets = os.path.join(list(spec.submodule_search_locations)[0], "static")
    app.mount("/docs-assets", StaticFiles(directory=assets), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs():
        return get_swagger_ui_html(openapi_url=app.openapi_url, title=f"{app.title} - docs",
                                   swagger_js_url="/docs-assets/swagger-ui-bundle.js",
                                   swagger_css_url="/docs-assets/swagger-ui.css",
                                   swagger_favicon_url="/docs-assets/favicon.png")


def _is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def warn_if_exposed(host: str, api_keys: Sequence[str]) -> bool:
    """Logs a warning (and returns True) when the server would listen beyond loopback without an
    API key. The default bind stays LMDeploy's 0.0.0.0; the warning says what that means."""
    if api_keys or _is_loopback(host):
        return False
    log.warning("listening on %s without an API key: anyone who can reach this address can use the model "
                "and its sessions. Pass --api_keys KEY (or --server_name 127.0.0.1 for this machine only).", host)
    return True


def serve(model_path: str, server_name: str = "0.0.0.0", server_port: int = 23333, instance_num: int = 64,
          tp: int = 1, served_model_name: Optional[str] = None, api_keys=None, log_level: str = "info",
          model_name: Optional[str] = None, session_len: Optional[int] = None,
          cache_max_entry_count: Optional[float] = None, allowed_origins=None, max_body_mb: float = 4.0,
          session_ttl: float = 1800.0, act_type: Optional[str] = None):
    import uvicorn

    logging.basicConfig(level=str(log_level).upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    keys = parse_api_keys(api_keys)
    origins = parse_api_keys(allowed_origins)  # the same comma-separated list
    if not max_body_mb or float(max_body_mb) <= 0:
        raise UserError(f"--max_body_mb must be > 0, got {max_body_mb}")
    extra = {k: v for k, v in dict(session_len=session_len, cache_max_entry_count=cache_max_entry_count,
                                   act_type=act_type).items() if v is not None}
    engine = AsyncEngine.from_path(model_path, tp=tp, instance_num=instance_num, model_name=model_name, **extra)
    app = create_app(engine, served_model_name=served_model_name, api_keys=keys,
                     max_body_bytes=int(float(max_body_mb) * (1 << 20)), allowed_origins=origins,
                     session_ttl=float(session_ttl))
    warn_if_exposed(str(server_name), keys)
    log.info("serving %s as %r on http://%s:%s (docs at /docs)", model_path, app.state.turbolm.model_name,
             server_name, server_port)
    uvicorn.run(app, host=server_name, port=int(server_port), log_level=str(log_level).lower(),
                timeout_keep_alive=30)
