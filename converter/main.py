"""`turbolm convert`: checkpoint (SOURCES) -> workspace (TARGETS), written atomically.

Everything that can be checked is checked before the first byte is written; the workspace is
built in a temp dir beside ``dst_path`` and renamed into place at the end, so a failed or
interrupted convert leaves no workspace and no temp dir behind.
"""
from __future__ import annotations

import os
import shutil
import stat
import sys
import tempfile
import time
from typing import Optional

from turbolm.config import write_config_ini
from turbolm.errors import UserError
from turbolm.model import known_model_names

from .quant import (EMBEDDING_BITS, GROUP_ALIGN, PER_CHANNEL, QuantLinear, lm_head_group_size, mixed_recipe,
                    rank_in_sizes, valid_group_sizes)
from .sources import SOURCES, Source
from .targets import TARGETS

WORKSPACE_TEMPLATE_CANDIDATES = (
    os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "workspace_template"),
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "workspace_template"),
)
# files of workspace_template/ -> where they go in the workspace (relative to DST)
TEMPLATE_FILES = {"README.md": "README.md", "serve.sh": "serve.sh", "config.ini": "config.ini.template"}


def _guess_format(model_path: str) -> str:
    for cls in sorted(SOURCES.values(), key=lambda c: -c.claim_priority):
        if cls.claims(model_path):
            return cls.format_name
    if not os.path.exists(model_path):
        raise UserError(f"model path {model_path} does not exist")
    raise UserError(f"cannot tell the format of {model_path} (no config.json, not a .gguf); "
                    f"pass --model-format {'|'.join(SOURCES)}")


QUANTIZED_SRC = ("int4", "int8")
DEFAULT_GROUP_SIZE = 128  # --weight-type int4/int8 on a float checkpoint without --group-size


def _pick_target(src_dtype: str, dtype: Optional[str], weight_type: Optional[str]) -> str:
    if dtype is not None and dtype not in ("fp16", "bf16"):
        raise UserError(f"--dtype {dtype} is not one of fp16, bf16")
    if src_dtype in QUANTIZED_SRC:  # an AWQ checkpoint keeps its integers
        name = weight_type or src_dtype
        if name != src_dtype or dtype is not None:
            raise UserError(f"a {src_dtype} checkpoint converts to weight type {src_dtype} only "
                            f"(got {weight_type or dtype}); drop --weight-type/--dtype")
        return name
    name = weight_type or dtype or ("bf16" if src_dtype == "bf16" else "fp16")
    if name not in TARGETS:
        raise UserError(f"weight type {name} is not available; available: {', '.join(TARGETS)}")
    return name


def _pick_act_type(target_name: str, act_type: Optional[str]) -> str:
    if act_type in (None, "float"):
        return "float"
    if act_type not in ("int8", "bf16"):
        raise UserError(f"--act_type {act_type} is not one of float, int8, bf16")
    if act_type == "int8" and target_name not in QUANTIZED_SRC:
        raise UserError(f"--act_type int8 needs int4/int8 weights (--weight_type int4|int8, or an AWQ checkpoint), "
                        f"not {target_name}")
    if act_type == "bf16" and target_name in QUANTIZED_SRC:
        raise UserError(f"--act_type bf16 needs fp16/bf16 weights, not {target_name} (int8 is the int4/int8 one)")
    return act_type


def _pick_group_size(spec, target_name: str, group_size: int, tp: int) -> int:
    if spec.src_dtype in QUANTIZED_SRC and spec.quant_group_size == PER_CHANNEL:
        # Per-channel scales fit any group size: the largest that every rank's input sizes allow
        # (fewest repeated scales; the runtime quantizes activations per group of it).
        if group_size:
            return group_size
        valid = valid_group_sizes(list(rank_in_sizes(spec, tp).values()), limit=max(spec.hidden, spec.inter))
        if not valid:
            raise UserError(f"no group size (a multiple of {GROUP_ALIGN}) divides every linear's input at tp={tp}: "
                            f"{rank_in_sizes(spec, tp)}")
        return valid[-1]
    if spec.src_dtype in QUANTIZED_SRC:
        if group_size and group_size != spec.quant_group_size:
            raise UserError(f"the checkpoint is quantized with group size {spec.quant_group_size}; "
                            f"--group-size {group_size} cannot change it (drop --group-size)")
        return spec.quant_group_size
    if target_name in QUANTIZED_SRC:
        if group_size:
            return group_size
        # 128 where it divides every rank's input sizes; else the largest power of two below it
        # that does (SmolLM2's hidden 576 = 9 x 64 takes 64; the AMX int8 kernel wants G % 64 == 0).
        valid = [g for g in valid_group_sizes(list(rank_in_sizes(spec, tp).values()), limit=DEFAULT_GROUP_SIZE)
                 if g & (g - 1) == 0]
        if valid and valid[-1] != DEFAULT_GROUP_SIZE:
            print(f"turbolm convert: group size {valid[-1]} (the default {DEFAULT_GROUP_SIZE} does not divide "
                  f"{rank_in_sizes(spec, tp)})", file=sys.stderr)
        return valid[-1] if valid else DEFAULT_GROUP_SIZE
    return group_size


