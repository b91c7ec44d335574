"""`turbolm lite auto_awq`: activation-aware int4 (or int8) weight quantization to an AWQ checkpoint.

One layer-by-layer pass (``calibrate.run_layerwise``) both collects the calibration statistics
(saved to ``work_dir`` like `lite calibrate`) and, after each layer's full-precision pass,
quantizes that layer in place:

1. capture the inputs of the four smoothing groups on the first samples (about ``search_tokens``
   tokens, whole sequences, since attention needs them);
2. search and fold the smoothing scales, then clip (``awq_search``);
3. quantize q/k/v/o/gate/up/down group-wise (``quantize``) and pack them (``awq_pack``).

The next layer reads the fp outputs of this one, as in AutoAWQ. The checkpoint (``awq_checkpoint``)
goes to ``work_dir`` beside the statistics.
"""
from __future__ import annotations

import os
import time
from typing import Dict, List, Optional, Tuple

import torch

from turbolm.errors import UserError

from .awq_checkpoint import save_awq
from .awq_pack import pack_awq
from .awq_search import SearchConfig, capture_inputs, input_importance, smooth_and_clip_layer
from .calib_data import RECORD_FILE, get_calib_data, load_record, load_text, save_record
from .calibrate import CalibStats, check_device, run_layerwise
from .kv_qparams import parse_bool
from .model_utils import LINEARS, load_config, load_model, model_info
from .qparams_search import parse_grid
from .quantize import check_bits, quantize


def linear_shapes(config) -> Dict[str, tuple]:
    """(out_features, in_features) of each quantized Linear of a decoder layer."""
    info = model_info(config)
    q, kv = info.num_heads * info.head_dim, info.num_kv_heads * info.head_dim
    return {"self_attn.q_proj": (q, info.hidden), "self_attn.k_proj": (kv, info.hidden),
            "self_attn.v_proj": (kv, info.hidden), "self_attn.o_proj": (info.hidden, q),
            "mlp.gate_proj": (info.intermediate, info.hidden), "mlp.up_proj": (info.intermediate, info.hidden),
            "mlp.down_proj": (info.hidden, info.intermediate)}


def check_group_size(w_group_size, bits: int, config) -> int:
    """The same rule `turbolm convert` applies (converter.quant), checked before any work, so a
    checkpoint this writes always converts."""
    from turbolm.converter.quant import GROUP_ALIGN, valid_group_sizes

    shapes = linear_shapes(config)
    ins = sorted({i for _, i in shapes.values()})
    valid = valid_group_sizes(ins, limit=max(ins))
    try:
        group = int(w_group_size)
    except (TypeError, ValueError):
        group = -1
    if group not in valid:
        raise UserError(f"--w_group_size {w_group_size} must be a multiple of {GROUP_ALIGN} dividing the "
                        f"in_features of every Linear ({', '.join(map(str, ins))}); valid group sizes: "
                        f"{', '.join(map(str, valid)) or 'none'}")
    per = 32 // bits
    bad = [f"{n} ({o})" for n, (o, _) in shapes.items() if o % per]
    if bad:
        raise UserError(f"{bits}-bit AWQ packing needs out_features divisible by {per}: not {', '.join(bad)}")
    return group


def calib_settings(work_dir: str, calib_dataset: Optional[str], calib_samples: Optional[int],
                   calib_seqlen: Optional[int]) -> Tuple[str, int, int]:
    """The calibration set of ``auto_awq``: the flags given, else what `calibrate` recorded in
    ``work_dir`` (samples and seqlen only with the recorded set), else 128 x 2048."""
    rec = load_record(work_dir)
    if calib_dataset is None:
        if rec is None:
            raise UserError(f"no calibration set: pass --calib_dataset (a .txt/.jsonl file, or c4/ptb/wikitext2/"
                            f"pileval from the local HF datasets cache), or run `turbolm lite calibrate --work_dir "
                            f"{work_dir}` first so that {os.path.join(work_dir, RECORD_FILE)} records it")
        calib_dataset = rec["calib_dataset"]
        print(f"auto_awq: calibrating on {calib_dataset}, as recorded in {os.path.join(work_dir, RECORD_FILE)}")
    def key(d: str) -> str:  # the record keeps a file as an absolute path: compare files by theirs
        return os.path.abspath(d) if os.path.exists(d) else d

    same = rec is not None and key(rec["calib_dataset"]) == key(calib_dataset)
    if calib_samples is None:
        calib_samples = rec["calib_samples"] if same else 128
    if calib_seqlen is None:
        calib_seqlen = rec["calib_seqlen"] if same else 2048
    return calib_dataset, int(calib_samples), int(calib_seqlen)


