"""The one schema of a workspace's ``config.ini`` (section ``[llama]``).

Python writes it (``turbolm convert``) and ``runtime/core/config.cc`` reads it; the test
``tests/python/test_config_schema.py`` keeps the two in agreement. Keys are the TurboMind ones of
LMDeploy v0.1.0 plus the few marked ``extra`` (documented in ``workspace_template/config.ini``).
"""
from __future__ import annotations

import configparser
import dataclasses
import os
from typing import Any, Dict, List, Optional

SECTION = "llama"
FORMAT_VERSION = 1  # bumped whenever the on-disk layout of any weight file changes


@dataclasses.dataclass(frozen=True)
class Key:
    name: str
    type: type
    default: Any  # None: required, convert must supply it
    doc: str
    extra: bool = False  # beyond the LMDeploy v0.1.0 key set


SCHEMA: List[Key] = [
    Key("model_name", str, None, "chat template name (turbolm.model registry)"),
    Key("tensor_para_size", int, 1, "number of tensor-parallel ranks the weights are split into"),
    Key("head_num", int, None, "query heads"),
    Key("kv_head_num", int, None, "key/value heads (GQA when < head_num)"),
    Key("vocab_size", int, None, "rows of tok_embeddings and output"),
    Key("num_layer", int, None, "decoder layers"),
    Key("inter_size", int, None, "FFN intermediate size (whole, not per rank)"),
    Key("norm_eps", float, 1e-6, "RMSNorm epsilon"),
    Key("attn_bias", int, 0, "1: w_qkv (and wo when present) carry a bias"),
    Key("start_id", int, 1, "BOS token id"),
    Key("end_id", int, 2, "EOS token id"),
    Key("session_len", int, 2048, "max tokens of one session (prompt + history + output)"),
    Key("weight_type", str, "fp16", "fp16 | bf16 | int4 | int8"),
    Key("rotary_embedding", int, None, "rotary dimension (== size_per_head for LLaMA)"),
    Key("rope_theta", float, 10000.0, "RoPE base"),
    Key("size_per_head", int, None, "head dimension"),
    Key("group_size", int, 0, "quantization group size along the input dim (int4/int8)"),
    Key("max_batch_size", int, 64, "max sequences in one step of the persistent batch"),
    Key("max_context_token_num", int, 1, "token budget of one step (prefill chunks + decodes); "
        "values below cache_block_seq_len mean 'runtime default'"),
    Key("step_length", int, 1, "reference key, unused on CPU"),
    Key("cache_max_entry_count", float, 0.5, "KV pool: < 1 a fraction of available memory, >= 1 a block count"),
    Key("cache_block_seq_len", int, 128, "tokens per KV block"),
    Key("cache_chunk_size", int, 1, "reference key, unused on CPU (pool allocated at once)"),
    Key("use_context_fmha", int, 1, "reference key, unused on CPU"),
    Key("quant_policy", int, 0, "0: fp16 KV, 4: int8 KV (needs past_kv_scale files)"),
    Key("max_position_embeddings", int, 2048, "trained context length (dynamic NTK / logN threshold)"),
    Key("rope_scaling_factor", float, 0.0, "RoPE scaling factor (rope_type); > 0 with no rope_type: dynamic NTK"),
    Key("use_logn_attn", int, 0, "1: scale q by log(pos)/log(max_position_embeddings) past the trained length"),
    Key("hidden_units", int, 0, "model width; 0 means head_num * size_per_head", extra=True),
    Key("format_version", int, FORMAT_VERSION, "turbolm weight-layout version (guards int4 packing)", extra=True),
    Key("enable_prefix_caching", int, 1, "1: full KV blocks are reused across requests whose tokens start alike "
        "(automatic prefix caching); 0: only a session's own blocks", extra=True),
    Key("rope_type", str, "", "RoPE scaling: '' / default, dynamic (NTK past max_position_embeddings; an empty "
        "rope_type with rope_scaling_factor > 0 is dynamic too), linear, llama3, yarn, longrope (the last two "
        "through rope_freq_factors)", extra=True),
    Key("rope_low_freq_factor", float, 1.0, "llama3 RoPE: low_freq_factor", extra=True),
    Key("rope_high_freq_factor", float, 4.0, "llama3 RoPE: high_freq_factor", extra=True),
    Key("rope_original_max_position_embeddings", int, 8192, "llama3 RoPE: the pre-training context", extra=True),
    Key("qk_norm", int, 0, "1: RMSNorm of each q and k head before RoPE (Qwen3; layers.i.attention.q_norm/k_norm)",
        extra=True),
    Key("act_type", str, "float", "float (fp32 activations) | int8 (int4/int8 workspaces: activations quantized "
        "per token in blocks of 32, int8 dot products) | bf16 (fp16/bf16 workspaces: bf16 dot products)", extra=True),
    # Architecture switches beyond LLaMA (Gemma 2/3, Mistral): plain keys, no per-model code paths.
    Key("hidden_act", str, "silu", "FFN activation: silu (SwiGLU) | gelu_tanh (GeGLU, Gemma)", extra=True),
    Key("norm_offset", float, 0.0, "every RMSNorm multiplies by (norm_offset + w); Gemma stores w and uses 1 + w",
        extra=True),
    Key("embedding_scale", float, 1.0, "embedding rows are multiplied by this (Gemma: sqrt(hidden))", extra=True),
    Key("post_norm", int, 0, "1: RMSNorm of the attention and FFN outputs before the residual add "
        "(layers.i.post_attention_norm / post_ffn_norm; Gemma 2/3)", extra=True),
    Key("attn_scale", float, 0.0, "attention score scale; 0: 1/sqrt(size_per_head) (Gemma: query_pre_attn_scalar^-0.5)",
        extra=True),
    Key("attn_softcap", float, 0.0, "> 0: scores = cap * tanh(scores / cap) (Gemma 2)", extra=True),
    Key("final_softcap", float, 0.0, "> 0: logits = cap * tanh(logits / cap) (Gemma 2)", extra=True),
    Key("sliding_window", int, 0, "> 0: sliding layers attend to the last sliding_window positions only", extra=True),
    Key("sliding_layers", str, "", "one 0/1 per layer, 1 = sliding ('' = every layer when sliding_window > 0)",
        extra=True),
    Key("rope_local_theta", float, 0.0, "> 0: sliding layers use this RoPE base, unscaled (Gemma 3)", extra=True),
    Key("rope_freq_factors", str, "", "comma-separated divisor per rotary pair of the RoPE frequencies "
        "(yarn, longrope's short factors, GGUF rope_freqs); '' = none", extra=True),
    Key("rope_long_freq_factors", str, "", "longrope: the divisors once a sequence passes "
        "rope_original_max_position_embeddings", extra=True),
    Key("rope_attention_factor", float, 1.0, "cos/sin multiplied by this (yarn / longrope attention factor)",
        extra=True),
    Key("int8_linears", str, "", "mixed precision in an int4 workspace: the linears stored as int8, "
        "'LAYER.NAME' comma-separated (NAME: w_qkv, wo, w1, w3, w2); convert --mixed writes it", extra=True),
    Key("embedding_type", str, "float", "the embedding table and lm head: float (tok_embeddings.weight / "
        "output.weight in the workspace's float dtype) | int8 | int4 (.qweight / .scales / .zeros, per-row groups "
        "of embedding_group_size; format_version 3)", extra=True),
    Key("embedding_group_size", int, 0, "group size along hidden of a quantized embedding_type", extra=True),
    Key("tie_word_embeddings", int, 0, "with a quantized embedding_type: 1 = the lm head is tok_embeddings "
        "(no output.* files)", extra=True),
]
EMBEDDING_TYPES = ("float", "int8", "int4")
ROPE_TYPES = ("", "default", "dynamic", "linear", "llama3", "yarn", "longrope")
HIDDEN_ACTS = ("silu", "gelu_tanh")