def _check_dst(dst: str, force: bool) -> None:
    if os.path.isfile(dst):
        raise UserError(f"--dst_path {dst} is a file; pass a directory")
    if os.path.isdir(dst) and os.listdir(dst) and not force:
        raise UserError(f"--dst_path {dst} is not empty; pass --force to overwrite it or choose another path")


def _template_dir() -> Optional[str]:
    for cand in WORKSPACE_TEMPLATE_CANDIDATES:
        if os.path.isdir(cand):
            return cand
    return None


def _copy_template(root: str) -> None:
    tdir = _template_dir()
    if tdir is None:
        print("turbolm convert: warning: workspace_template/ not found; README and serve.sh not copied",
              file=sys.stderr)
        return
    for src_name, dst_name in TEMPLATE_FILES.items():
        src = os.path.join(tdir, src_name)
        if os.path.isfile(src):
            shutil.copy(src, os.path.join(root, dst_name))
    serve = os.path.join(root, "serve.sh")
    if os.path.isfile(serve):
        os.chmod(serve, os.stat(serve).st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def _write_workspace(root: str, source: Source, model_name: str, target_name: str, tp: int, group_size: int,
                     session_len: Optional[int], act_type: str = "float", int8_linears=(),
                     embedding_bits: int = 0) -> None:
    from tqdm import tqdm

    s = source.spec
    weights = os.path.join(root, "triton_models", "weights")
    os.makedirs(weights)
    target = TARGETS[target_name](weights, s, tp, group_size)
    if int8_linears:
        target.int8_linears = set(int8_linears)
    emb = source.tok_embeddings()
    head = source.output() if s.head_bits or not s.tied else emb  # a quantized head: a QuantLinear
    target.embedding_bits = embedding_bits
    target.embedding_group = head.group_size if isinstance(head, QuantLinear) else lm_head_group_size(s.hidden)
    target.export_misc(emb, source.norm(), head)
    for i in tqdm(range(s.num_layer), desc=f"convert {model_name} -> {target_name} tp={tp}", unit="layer",
                  file=sys.stderr, leave=False):
        target.export_layer(i, source.layer(i))
    cfg = dict(model_name=model_name, tensor_para_size=tp, head_num=s.head_num, kv_head_num=s.kv_head_num,
               vocab_size=s.vocab, num_layer=s.num_layer, inter_size=s.inter, norm_eps=s.norm_eps,
               attn_bias=int(s.qkv_bias or s.o_bias), start_id=s.bos_id, end_id=s.eos_id,
               session_len=session_len or s.max_position_embeddings, rotary_embedding=s.rotary_dim or s.head_dim,
               rope_theta=s.rope_theta, size_per_head=s.head_dim, max_position_embeddings=s.max_position_embeddings,
               rope_scaling_factor=s.rope_scaling_factor, use_logn_attn=0, hidden_units=s.hidden,
               rope_type=s.rope_type, rope_low_freq_factor=s.rope_low_freq_factor,
               rope_high_freq_factor=s.rope_high_freq_factor,
               rope_original_max_position_embeddings=s.rope_original_max_position_embeddings,
               qk_norm=int(s.qk_norm), act_type=act_type, **s.arch_config())
    cfg.update(target.config_keys())
    write_config_ini(os.path.join(weights, "config.ini"), cfg)
    source.write_tokenizer(os.path.join(root, "triton_models", "tokenizer"))
    _copy_template(root)


def _embedding_bits(embedding_type: str, hidden: int) -> int:
    """--embedding_type -> bits (0: float), refused before anything is written when it cannot be."""
    if embedding_type in (None, "float"):
        return 0
    if embedding_type not in EMBEDDING_BITS:
        raise UserError(f"--embedding_type {embedding_type} is not one of float, {', '.join(EMBEDDING_BITS)}")
    if not lm_head_group_size(hidden):
        raise UserError(f"--embedding_type {embedding_type}: no group size (a multiple of 16) divides hidden {hidden}; "
                        f"keep --embedding_type float")
    return EMBEDDING_BITS[embedding_type]


def _int_arg(name: str, value, minimum: int) -> int:
    try:
        v = int(value)
        if v != value and str(v) != str(value).strip():
            raise ValueError
    except (TypeError, ValueError):
        raise UserError(f"--{name} {value!r} is not an integer") from None
    if v < minimum:
        raise UserError(f"--{name} must be >= {minimum}, got {v}")
    return v


def main(model_name: str, model_path: str, model_format: Optional[str] = None, tokenizer_path: Optional[str] = None,
         dst_path: str = "./workspace", tp: int = 1, group_size: int = 0, dtype: Optional[str] = None,
         weight_type: Optional[str] = None, force: bool = False, session_len: Optional[int] = None,
         act_type: Optional[str] = None, mixed: Optional[str] = None, embedding_type: Optional[str] = None) -> None:
    """Convert ``model_path`` into a workspace at ``dst_path`` (returns nothing, so `fire` prints nothing)."""
    t0 = time.time()
    model_name, model_path = str(model_name), str(model_path)
    if model_name not in known_model_names():
        raise UserError(f"unknown model name {model_name}; known: {', '.join(known_model_names())}")
    tp = _int_arg("tp", tp, 1)
    group_size = _int_arg("group-size", group_size, 0)
    if session_len is not None:
        session_len = _int_arg("session_len", session_len, 1)
    fmt = model_format or _guess_format(model_path)
    if fmt not in SOURCES:
        raise UserError(f"--model-format {fmt} is not available; available: {', '.join(SOURCES)}")
    dst = os.path.abspath(os.path.expanduser(str(dst_path)))
    _check_dst(dst, force)

    source = SOURCES[fmt](model_path, tokenizer_path)
    try:
        s = source.spec
        if s.kv_head_num % tp or s.head_num % tp or s.inter % tp:
            raise UserError(f"kv_head_num {s.kv_head_num} (head_num {s.head_num}, inter_size {s.inter}) is not "
                            f"divisible by --tp {tp}; choose a tp that divides kv_head_num")
        target_name = _pick_target(s.src_dtype, dtype, weight_type)
        act_type = _pick_act_type(target_name, act_type or (s.act_type if s.act_type != "float" else None))
        group_size = _pick_group_size(s, target_name, group_size, tp)
        TARGETS[target_name].validate(s, tp, group_size)
        int8_linears = mixed_recipe(mixed, s.num_layer) if mixed else list(s.int8_linears)
        if s.head_bits:  # the checkpoint's lm head is quantized: the workspace keeps its integers
            want = f"int{s.head_bits}"
            if embedding_type not in (None, want):
                raise UserError(f"{model_path}: its lm head is quantized to {want} (quantization_config.lm_head); it "
                                f"converts with --embedding_type {want} only")
            embedding_type = want
        embedding_bits = _embedding_bits(embedding_type, s.hidden)
        if mixed and (target_name != "int4" or s.src_dtype in QUANTIZED_SRC):
            raise UserError(f"--mixed keeps some linears at int8 in an int4 workspace quantized here: it needs "
                            f"--weight-type int4 and an fp16/bf16/fp32 source (this is {s.src_dtype} -> {target_name})")

        parent = os.path.dirname(dst)
        created = []
        p = parent
        while not os.path.isdir(p):
            created.append(p)
            p = os.path.dirname(p)
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(dst)}.tmp-")
        ok = False
        try:
            _write_workspace(tmp, source, model_name, target_name, tp, group_size, session_len, act_type,
                             int8_linears, embedding_bits)
            os.chmod(tmp, 0o755)
            if os.path.isdir(dst):  # empty, or --force: swap it out only now that the new one is complete
                old = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(dst)}.old-")
                os.rename(dst, os.path.join(old, "ws"))
                os.rename(tmp, dst)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(tmp, dst)
            ok = True
        finally:
            if not ok:
                shutil.rmtree(tmp, ignore_errors=True)
                for d in created:  # parents we made for dst, innermost first
                    try:
                        os.rmdir(d)
                    except OSError:
                        break
    finally:
        source.close()
    print(f"turbolm convert: wrote {dst} ({target_name}, tp={tp}, {s.num_layer} layers) in {time.time() - t0:.1f}s",
          file=sys.stderr)
