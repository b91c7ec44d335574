"""RoPE scaling of a checkpoint (HF's ``rope_scaling`` / ``rope_parameters`` dict, or GGUF metadata
put in the same shape) -> the ModelSpec fields the runtime reads (config.ini rope_* keys).

One handler per rope type (a registry, as HF's ROPE_INIT_FUNCTIONS): linear, dynamic and llama3
are computed by the runtime from their factors; yarn and longrope become per-frequency divisors
(``rope_freq_factors``) plus an attention factor, computed here once in the same arithmetic as
transformers' ``modeling_rope_utils``.
"""
from __future__ import annotations

import math
from typing import Callable, Dict

from turbolm.errors import UserError

from .spec import ModelSpec

Handler = Callable[[ModelSpec, dict, int], None]  # (spec, scaling dict, rotary dims) -> fills spec
ROPE_SCALINGS: Dict[str, Handler] = {}


def register(*names: str):
    def deco(fn: Handler) -> Handler:
        for n in names:
            ROPE_SCALINGS[n] = fn
        return fn
    return deco


def _need(scaling: dict, key: str):
    if scaling.get(key) is None:
        raise UserError(f"rope scaling {scaling.get('rope_type') or scaling.get('type')} needs '{key}'")
    return scaling[key]


@register("default")
def _default(spec: ModelSpec, scaling: dict, rot: int) -> None:
    pass


@register("linear", "dynamic")
def _factor_only(spec: ModelSpec, scaling: dict, rot: int) -> None:
    spec.rope_type = scaling.get("rope_type") or scaling.get("type")
    spec.rope_scaling_factor = float(_need(scaling, "factor"))


@register("llama3")
def _llama3(spec: ModelSpec, scaling: dict, rot: int) -> None:
    _factor_only(spec, scaling, rot)
    spec.rope_low_freq_factor = float(_need(scaling, "low_freq_factor"))
    spec.rope_high_freq_factor = float(_need(scaling, "high_freq_factor"))
    spec.rope_original_max_position_embeddings = int(_need(scaling, "original_max_position_embeddings"))


def _original_max(spec: ModelSpec, scaling: dict) -> int:
    return int(scaling.get("original_max_position_embeddings") or spec.max_position_embeddings)


@register("yarn")
def _yarn(spec: ModelSpec, scaling: dict, rot: int) -> None:
    """YaRN: frequencies blended between interpolated (/ factor) and extrapolated by a linear ramp
    over the dims whose wavelength falls between beta_fast and beta_slow rotations of the original
    context; cos/sin scaled by 0.1 ln(factor) + 1 (or the checkpoint's attention_factor)."""
    orig = _original_max(spec, scaling)
    factor = scaling.get("factor") or spec.max_position_embeddings / orig
    factor = float(factor)

    def mscale(scale, m=1.0):
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    att = scaling.get("attention_factor")
    if att is None:
        m, m_all = scaling.get("mscale"), scaling.get("mscale_all_dim")
        att = mscale(factor, m) / mscale(factor, m_all) if m and m_all else mscale(factor)
    beta_fast, beta_slow = float(scaling.get("beta_fast") or 32), float(scaling.get("beta_slow") or 1)
    base = spec.rope_theta

    def corr_dim(rotations):
        return rot * math.log(orig / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = corr_dim(beta_fast), corr_dim(beta_slow)
    if scaling.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, rot - 1)
    if low == high:
        high += 0.001
    divisors = []
    for i in range(rot // 2):
        ramp = min(max((i - low) / (high - low), 0.0), 1.0)
        extrap = 1.0 - ramp  # the weight of the unscaled frequency
        divisors.append(1.0 / ((1.0 - extrap) / factor + extrap))
    spec.rope_type, spec.rope_scaling_factor = "yarn", factor
    spec.rope_original_max_position_embeddings = orig
    spec.rope_freq_factors, spec.rope_attention_factor = tuple(divisors), float(att)


@register("longrope")
def _longrope(spec: ModelSpec, scaling: dict, rot: int) -> None:
    """LongRoPE (Phi-3 128k): per-frequency divisors, short below the original context and long past
    it; cos/sin scaled by sqrt(1 + ln(factor) / ln(original context))."""
    orig = _original_max(spec, scaling)
    short, long_ = list(_need(scaling, "short_factor")), list(_need(scaling, "long_factor"))
    if len(short) != rot // 2 or len(long_) != rot // 2:
        raise UserError(f"longrope factors have {len(short)} / {len(long_)} entries; {rot} rotary dims need {rot // 2}")
    factor = float(scaling.get("factor") or spec.max_position_embeddings / orig)
    att = scaling.get("attention_factor")
    if att is None:
        att = 1.0 if factor <= 1 else math.sqrt(1 + math.log(factor) / math.log(orig))
    spec.rope_type, spec.rope_scaling_factor = "longrope", factor
    spec.rope_original_max_position_embeddings = orig
    spec.rope_freq_factors, spec.rope_long_freq_factors = tuple(map(float, short)), tuple(map(float, long_))
    spec.rope_attention_factor = float(att)


def apply_rope_scaling(spec: ModelSpec, scaling: dict, rot: int, where: str) -> None:
    """Fill ``spec`` from a rope scaling dict (empty or rope_type default: plain RoPE)."""
    rope_type = (scaling or {}).get("rope_type") or (scaling or {}).get("type") or "default"
    if rope_type not in ROPE_SCALINGS:
        raise UserError(f"{where}: rope scaling type {rope_type} is not supported (supported: "
                        f"{', '.join(sorted(ROPE_SCALINGS))})")
    try:
        ROPE_SCALINGS[rope_type](spec, scaling or {}, rot)
    except UserError as e:
        raise UserError(f"{where}: {e}") from None
    except (TypeError, ValueError) as e:
        raise UserError(f"{where}: bad rope scaling {scaling} ({e})") from None