def gptq_round_layer(layer, hidden, layer_kwargs, bits: int, group: int, damp: float = 0.01, search: int = 0) -> dict:
    """GPTQ of each Linear of an (already smoothed) layer, in q/k/v, o, gate/up, down order: its
    weight replaced by the dequantized result; returns ``{name: (q, zeros, scales)}`` to pack."""
    from .gptq import SEQUENTIAL, gptq_layer

    device = layer.self_attn.q_proj.weight.device
    done = gptq_layer(layer, hidden, layer_kwargs, device, SEQUENTIAL, bits, group, damp, False, False,
                      search)
    return {n: (q.to(torch.int32), z.to(torch.int32), s) for n, (q, s, z, _) in done.items()}


def auto_awq(model: str, w_bits: int = 4, w_group_size: int = 128, work_dir: str = "./work_dir",
             calib_dataset: Optional[str] = None, calib_samples: Optional[int] = None,
             calib_seqlen: Optional[int] = None, device: str = "cpu", search_clip=True,
             search_tokens: int = 2048, gptq=False, scale_search=0) -> None:
    """Quantize ``model`` (HF dir) and save an AWQ checkpoint plus calibration stats in ``work_dir``.
    ``calib_dataset`` None: the set `lite calibrate` recorded in ``work_dir`` (``calib_settings``)."""
    # Every check that needs no weights comes before any work.
    calib_dataset, calib_samples, calib_seqlen = calib_settings(work_dir, calib_dataset, calib_samples,
                                                                calib_seqlen)
    bits = check_bits(w_bits)
    device = check_device(device)
    clip = parse_bool(search_clip, "search_clip")
    use_gptq = parse_bool(gptq, "gptq")
    search = parse_grid(scale_search)
    config = load_config(model)
    group = check_group_size(w_group_size, bits, config)
    if int(calib_samples) <= 0 or int(calib_seqlen) <= 0:
        raise UserError(f"calib_samples ({calib_samples}) and calib_seqlen ({calib_seqlen}) must be positive")
    load_text(calib_dataset, budget_chars=0)  # the source exists (a named set: in the local cache)
    if os.path.abspath(work_dir) == os.path.abspath(model):
        raise UserError(f"--work_dir {work_dir} is the model directory; choose another folder")

    t0 = time.time()
    hf_model, tokenizer = load_model(model)
    info = model_info(hf_model.config)
    data = get_calib_data(calib_dataset, tokenizer, calib_samples, calib_seqlen)
    n_search = min(data.shape[0], max(1, int(search_tokens) // data.shape[1]))
    cfg = SearchConfig(bits=bits, group_size=group, clip=clip)
    packed: Dict[str, torch.Tensor] = {}
    summaries: List[Dict[str, float]] = []

    def on_layer(index: int, layer, hidden: torch.Tensor, layer_kwargs: dict, stats: CalibStats) -> None:
        prefix = f"model.layers.{index}."
        x = hidden[:n_search].to(layer.self_attn.q_proj.weight.device, torch.float32)
        inputs = capture_inputs(layer, x, layer_kwargs)
        absmean = {n: stats.inputs[prefix + n].stats()["absmean"] for n in LINEARS}
        summaries.append(smooth_and_clip_layer(layer, inputs, absmean, layer_kwargs, cfg, info.num_heads,
                                               info.num_kv_heads, info.head_dim))
        # GPTQ rounding of the smoothed weights (asymmetric), Hessians over all samples; else RTN
        rounded = gptq_round_layer(layer, hidden, layer_kwargs, bits, group, search=search) if use_gptq else {}
        imps = input_importance(layer, x, layer_kwargs) if search and not use_gptq else {}
        for n in LINEARS:
            fc = layer.get_submodule(n)
            q, zeros, scales = rounded[n] if n in rounded else quantize(fc.weight.data, bits, group, imps.get(n),
                                                                          search)
            qweight, qzeros, sc = pack_awq(q.cpu().numpy(), zeros.cpu().numpy(), scales.cpu().numpy(), bits)
            packed[prefix + n + ".qweight"] = torch.from_numpy(qweight)
            packed[prefix + n + ".qzeros"] = torch.from_numpy(qzeros)
            packed[prefix + n + ".scales"] = torch.from_numpy(sc)
            if fc.bias is not None:
                packed[prefix + n + ".bias"] = fc.bias.data.to("cpu", torch.float16)

    stats = run_layerwise(hf_model, data, device, on_layer=on_layer, desc=f"auto_awq w{bits} g{group}")
    stats.save(work_dir)
    save_record(work_dir, calib_dataset, calib_samples, calib_seqlen)
    save_awq(work_dir, hf_model, packed, bits, group, model, tokenizer)
    alphas = [s[k] for s in summaries for k in s if k.endswith(".alpha")]
    rel = [s[k] for s in summaries for k in s if k.endswith(".rel_loss")]
    print(f"auto_awq: {len(summaries)} layers, w{bits} g{group}, {data.shape[0]} x {data.shape[1]} tokens "
          f"({n_search} samples searched), mean alpha {sum(alphas) / len(alphas):.2f}, mean loss vs RTN "
          f"{sum(rel) / len(rel):.3f}, {time.time() - t0:.1f}s; AWQ checkpoint in {work_dir}")
