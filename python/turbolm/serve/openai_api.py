"""POST /v1/chat/completions and POST /v1/completions with OpenAI's semantics.

Each choice is one engine request on its own session id (allocated by the server unless the
client names one), ended when the choice is over so its KV blocks are freed. Streams are SSE
`data: {chunk}` lines ending `data: [DONE]`; a client that goes away cancels its requests
(streaming: the response task is cancelled; non-streaming: a watcher polls for the disconnect).
"""
from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import AsyncIterator, Callable, List, Optional, Tuple

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from turbolm.serve.async_engine import MAX_USER_SESSION_ID, Chunk, EngineError, GenParams
from turbolm.serve.errors import APIError, error_body, error_responses
from turbolm.serve import tools as tools_lib
from turbolm.serve.grammar import GrammarError
from turbolm.serve.protocol import ChatCompletionRequest, CompletionRequest, usage

# ---------------------------------------------------------------------------------------------
# shared pieces


def check_prompt(state, ids: List[int]) -> int:
    """Room left for output after the prompt; 400 when the prompt alone does not fit."""
    limit = state.engine.session_len
    if not ids:
        raise APIError(400, "the prompt is empty", "invalid_value", "prompt")
    if len(ids) >= limit:
        raise APIError(400, f"This model's maximum context length is {limit} tokens. However, your prompt has "
                            f"{len(ids)} tokens. Please reduce the length of the prompt.",
                       "context_length_exceeded", "messages")
    vocab = state.engine.tokenizer.vocab_size
    if any(not 0 <= t < vocab for t in ids):
        raise APIError(400, f"token ids must be in [0, {vocab})", "invalid_value", "prompt")
    return limit - len(ids)


def session_ids(state, req, n: int) -> List[Optional[int]]:
    """The session id of each choice: None (the engine allocates) unless the client names one,
    which must be its own (below 2**40), idle, and not an interactive session. The caller must
    start generate() on it before its next await, which claims it."""
    sid = req.session_id
    if sid is None or sid == -1:
        return [None] * n  # the engine allocates
    if n != 1:
        raise APIError(400, "session_id can only be given with n = 1", "invalid_value", "session_id")
    if not 0 <= sid < MAX_USER_SESSION_ID:
        raise APIError(400, f"session_id must be -1 or in [0, {MAX_USER_SESSION_ID})", "invalid_value",
                       "session_id")
    if sid in state.sessions.table or sid in state.engine.running:
        raise APIError(409, f"session {sid} is in use", "session_busy", "session_id")
    return [sid]


def engine_error(e: EngineError) -> APIError:
    """The engine refused a request ('session N: why': its input) -> 400; it failed -> 500."""
    msg = str(e)
    if msg.startswith("session "):
        return APIError(400, msg, "invalid_request", None)
    return APIError(500, msg, "engine_error", type="server_error")


def gen_params(req, max_new: int, index: int, logprobs: bool, top: int = 0,
               prompt_logprobs: Optional[int] = None, grammar=None) -> GenParams:
    return GenParams(max_new_tokens=max_new, temperature=req.temperature, top_p=req.top_p, top_k=req.top_k,
                     repetition_penalty=req.repetition_penalty, presence_penalty=req.presence_penalty,
                     frequency_penalty=req.frequency_penalty, logit_bias=req.bias(),
                     ignore_eos=req.ignore_eos, seed=None if req.seed is None else req.seed + index,
                     stop=req.stop_list(), logprobs=logprobs, top_logprobs=top, prompt_logprobs=prompt_logprobs,
                     grammar=grammar)


async def compile_grammars(state, req, n: int, spec=None) -> list:
    """One Matcher per choice for a structured request (response_format / guided_*, or `spec`:
    (parameter, grammar)), else Nones; an invalid schema, regex or grammar is a 400 naming the
    parameter."""
    spec = spec or req.grammar_spec()
    if spec is None:
        return [None] * n
    param, grammar = spec
    try:
        return [await state.engine.structured.compile(grammar) for _ in range(n)]
    except GrammarError as e:
        raise APIError(400, f"{param}: {e}", "invalid_value", param)


