"""`turbolm serve gradio PATH_OR_URL`: a chat page with streaming, Stop, Reset and sampling controls.

Backed by the engine in this process (a workspace / HF dir / .gguf path) or by a running
api_server (an http(s) URL, through its /v1/chat/interactive). Each browser tab starts a fresh
session on its first message (an unguessable id handed out by the session table or the server)
and keeps it in gr.State, so tabs never share a history; idle sessions expire; Reset ends the session (frees its KV
blocks), Stop cancels the running answer. share=True only when asked.
"""
from __future__ import annotations

import json
import os
import time
from typing import AsyncIterator, Optional, Tuple

from turbolm.serve.async_engine import AsyncEngine, GenParams

UPDATE_EVERY_S = 0.05
EXPIRED_NOTE = "(the previous conversation expired on the server; this is a new one)\n\n"


class LocalBackend:
    """The engine in this process, through the same session table the API server uses."""

    def __init__(self, engine: AsyncEngine):
        from turbolm.serve.sessions import Sessions

        self.engine = engine
        self.sessions = Sessions(engine)
        self.name = f"{engine.model_name} (local engine)"

    async def stream(self, session_id: Optional[int], prompt: str,
                     params: GenParams) -> AsyncIterator[Tuple[str, int]]:
        """(text, session id) pieces; session_id None starts a fresh session of this tab's own."""
        self.sessions.start_reaper()  # idle tabs' sessions expire like the API server's
        if session_id is not None and session_id not in self.sessions.table:
            yield EXPIRED_NOTE, session_id  # expired while the tab was idle: a new conversation
            session_id = None
        if session_id is None:
            session_id = self.sessions.new_id(None)
        rnd = await self.sessions.begin_round(self.sessions.table[session_id], session_id, prompt)
        async for c in self.sessions.run_round(rnd, params, interactive_mode=True):
            yield c.text, session_id

    async def stop(self, session_id: int) -> None:
        self.sessions.stop(session_id)

    async def end(self, session_id: int) -> None:
        self.sessions.end(session_id)


class RemoteBackend:
    """A running api_server, over POST /v1/chat/interactive (newline-delimited JSON stream)."""

    def __init__(self, url: str, api_key: Optional[str] = None):
        import httpx

        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.AsyncClient(base_url=self.url, headers=headers, timeout=600.0)
        self.name = f"api_server at {self.url}"

    async def stream(self, session_id: Optional[int], prompt: str,
                     params: GenParams) -> AsyncIterator[Tuple[str, int]]:
        """(text, session id) pieces; session_id None asks the server for a fresh session, and so
        does one the server no longer knows (expired: 404)."""
        for attempt in range(2):
            body = dict(prompt=prompt, session_id=-1 if session_id is None else session_id,
                        interactive_mode=True, stream=True, request_output_len=params.max_new_tokens,
                        temperature=params.temperature, top_p=params.top_p, top_k=params.top_k)
            async with self.http.stream("POST", "/v1/chat/interactive", json=body) as r:
                if r.status_code == 404 and session_id is not None and attempt == 0:
                    await r.aread()
                    yield EXPIRED_NOTE, session_id
                    session_id = None
                    continue
                if r.status_code != 200:
                    await r.aread()
                    raise RuntimeError(r.json().get("error", {}).get("message", r.text))
                async for line in r.aiter_lines():
                    if line.strip():
                        item = json.loads(line)
                        if item.get("error"):
                            raise RuntimeError(item["error"])
                        yield item.get("text", ""), int(item["session_id"])
                return

    async def _post(self, body: dict) -> None:
        await self.http.post("/v1/chat/interactive", json=body)

    async def stop(self, session_id: int) -> None:
        await self._post(dict(session_id=session_id, stop=True))

    async def end(self, session_id: int) -> None:
        await self._post(dict(prompt="", session_id=session_id, interactive_mode=False, request_output_len=0))


def build_demo(backend):
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home
    import gradio as gr

    with gr.Blocks(title="turbolm chat") as demo:
        gr.Markdown(f"## turbolm chat\n{backend.name}")
        session = gr.State(None)  # this tab's session id
        chatbot = gr.Chatbot(label="chat", height=480, elem_id="chatbot")
        with gr.Row():
            box = gr.Textbox(show_label=False, placeholder="Type a message and press Enter", scale=6,
                             elem_id="prompt")
            send = gr.Button("Send", variant="primary", scale=1, elem_id="send")
        with gr.Row():
            stop = gr.Button("Stop", elem_id="stop")
            reset = gr.Button("Reset", elem_id="reset")
        with gr.Row():
            max_new = gr.Slider(1, 2048, value=256, step=1, label="max new tokens", elem_id="max_new")
            temperature = gr.Slider(0.0, 2.0, value=0.8, step=0.05, label="temperature", elem_id="temperature")
            top_p = gr.Slider(0.05, 1.0, value=0.95, step=0.05, label="top-p", elem_id="top_p")
            top_k = gr.Slider(0, 100, value=40, step=1, label="top-k", elem_id="top_k")

        async def respond(message, history, sid, n, t, p, k):
            history = list(history or [])
            if not message or not message.strip():
                yield "", history, sid
                return
            history += [{"role": "user", "content": message}, {"role": "assistant", "content": ""}]
            yield "", history, sid
            params = GenParams(max_new_tokens=int(n), temperature=float(t), top_p=float(p), top_k=int(k))
            # the page re-renders the whole chat on each update: at most UPDATE_EVERY_S apart
            text, shown, last = "", "", 0.0
            try:
                async for piece, sid in backend.stream(sid, message, params):
                    text += piece
                    if text != shown and time.monotonic() - last >= UPDATE_EVERY_S:
                        history[-1] = {"role": "assistant", "content": text}
                        shown, last = text, time.monotonic()
                        yield "", history, sid
                if text != shown:
                    history[-1] = {"role": "assistant", "content": text}
                    yield "", history, sid
            except Exception as e:  # noqa: BLE001 - shown in the page
                history[-1] = {"role": "assistant", "content": history[-1]["content"] + f"\n[error: {e}]"}
                yield "", history, sid

        async def on_stop(sid):
            if sid is not None:
                await backend.stop(sid)

        async def on_reset(sid):
            if sid is not None:
                await backend.end(sid)
            return [], None

        inputs = [box, chatbot, session, max_new, temperature, top_p, top_k]
        outputs = [box, chatbot, session]
        ev_submit = box.submit(respond, inputs, outputs)
        ev_send = send.click(respond, inputs, outputs)
        stop.click(on_stop, [session], None, cancels=[ev_submit, ev_send])
        reset.click(on_reset, [session], [chatbot, session], cancels=[ev_submit, ev_send])
    return demo


def make_backend(model_path_or_server: str, tp: int = 1, api_key: Optional[str] = None):
    target = str(model_path_or_server)
    if target.startswith(("http://", "https://")):
        return RemoteBackend(target, api_key=api_key)
    return LocalBackend(AsyncEngine.from_path(target, tp=tp))


def run(model_path_or_server: str, server_name: str = "127.0.0.1", server_port: int = 6006, tp: int = 1,
        share: bool = False, api_key: Optional[str] = None):
    demo = build_demo(make_backend(model_path_or_server, tp=int(tp), api_key=api_key))
    demo.queue(default_concurrency_limit=64).launch(server_name=server_name, server_port=int(server_port),
                                                    share=bool(share), show_error=True)
