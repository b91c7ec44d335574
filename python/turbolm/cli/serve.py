"""`turbolm serve api_server | api_client | gradio`. Nothing here imports torch."""
from __future__ import annotations

from typing import List, Optional

import click

from .strict import Group, bool_option

PORT = click.IntRange(0, 65535)
POSITIVE = click.IntRange(min=1)
POSITIVE_FLOAT = click.FloatRange(min=0, min_open=True)


def comma_list(value: Optional[str]) -> Optional[List[str]]:
    if value is None:
        return None
    return [v.strip() for v in value.split(",") if v.strip()]


@click.group(cls=Group)
def serve():
    """Serving: an OpenAI-compatible API server, its client, a web UI."""


@serve.command("api_server")
@click.argument("model_path")
@click.option("--server_name", default="0.0.0.0", help="address to bind")
@click.option("--server_port", type=PORT, default=23333, help="port to bind")
@click.option("--instance_num", type=POSITIVE, default=64, help="max concurrent sequences in the persistent batch")
@click.option("--tp", type=POSITIVE, default=1, help="tensor-parallel ranks")
@click.option("--served_model_name", default=None, help="model name clients use  [default: the workspace's]")
@click.option("--api_keys", default=None, help="comma-separated keys; requests then need 'Authorization: Bearer KEY'")
@click.option("--allowed_origins", default=None,
              help="comma-separated origins allowed by CORS (e.g. http://localhost:3000)  [default: none, CORS closed]")
@click.option("--max_body_mb", type=POSITIVE_FLOAT, default=4.0, help="request bodies above this size get a 413")
@click.option("--session_ttl", type=click.FloatRange(min=0), default=1800.0,
              help="seconds after which an idle interactive session expires and frees its KV blocks (0: never)")
@click.option("--log_level", type=click.Choice(["trace", "debug", "info", "warning", "error", "critical"],
                                               case_sensitive=False), default="info")
@click.option("--model_name", default=None, help="a registered chat template  [default: the model's own chat_template, else the workspace's model_name]")
@click.option("--session_len", type=POSITIVE, default=None, help="max tokens of a session  [default: the workspace's]")
@click.option("--cache_max_entry_count", type=float, default=None,
              help="KV pool: < 1 a fraction of memory, >= 1 a block count  [default: the workspace's]")
@click.option("--act_type", type=click.Choice(["float", "int8", "bf16"]), default=None,
              help="int8 (int4/int8 workspaces): activations quantized per token in blocks of 32, int8 dot products; "
                   "bf16 (fp16/bf16 workspaces, AVX512-BF16 CPUs): bf16 dot products  [default: the workspace's]")
def api_server(model_path, api_keys, allowed_origins, **kwargs):
    """Serve a model over an OpenAI-compatible HTTP API.

    MODEL_PATH: a workspace, an HF directory or a .gguf file.
    """
    from turbolm.serve.api_server import serve as run

    extra = {k: v for k, v in dict(allowed_origins=comma_list(allowed_origins)).items() if v is not None}
    run(model_path, api_keys=comma_list(api_keys), **extra, **kwargs)


@serve.command("api_client")
@click.argument("restful_api_url")
@click.option("--session_id", type=int, default=-1, help="interactive session  [default: -1, a fresh one]")
@click.option("--api_key", default=None, help="sent as 'Authorization: Bearer KEY'")
def api_client(restful_api_url, session_id, api_key):
    """Terminal chat against a running api_server.

    RESTFUL_API_URL: the server, e.g. http://localhost:23333 (it talks to /v1/chat/interactive).
    """
    from turbolm.serve.api_client import main

    main(restful_api_url, session_id=session_id, api_key=api_key)


@serve.command("gradio")
@click.argument("model_path_or_server")
@click.option("--server_name", default="127.0.0.1", help="address to bind")
@click.option("--server_port", type=PORT, default=6006, help="port to bind")
@click.option("--tp", type=POSITIVE, default=1, help="tensor-parallel ranks (with a local model)")
@bool_option("--share", help="also publish a public gradio.live link")
@click.option("--api_key", default=None, help="key of the api_server (with a URL)")
def gradio(model_path_or_server, **kwargs):
    """A chat web page over a local model or a running api_server.

    MODEL_PATH_OR_SERVER: a workspace, an HF directory, a .gguf, or the URL of an api_server.
    """
    from turbolm.serve.gradio_app import run

    run(model_path_or_server, **kwargs)