def chat_messages(req) -> List[dict]:
    """The request's messages as plain dicts (developer is system), tool fields kept."""
    out = []
    for m in req.messages:
        d = {"role": "system" if m.role == "developer" else m.role,
             "content": m.content if isinstance(m.content, str) or m.content is None
             else [p.model_dump() for p in m.content]}
        if m.tool_calls:
            d["tool_calls"] = [c.model_dump() for c in m.tool_calls]
        if m.tool_call_id:
            d["tool_call_id"] = m.tool_call_id
        out.append(d)
    return out


def tool_grammar(req, parser) -> Optional[Tuple[str, dict]]:
    """tool_choice 'required' or a named function: the grammar that forces the call(s)."""
    choice = req.tool_choice
    if not req.uses_tools() or choice in (None, "auto"):
        return None
    tools = [t.model_dump(exclude_none=True) for t in req.tools]
    if not isinstance(choice, str):  # a named function: exactly that one
        tools = [t for t in tools if t["function"]["name"] == choice.function.name]
    multiple = req.parallel_tool_calls and isinstance(choice, str)
    return "tool_choice", {"type": "grammar", "grammar": parser.grammar(tools, multiple)}


def tool_call_json(call: dict) -> dict:
    return {"id": tools_lib.new_call_id(), "type": "function",
            "function": {"name": call["name"], "arguments": call["arguments"]}}


def max_new_tokens(requested: Optional[int], room: int) -> int:
    """The output budget: what the request asks (0 included: prompt scoring), at most the room."""
    return room if requested is None else min(requested, room)


def check_logit_bias(state, req) -> None:
    vocab = state.engine.tokenizer.vocab_size
    bad = [t for t in req.bias() if not 0 <= t < vocab]
    if bad:
        raise APIError(400, f"logit_bias: token {bad[0]} is not in the vocabulary [0, {vocab})", "invalid_value",
                       "logit_bias")


async def merge(streams: List[AsyncIterator[Chunk]]) -> AsyncIterator[Tuple[int, Chunk]]:
    """Interleave several choice streams as (index, chunk); closing it cancels them all."""
    if len(streams) == 1:
        try:
            async for c in streams[0]:
                yield 0, c
        finally:
            await streams[0].aclose()  # now, not when the collector gets to it: cancels the request
        return
    queue: asyncio.Queue = asyncio.Queue()
    done = object()

    async def pump(i, s):
        try:
            async for c in s:
                await queue.put((i, c))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            await queue.put((i, e))
        finally:
            await queue.put((i, done))

    tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams)]
    left = len(tasks)
    try:
        while left:
            i, item = await queue.get()
            if item is done:
                left -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield i, item
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _disconnected(request: Request) -> None:
    """Returns when the client goes away: once the body is read, the next ASGI message a server
    sends is http.disconnect (no polling, so an abandoned request stops within milliseconds)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def until_disconnect(request: Request, coro):
    """Await `coro`, cancelling it when the client disconnects first."""
    task = asyncio.ensure_future(coro)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise APIError(499, "client closed the request", "client_closed")
    finally:
        for t in (task, gone):
            if not t.done():
                t.cancel()
        await asyncio.gather(gone, return_exceptions=True)


async def collect(stream: AsyncIterator[Chunk], logprobs: bool) -> Chunk:
    """Run one choice's stream to the end: one Chunk with the whole text, ids and logprobs."""
    texts, ids, lps, tops, prompt, last = [], [], [], None, None, Chunk("", [], None, 0, None)
    cached = 0
    async for c in stream:
        cached = max(cached, c.cached_tokens)
        texts.append(c.text)
        ids.extend(c.token_ids)
        if c.logprobs is not None:
            lps.extend(c.logprobs)
        if c.top_logprobs is not None:
            tops = tops if tops is not None else []
            tops.extend(c.top_logprobs)
        prompt = prompt or c.prompt_logprobs
        last = c
    return Chunk("".join(texts), ids, lps if logprobs else None, last.num_tokens, last.finish_reason,
                 tops if logprobs else None, prompt, cached)


def sse(obj) -> str:
    return f"data: {json.dumps(obj)}\n\n"


