"""`turbolm lite kv_qparams`: int8 KV-cache parameters from ``key_stats.pth`` / ``value_stats.pth``.

For every layer ``i`` and tensor-parallel rank ``r`` (rank r holds kv heads
``[r * KV/tp, (r + 1) * KV/tp)``) this writes ``layers.{i}.past_kv_scale.{r}.weight`` into the
workspace weights folder: 4 float32 ``[k_scale, k_zp, v_scale, v_zp]``, raw (``numpy.tofile``).
One scalar per layer for k and one for v, over the rank's heads (as LMDeploy v0.1.0):

- asymmetric: ``scale = (max - min) / 255``, ``zp = (max + min) / 2``;
- symmetric (``--kv_sym``): ``scale = absmax / 127``, ``zp = 0``.

The runtime stores ``q = clamp(round((f - zp) / scale), -128, 127)`` and reads ``q * scale + zp``
(DESIGN.md §3). Everything is checked against the workspace's config.ini before a file is written;
then config.ini gets ``quant_policy = 4`` (int8 KV), unless ``--set_quant_policy False``.
"""
from __future__ import annotations

import os
from typing import Dict, List, Tuple

import numpy as np
import torch

from turbolm.config import ConfigError, read_config_ini, workspace_weights_dir, write_config_ini
from turbolm.errors import UserError

from .calibrate import KV_STATS, STAT_FILES

_MIN_SCALE = 1e-8  # a constant channel would give scale 0 (division by zero in the runtime)


def parse_bool(value, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, np.integer)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.strip().lower() in ("true", "1", "yes")
    raise UserError(f"--{name} must be True or False, got {value!r}")


def load_kv_stats(work_dir: str) -> Tuple[dict, dict]:
    paths = [os.path.join(work_dir, STAT_FILES[k]) for k in ("key", "value")]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise UserError(f"{', '.join(missing)} not found; run `turbolm lite calibrate --work_dir {work_dir}` first")
    out = []
    for p in paths:
        try:
            stats = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as e:
            raise UserError(f"{p}: not a statistics file of `turbolm lite calibrate` ({type(e).__name__})") from None
        if not isinstance(stats, dict) or any(not isinstance(stats.get(s), dict) for s in KV_STATS):
            raise UserError(f"{p}: not a statistics file of `turbolm lite calibrate` (needs {', '.join(KV_STATS)})")
        out.append(stats)
    return out[0], out[1]


def check_stats(stats: dict, name: str, num_layer: int, kv_heads: int, head_dim: int, ini: str) -> None:
    for s in KV_STATS:
        layers = sorted(stats[s])
        if layers != list(range(num_layer)):
            raise UserError(f"{name} stats cover {len(layers)} layers but {ini} has num_layer = {num_layer}; "
                            "the stats are from another model: re-run `turbolm lite calibrate` on this one")
        for i in layers:
            shape = tuple(stats[s][i].shape)
            if shape != (kv_heads, head_dim):
                raise UserError(f"{name} stats of layer {i} are [{', '.join(map(str, shape))}] but {ini} has "
                                f"kv_head_num = {kv_heads}, size_per_head = {head_dim}; the stats are from another "
                                "model: re-run `turbolm lite calibrate` on this one")


def layer_qparams(key: Dict[str, torch.Tensor], value: Dict[str, torch.Tensor], num_tp: int,
                  symmetric: bool) -> List[np.ndarray]:
    """Per rank, 4 float32 ``[k_scale, k_zp, v_scale, v_zp]`` from one layer's [kv_heads, head_dim] stats."""
    kv_heads = key["max"].shape[0]
    per_rank = kv_heads // num_tp
    out = []
    for r in range(num_tp):
        heads = slice(r * per_rank, (r + 1) * per_rank)
        params = []
        for st in (key, value):
            if symmetric:
                scale, zp = st["absmax"][heads].max().item() / 127.0, 0.0
            else:
                mx, mn = st["max"][heads].max().item(), st["min"][heads].min().item()
                scale, zp = (mx - mn) / 255.0, (mx + mn) / 2.0
            params += [max(scale, _MIN_SCALE), zp]
        out.append(np.array(params, dtype=np.float32))
    return out


INT8_KV_POLICY = 4


def set_quant_policy(ini: str, policy: int) -> int:
    """Rewrite ``quant_policy`` in config.ini through the one schema; returns the old value."""
    cfg = read_config_ini(ini)
    old = cfg["quant_policy"]
    if old != policy:
        cfg["quant_policy"] = policy
        write_config_ini(ini, cfg)
    return old


def main(work_dir: str, turbomind_dir: str, kv_sym=False, num_tp: int = 1, set_policy=True) -> None:
    """Write ``layers.{i}.past_kv_scale.{r}.weight`` for every layer and rank (see module docstring),
    then switch the workspace to int8 KV (``quant_policy = 4``) unless ``set_policy`` is false."""
    symmetric = parse_bool(kv_sym, "kv_sym")
    set_policy = parse_bool(set_policy, "set_quant_policy")
    try:
        num_tp = int(num_tp)
    except (TypeError, ValueError):
        raise UserError(f"--num_tp must be a positive integer, got {num_tp!r}") from None
    if num_tp <= 0:
        raise UserError(f"--num_tp must be a positive integer, got {num_tp}")
    weights_dir = workspace_weights_dir(str(turbomind_dir))
    if weights_dir is None:
        raise UserError(f"{turbomind_dir}: no config.ini; pass the workspace's triton_models/weights folder "
                        "(made by `turbolm convert`)")
    ini = os.path.join(weights_dir, "config.ini")
    try:
        cfg = read_config_ini(ini)
    except ConfigError as e:
        raise UserError(str(e)) from None
    num_layer, kv_heads, head_dim = cfg["num_layer"], cfg["kv_head_num"], cfg["size_per_head"]
    if kv_heads % num_tp:
        raise UserError(f"--num_tp {num_tp} does not divide kv_head_num {kv_heads} of {ini}; "
                        f"kv heads are split evenly over ranks")
    key, value = load_kv_stats(str(work_dir))
    check_stats(key, "key", num_layer, kv_heads, head_dim, ini)
    check_stats(value, "value", num_layer, kv_heads, head_dim, ini)
    if num_tp != cfg["tensor_para_size"]:
        print(f"kv_qparams: warning: --num_tp {num_tp} differs from tensor_para_size "
              f"{cfg['tensor_para_size']} of {ini}")

    files = {}
    for i in range(num_layer):
        per_rank = layer_qparams({s: key[s][i] for s in KV_STATS}, {s: value[s][i] for s in KV_STATS},
                                 num_tp, symmetric)
        for r, params in enumerate(per_rank):
            files[os.path.join(weights_dir, f"layers.{i}.past_kv_scale.{r}.weight")] = params
    for path, params in files.items():
        params.tofile(path)
    print(f"kv_qparams: wrote {len(files)} past_kv_scale files ({'symmetric' if symmetric else 'asymmetric'}, "
          f"{num_tp} rank(s)) to {weights_dir}")
    if not set_policy:
        print(f"kv_qparams: left quant_policy = {cfg['quant_policy']} in {ini}; set quant_policy = "
              f"{INT8_KV_POLICY} there to use int8 KV")
        return
    old = set_quant_policy(ini, INT8_KV_POLICY)
    if old == INT8_KV_POLICY:
        print(f"kv_qparams: {ini} already has quant_policy = {INT8_KV_POLICY} (int8 KV cache)")
    else:
        print(f"kv_qparams: set quant_policy = {INT8_KV_POLICY} (was {old}) in {ini}: the workspace now keeps "
              "its KV cache in int8")