def format_floats(values) -> str:
    """A list of floats as config.ini writes it (rope_freq_factors)."""
    return ",".join(repr(float(v)) for v in values)


def parse_floats(text: str, key: str = "", path: str = "config.ini") -> List[float]:
    try:
        return [float(v) for v in text.split(",")] if text.strip() else []
    except ValueError:
        raise ConfigError(f"{path}: key '{key}' = '{text}' is not a comma-separated list of floats") from None

KEYS: Dict[str, Key] = {k.name: k for k in SCHEMA}
WEIGHT_TYPES = ("fp16", "bf16", "int4", "int8")
ACT_TYPES = ("float", "int8", "bf16")


class ConfigError(ValueError):
    """A config.ini that cannot be used; the message names the file and key."""


def _parse(key: Key, raw: str, path: str):
    raw = raw.strip()
    try:
        if key.type is int:
            if raw.lower() in ("true", "false"):
                return int(raw.lower() == "true")
            f = float(raw)
            if not f.is_integer():
                raise ValueError(raw)
            return int(f)
        if key.type is float:
            return float(raw)
        return raw
    except ValueError:
        raise ConfigError(f"{path}: key '{key.name}' = '{raw}' is not a valid {key.type.__name__}") from None


def validate(cfg: Dict[str, Any], path: str = "config.ini") -> Dict[str, Any]:
    """Fill defaults, check types and the relations between keys; return a new dict."""
    out: Dict[str, Any] = {}
    for key in SCHEMA:
        if key.name in cfg and cfg[key.name] is not None:
            v = cfg[key.name]
            out[key.name] = _parse(key, str(v), path) if isinstance(v, str) and key.type is not str else key.type(v)
        elif key.default is None:
            raise ConfigError(f"{path}: missing required key '{key.name}' in [{SECTION}]; re-run `turbolm convert`")
        else:
            out[key.name] = key.default
    if out["weight_type"] not in WEIGHT_TYPES:
        raise ConfigError(f"{path}: weight_type '{out['weight_type']}' is not one of {', '.join(WEIGHT_TYPES)}")
    if out["act_type"] not in ACT_TYPES:
        raise ConfigError(f"{path}: act_type '{out['act_type']}' is not one of {', '.join(ACT_TYPES)}")
    if out["act_type"] == "int8" and out["weight_type"] not in ("int4", "int8"):
        raise ConfigError(f"{path}: act_type int8 needs weight_type int4 or int8, not {out['weight_type']}")
    if out["act_type"] == "bf16" and out["weight_type"] in ("int4", "int8"):
        raise ConfigError(f"{path}: act_type bf16 needs weight_type fp16 or bf16, not {out['weight_type']}")
    for name in ("head_num", "kv_head_num", "num_layer", "size_per_head", "vocab_size", "inter_size",
                 "tensor_para_size", "session_len", "cache_block_seq_len"):
        if out[name] <= 0:
            raise ConfigError(f"{path}: key '{name}' must be positive, got {out[name]}")
    if out["head_num"] % out["kv_head_num"]:
        raise ConfigError(f"{path}: head_num {out['head_num']} is not a multiple of kv_head_num {out['kv_head_num']}")
    if out["kv_head_num"] % out["tensor_para_size"]:
        raise ConfigError(f"{path}: kv_head_num {out['kv_head_num']} is not divisible by tensor_para_size "
                          f"{out['tensor_para_size']}")
    if out["rope_type"] not in ROPE_TYPES:
        raise ConfigError(f"{path}: rope_type '{out['rope_type']}' is not one of {', '.join(t for t in ROPE_TYPES if t)}")
    if out["hidden_act"] not in HIDDEN_ACTS:
        raise ConfigError(f"{path}: hidden_act '{out['hidden_act']}' is not one of {', '.join(HIDDEN_ACTS)}")
    layers = out["sliding_layers"]
    if layers and (set(layers) - {"0", "1"} or len(layers) != out["num_layer"]):
        raise ConfigError(f"{path}: sliding_layers '{layers}' must be one 0 or 1 per layer ({out['num_layer']})")
    for name in ("rope_freq_factors", "rope_long_freq_factors"):
        n = len(parse_floats(out[name], name, path))
        if n and n != out["rotary_embedding"] // 2:
            raise ConfigError(f"{path}: {name} has {n} entries; rotary_embedding {out['rotary_embedding']} needs "
                              f"{out['rotary_embedding'] // 2}")
    if out["rope_type"] == "longrope" and not (out["rope_freq_factors"] and out["rope_long_freq_factors"]):
        raise ConfigError(f"{path}: rope_type longrope needs rope_freq_factors (short) and rope_long_freq_factors")
    if out["rope_type"] == "yarn" and not out["rope_freq_factors"]:
        raise ConfigError(f"{path}: rope_type yarn needs rope_freq_factors (written by `turbolm convert` from "
                          f"rope_scaling)")
    if out["int8_linears"]:
        if out["weight_type"] != "int4":
            raise ConfigError(f"{path}: int8_linears needs weight_type int4 (the other linears), not "
                              f"{out['weight_type']}")
        for item in out["int8_linears"].split(","):
            layer, _, name = item.strip().partition(".")
            if not layer.isdigit() or int(layer) >= out["num_layer"] or name not in ("w_qkv", "wo", "w1", "w3", "w2"):
                raise ConfigError(f"{path}: int8_linears entry '{item}' is not LAYER.NAME with LAYER < num_layer and "
                                  f"NAME one of w_qkv, wo, w1, w3, w2")
    if out["hidden_units"] == 0:
        out["hidden_units"] = out["head_num"] * out["size_per_head"]
    if out["embedding_type"] not in EMBEDDING_TYPES:
        raise ConfigError(f"{path}: embedding_type '{out['embedding_type']}' is not one of {', '.join(EMBEDDING_TYPES)}")
    G = out["embedding_group_size"]
    if out["embedding_type"] != "float" and (G <= 0 or G % 16 or out["hidden_units"] % G):
        raise ConfigError(f"{path}: embedding_group_size {G} must be a positive multiple of 16 dividing hidden_units "
                          f"{out['hidden_units']} for embedding_type {out['embedding_type']}")
    return out


def write_config_ini(path: str, cfg: Dict[str, Any]) -> None:
    """Write ``cfg`` (validated) as ``[llama]`` in schema order."""
    cfg = validate(cfg, path)
    lines = [f"[{SECTION}]"]
    for key in SCHEMA:
        v = cfg[key.name]
        lines.append(f"{key.name} = {v!r}" if key.type is float else f"{key.name} = {v}")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def read_config_ini(path: str) -> Dict[str, Any]:
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: not found; is this a workspace made by `turbolm convert`?")
    parser = configparser.ConfigParser(inline_comment_prefixes=(";", "#"))
    try:
        parser.read(path)
    except configparser.Error as e:
        raise ConfigError(f"{path}: malformed ini: {e}".replace("\n", " ")) from None
    if not parser.has_section(SECTION):
        raise ConfigError(f"{path}: no [{SECTION}] section")
    return validate(dict(parser[SECTION]), path)


def workspace_weights_dir(path: str) -> Optional[str]:
    """The weights folder of a workspace given its root or the folder itself; None if neither."""
    for cand in (os.path.join(path, "triton_models", "weights"), path):
        if os.path.isfile(os.path.join(cand, "config.ini")):
            return cand
    return None