def chunk_writer(req, base: dict) -> Callable[..., str]:
    """SSE chunks of one streamed response: `base` fields + choices; with
    stream_options.include_usage every chunk carries `usage` (null until the last one)."""
    include_usage = bool(req.stream_options and req.stream_options.include_usage)

    def chunk(choices, **extra) -> str:
        out = dict(base, choices=choices, **extra)
        if include_usage and "usage" not in out:
            out["usage"] = None
        return sse(out)

    return chunk


def sse_response(body: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(body, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def finish(reason: Optional[str]) -> Optional[str]:
    return None if reason is None else ("length" if reason == "length" else "stop")


def token_text(state, i: int) -> str:
    return state.engine.tokenizer.token_text(i)


def chat_logprobs(state, ids: List[int], lps: Optional[List[float]], tops: Optional[list]):
    """OpenAI's chat `logprobs.content`: each token with its bytes and its alternatives."""
    if lps is None:
        return None
    tok = state.engine.tokenizer

    def entry(i, lp):
        return {"token": tok.token_text(i), "logprob": lp, "bytes": list(tok.token_bytes(i))}

    content = []
    for k, (i, lp) in enumerate(zip(ids, lps)):
        e = entry(i, lp)
        e["top_logprobs"] = [entry(a, alp) for a, alp in tops[k]] if tops else []
        content.append(e)
    return {"content": content}


def _top_dict(state, chosen: int, lp: float, alts) -> dict:
    """Legacy completions' top_logprobs entry: text -> logprob of the alternatives and the chosen
    token (as vLLM does), so `max(top.values())` tells whether the chosen token was the argmax."""
    out = {}
    for a, alp in list(alts or []) + [(chosen, lp)]:
        out.setdefault(token_text(state, a), alp)
    return out


def completion_logprobs(state, ids: List[int], lps: Optional[List[float]], tops: Optional[list], offset: int,
                        prompt: Optional[Tuple[List[int], Tuple[List[float], Optional[list]]]] = None):
    """OpenAI's legacy `logprobs` object. `prompt`: (prompt ids, (logprobs of tokens 1.., their
    alternatives)) when echo scores the prompt; its first token has no logprob (null)."""
    if lps is None:
        return None
    tokens, token_lps, top = [], [], []
    if prompt is not None:
        p_ids, (p_lps, p_tops) = prompt
        for k, i in enumerate(p_ids):
            tokens.append(token_text(state, i))
            if k == 0:
                token_lps.append(None)
                top.append(None)
            else:
                token_lps.append(p_lps[k - 1])
                top.append(_top_dict(state, i, p_lps[k - 1], p_tops[k - 1] if p_tops else None))
    for k, (i, lp) in enumerate(zip(ids, lps)):
        tokens.append(token_text(state, i))
        token_lps.append(lp)
        top.append(_top_dict(state, i, lp, tops[k] if tops else None))
    offsets, pos = [], offset
    for t in tokens:
        offsets.append(pos)
        pos += len(t)
    return {"tokens": tokens, "token_logprobs": token_lps, "top_logprobs": top,
            "text_offset": offsets}


async def stream_events(make_events: Callable[[], AsyncIterator[str]],
                        streams: List[AsyncIterator[Chunk]]) -> AsyncIterator[str]:
    """Engine errors mid-stream become an error event; the stream always ends with [DONE].
    However it ends (a client gone mid-write included), the choices' engine streams are closed
    here and now, so their requests are cancelled and their session ids released at once."""
    events = make_events()
    try:
        async for ev in events:
            yield ev
    except EngineError as e:
        err = engine_error(e)
        yield sse(error_body(err.status, err.message, err.code, err.param, err.type))
    except APIError as e:
        yield sse(error_body(e.status, e.message, e.code, e.param))
    finally:
        await events.aclose()
        for s in streams:
            await s.aclose()
    yield "data: [DONE]\n\n"


# ---------------------------------------------------------------------------------------------
# routes


def build_router(state) -> APIRouter:
    router = APIRouter()

    @router.post("/v1/chat/completions", dependencies=state.auth,
                 responses=error_responses(400, 401, 404, 409, 413, 415))
    async def chat_completions(req: ChatCompletionRequest, request: Request):
        state.check_model(req.model)
        check_logit_bias(state, req)
        msgs = chat_messages(req)
        parser = tools_lib.parser_for(state.engine.template)
        uses_tools = req.uses_tools()
        try:
            if uses_tools or any(m["role"] == "tool" or m.get("tool_calls") for m in msgs):
                tool_defs = [t.model_dump(exclude_none=True) for t in req.tools] if uses_tools else None
                prompt = tools_lib.render(state.engine.template, msgs, tool_defs, parser)
            else:
                prompt = state.engine.template.messages2prompt(msgs)
        except ValueError as e:
            raise APIError(400, str(e), "invalid_value", "messages")
        ids = await state.engine.encode_async(prompt, add_bos=True)
        room = check_prompt(state, ids)
        max_new = min(req.max_completion_tokens or req.max_tokens or room, room)
        grammars = await compile_grammars(state, req, req.n, tool_grammar(req, parser))
        sids = session_ids(state, req, req.n)
        want_lp = bool(req.logprobs)
        rid, created, model = f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), state.model_name

        # Created now, before any await: creating a stream claims its session id.
        streams = [state.engine.generate(ids, gen_params(req, max_new, i, want_lp, req.top_logprobs or 0,
                                                         grammar=grammars[i]),
                                         session_id=sids[i]) for i in range(req.n)]

        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            chunk = chunk_writer(req, {"id": rid, "object": "chat.completion.chunk", "created": created,
                                       "model": model})

            async def events():
                for i in range(req.n):
                    yield chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                  "finish_reason": None}])
                total, cached = {}, 0
                held = [tools_lib.ToolStream(parser) if uses_tools else None for _ in range(req.n)]
                async for i, c in merge(streams):
                    total[i] = c.num_tokens
                    cached = max(cached, c.cached_tokens)
                    text = held[i].push(c.text) if held[i] else c.text
                    if text or c.logprobs:
                        yield chunk([{"index": i, "delta": {"content": text},
                                      "logprobs": chat_logprobs(state, c.token_ids, c.logprobs, c.top_logprobs),
                                      "finish_reason": None}])
                    if c.finish_reason is None:
                        continue
                    reason = finish(c.finish_reason)
                    if held[i]:
                        rest, calls = held[i].finish()
                        calls = calls if req.parallel_tool_calls else calls[:1]
                        if rest:
                            yield chunk([{"index": i, "delta": {"content": rest}, "logprobs": None,
                                          "finish_reason": None}])
                        for k, call in enumerate(calls):  # one delta per call, with its whole arguments
                            yield chunk([{"index": i, "delta": {"tool_calls": [dict(tool_call_json(call), index=k)]},
                                          "logprobs": None, "finish_reason": None}])
                        reason = "tool_calls" if calls else reason
                    yield chunk([{"index": i, "delta": {}, "logprobs": None, "finish_reason": reason}])
                if include_usage:
                    yield chunk([], usage=usage(len(ids), sum(total.values()), cached))

            return sse_response(stream_events(events, streams))

        async def run_all():
            return await asyncio.gather(*[collect(s, want_lp) for s in streams])

        try:
            results = await until_disconnect(request, run_all())
        except EngineError as e:
            raise engine_error(e)
        choices = []
        for i, r in enumerate(results):
            message, reason = {"role": "assistant", "content": r.text}, finish(r.finish_reason)
            if uses_tools:
                content, calls = parser.parse(r.text)
                calls = calls if req.parallel_tool_calls else calls[:1]
                if calls:
                    message = {"role": "assistant", "content": content or None,
                               "tool_calls": [tool_call_json(c) for c in calls]}
                    reason = "tool_calls"
            choices.append({"index": i, "message": message, "finish_reason": reason,
                            "logprobs": chat_logprobs(state, r.token_ids, r.logprobs, r.top_logprobs)})
        return JSONResponse({"id": rid, "object": "chat.completion", "created": created, "model": model,
                             "choices": choices, "usage": usage(len(ids), sum(r.num_tokens for r in results),
                                                                max(r.cached_tokens for r in results))})

    @router.post("/v1/completions", dependencies=state.auth,
                 responses=error_responses(400, 401, 404, 409, 413, 415))
    async def completions(req: CompletionRequest, request: Request):
        state.check_model(req.model)
        check_logit_bias(state, req)
        prompts = req.prompt
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        if not prompts:
            raise APIError(400, "the prompt is empty", "invalid_value", "prompt")
        texts = [p for p in prompts if isinstance(p, str)]
        text_ids = iter(await state.engine.encode_many_async(texts, add_bos=True))
        encoded = []
        for p in prompts:
            ids = next(text_ids) if isinstance(p, str) else list(p)
            room = check_prompt(state, ids)
            text = p if isinstance(p, str) else state.engine.tokenizer.decode(ids)
            encoded.append((ids, text, max_new_tokens(req.max_tokens, room)))
        n_total = len(encoded) * req.n
        grammars = await compile_grammars(state, req, n_total)
        sids = session_ids(state, req, n_total)
        want_lp = req.logprobs is not None
        top = req.logprobs or 0
        score_prompt = req.echo and want_lp  # echo + logprobs: the prompt's tokens get logprobs too
        rid, created, model = f"cmpl-{uuid.uuid4().hex}", int(time.time()), state.model_name
        jobs = [(k * req.n + j, ids, text, max_new) for k, (ids, text, max_new) in enumerate(encoded)
                for j in range(req.n)]
        prompt_tokens = sum(len(ids) for ids, _, _ in encoded)

        def params(idx, max_new):
            return gen_params(req, max_new, idx, want_lp, top, top if score_prompt else None, grammars[idx])

        # Created now, before any await: creating a stream claims its session id.
        streams = [state.engine.generate(ids, params(idx, max_new), session_id=sids[idx])
                   for idx, ids, _, max_new in jobs]

        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            chunk = chunk_writer(req, {"id": rid, "object": "text_completion", "created": created, "model": model})

            async def events():
                total, offsets, cached = {}, {}, {}
                if req.echo and not score_prompt:
                    for idx, _, text, _ in jobs:
                        offsets[idx] = len(text)
                        yield chunk([{"index": idx, "text": text, "logprobs": None, "finish_reason": None}])
                async for i, c in merge(streams):
                    idx, ids, text, _ = jobs[i]
                    if idx % req.n == 0:  # one choice per prompt counts its cached tokens
                        cached[idx] = c.cached_tokens
                    if score_prompt and idx not in offsets:  # the prompt's logprobs come with its first chunk
                        lp = completion_logprobs(state, [], [], None, 0, (ids, c.prompt_logprobs or ([], None)))
                        offsets[idx] = len(text)
                        yield chunk([{"index": idx, "text": text, "logprobs": lp, "finish_reason": None}])
                    total[idx] = c.num_tokens
                    lp = completion_logprobs(state, c.token_ids, c.logprobs, c.top_logprobs, offsets.get(idx, 0))
                    offsets[idx] = offsets.get(idx, 0) + len(c.text)
                    if c.text or c.finish_reason is not None or lp:
                        yield chunk([{"index": idx, "text": c.text, "logprobs": lp,
                                      "finish_reason": finish(c.finish_reason)}])
                if include_usage:
                    comp = sum(total.values())
                    yield chunk([], usage=usage(prompt_tokens, comp, sum(cached.values())))

            return sse_response(stream_events(events, streams))

        async def run_all():
            return await asyncio.gather(*[collect(s, want_lp) for s in streams])

        try:
            results = await until_disconnect(request, run_all())
        except EngineError as e:
            raise engine_error(e)
        choices = []
        for (idx, ids, text, _), r in zip(jobs, results):
            head = text if req.echo else ""
            prompt = (ids, r.prompt_logprobs or ([], None)) if score_prompt else None
            lp = completion_logprobs(state, r.token_ids, r.logprobs, r.top_logprobs, 0 if prompt else len(head), prompt)
            choices.append({"index": idx, "text": head + r.text, "logprobs": lp,
                            "finish_reason": finish(r.finish_reason)})
        return JSONResponse({"id": rid, "object": "text_completion", "created": created, "model": model,
                             "choices": choices,
                             "usage": usage(prompt_tokens, sum(r.num_tokens for r in results),
                                            sum(r.cached_tokens for (idx, *_), r in zip(jobs, results)
                                                if idx % req.n == 0))})

    return router
