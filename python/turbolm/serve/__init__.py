"""Serving: the OpenAI-compatible API server (`api_server`), its terminal client (`api_client`)
and a Gradio chat page (`gradio_app`). `async_engine` is the one bridge from asyncio to the engine
that all three share; `textstream` turns streamed ids into text with stop strings honoured."""
