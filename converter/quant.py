"""Quantized linears in the converter's canonical form, and round-to-nearest (RTN) quantization.

A ``QuantLinear`` is the quantized twin of a canonical ``[out, in]`` float32 weight (spec.py):

- ``q``      uint8   ``[out, in]``      integers in ``[0, 2^bits)``;
- ``scales`` float32 ``[out, in / G]``  (values exactly representable in fp16: they are stored so);
- ``zeros``  float32 ``[out, in / G]``  zero points in q units;

and ``W[o, i] = (q[o, i] - zeros[o, i // G]) * scales[o, i // G]``. Every array leads with ``out``,
so the target's row operations (the q/k RoPE permutation, the per-rank q|k|v selection, column
splits of the ``[in, out]`` file) apply to all three alike; splitting ``in`` (wo / w2 rows over
ranks) cuts whole groups only.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, List

import numpy as np

from turbolm.errors import UserError

GROUP_ALIGN = 16          # the runtime's kernels need group sizes that are multiples of this (kQGroupAlign)
PER_CHANNEL = -1          # spec.quant_group_size of a per-channel source: the converter picks the group size
BITS = {"int4": 4, "int8": 8}


@dataclasses.dataclass
class QuantLinear:
    q: np.ndarray
    scales: np.ndarray
    zeros: np.ndarray
    bits: int
    group_size: int

    @property
    def shape(self):
        return self.q.shape

    def map_rows(self, fn: Callable[[np.ndarray], np.ndarray]) -> "QuantLinear":
        """Apply a row operation (permute / select along ``out``) to q, scales and zeros alike."""
        return QuantLinear(fn(self.q), fn(self.scales), fn(self.zeros), self.bits, self.group_size)

    def in_slice(self, begin: int, end: int) -> "QuantLinear":
        """Columns ``[begin, end)`` of the input dim; both must be multiples of the group size."""
        G = self.group_size
        if begin % G or end % G:
            raise UserError(f"input rows [{begin}, {end}) cut a quantization group of {G}")
        return QuantLinear(self.q[:, begin:end], self.scales[:, begin // G:end // G], self.zeros[:, begin // G:end // G],
                           self.bits, G)

    def regroup(self, group_size: int) -> "QuantLinear":
        """The same weights with groups of ``group_size`` (dividing the current one): scales and
        zeros repeated, exact."""
        if self.group_size % group_size or group_size % GROUP_ALIGN:
            raise UserError(f"group size {self.group_size} cannot be split into groups of {group_size}")
        r = self.group_size // group_size
        return QuantLinear(self.q, np.repeat(self.scales, r, axis=1), np.repeat(self.zeros, r, axis=1), self.bits,
                           group_size)

    def dequantize(self) -> np.ndarray:
        G = self.group_size
        s = np.repeat(self.scales, G, axis=1)
        z = np.repeat(self.zeros, G, axis=1)
        return (self.q.astype(np.float32) - z) * s


def concat_rows(parts: List[QuantLinear]) -> QuantLinear:
    p0 = parts[0]
    return QuantLinear(np.concatenate([p.q for p in parts]), np.concatenate([p.scales for p in parts]),
                       np.concatenate([p.zeros for p in parts]), p0.bits, p0.group_size)


def quantize_rtn(w: np.ndarray, bits: int, group_size: int) -> QuantLinear:
    """Asymmetric per-group round-to-nearest of ``w [out, in]`` (AWQ's ``pseudo_quantize_tensor``
    with zero point): per group ``scale = (max - min) / (2^b - 1)`` (rounded to fp16, as stored),
    ``zero = round(-min / scale)``, ``q = clamp(round(w / scale) + zero, 0, 2^b - 1)``."""
    out, n_in = w.shape
    G = group_size
    if n_in % G:
        raise UserError(f"group size {G} does not divide the input size {n_in}")
    qmax = (1 << bits) - 1
    g = np.asarray(w, dtype=np.float32).reshape(out, n_in // G, G)
    mx, mn = g.max(axis=2), g.min(axis=2)
    scales = np.maximum(mx - mn, 1e-5) / qmax
    scales = scales.astype(np.float16).astype(np.float32)
    scales = np.where(scales > 0, scales, np.float32(2.0 ** -24))  # fp16 underflow would divide by zero
    zeros = np.clip(np.rint(-mn / scales), 0, qmax).astype(np.float32)
    q = np.clip(np.rint(g / scales[:, :, None]) + zeros[:, :, None], 0, qmax).astype(np.uint8)
    return QuantLinear(q.reshape(out, n_in), scales, zeros, bits, G)


LM_HEAD_BITS = 8  # runtime/model/weights.h kLMHeadBits


def lm_head_group_size(hidden: int) -> int:
    """The group size the runtime quantizes the lm head with (weights.h lm_head_group_size): 64 if
    it divides ``hidden``, else 32, else the smallest multiple of GROUP_ALIGN that does; 0 if none."""
    for g in (64, 32):
        if hidden % g == 0:
            return g
    return next((g for g in range(GROUP_ALIGN, hidden + 1, GROUP_ALIGN) if hidden % g == 0), 0)


def quantize_lm_head(w: np.ndarray) -> np.ndarray:
    """The lm head the runtime computes with on an int4/int8 workspace, dequantized: the runtime keeps
    ``output.weight [vocab, hidden]`` (fp16 on disk) in int8 for quantized workspaces, quantized at load
    time by quantize_rtn(w, LM_HEAD_BITS, lm_head_group_size(hidden)) with the same arithmetic, so the
    result equals the runtime's weights exactly. ``w`` is the fp16 lm head (any float dtype holding
    fp16 values); returned as float32 ``[vocab, hidden]``, unchanged when no group size fits."""
    w = np.asarray(w, dtype=np.float32)
    G = lm_head_group_size(w.shape[1])
    return quantize_rtn(w, LM_HEAD_BITS, G).dequantize() if G else w


EMBEDDING_BITS = {"int8": 8, "int4": 4}  # convert --embedding_type -> bits (config.ini embedding_type)


def valid_group_sizes(in_sizes: List[int], limit: int = 1024) -> List[int]:
    """Group sizes the runtime accepts (multiples of GROUP_ALIGN) that divide every size in ``in_sizes``."""
    return [g for g in range(GROUP_ALIGN, limit + 1, GROUP_ALIGN) if all(n % g == 0 for n in in_sizes)]


def rank_in_sizes(spec, tp: int) -> dict:
    """The input size of every quantized linear on one rank: groups must not straddle a rank's slice."""
    return {"hidden (w_qkv, w1, w3)": spec.hidden, "head_num*head_dim/tp (wo)": spec.head_num * spec.head_dim // tp,
            "inter_size/tp (w2)": spec.inter // tp}


def check_group_size(spec, tp: int, group_size: int) -> None:
    sizes = rank_in_sizes(spec, tp)
    bad = {k: v for k, v in sizes.items() if group_size <= 0 or v % group_size}
    if group_size <= 0 or group_size % GROUP_ALIGN or bad:
        ok = valid_group_sizes(list(sizes.values()))
        what = ", ".join(f"{k} = {v}" for k, v in (bad or sizes).items())
        raise UserError(f"--group-size {group_size} does not fit at --tp {tp} ({what}); the group size must be a "
                        f"multiple of {GROUP_ALIGN} dividing every rank's input size; sizes that work: "
                        f"{', '.join(map(str, ok)) or 'none (try another --tp)'}")


def pack_int4_columns(q_in_out: np.ndarray) -> np.ndarray:
    """``q [in, out]`` (values < 16) -> uint8 ``[in, ceil(out / 2)]``: column 2j in the low nibble of
    byte j, column 2j + 1 in its high nibble (a zero nibble pads an odd ``out``)."""
    q = np.asarray(q_in_out, dtype=np.uint8)
    if q.shape[1] % 2:
        q = np.concatenate([q, np.zeros((q.shape[0], 1), np.uint8)], axis=1)
    return np.ascontiguousarray(q[:, 0::2] | (q[:, 1::2] << 4))


def unpack_int4_columns(packed: np.ndarray, out: int) -> np.ndarray:
    p = np.asarray(packed, dtype=np.uint8)
    q = np.empty((p.shape[0], p.shape[1] * 2), np.uint8)
    q[:, 0::2], q[:, 1::2] = p & 0xF, p >> 4
    return q[:, :out]


# Mixed precision: which linears of an int4 workspace stay int8 (config.ini int8_linears, names of
# the workspace's linears: w_qkv holds v, w2 is down). llama.cpp's Q4_K_M gives attn_v and ffn_down
# more bits in the layers its use_more_bits() picks: the first and last eighth, and every third
# layer between; here the whole w_qkv (q, k, v are one matrix) and w2 of those layers go to int8.
def _use_more_bits(i: int, n: int) -> bool:
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


# The workspace's linears (config.ini int8_linears and --mixed names) -> the canonical linears they
# hold (converter/spec.py keys; q, k, v are one matrix in the workspace), and the canonical linears
# -> their modules in an HF LLaMA-family decoder layer. The one table every mapping derives from.
WORKSPACE_LINEARS = {"w_qkv": ("q", "k", "v"), "wo": ("o",), "w1": ("gate",), "w3": ("up",), "w2": ("down",)}
WORKSPACE_HOME = {c: w for w, cs in WORKSPACE_LINEARS.items() for c in cs}  # "q" -> "w_qkv", ...
HF_LINEAR_MODULES = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.o_proj",
                     "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj"}

MIXED_RECIPES = {
    "q4_k_m": lambda n: [f"{i}.{w}" for i in range(n) if _use_more_bits(i, n) for w in ("w_qkv", "w2")],
    "edges": lambda n: [f"{i}.{w}" for i in sorted({0, n - 1}) for w in ("w_qkv", "w2")],
}


def mixed_recipe(recipe: str, num_layer: int) -> List[str]:
    """A recipe name (``MIXED_RECIPES``) or an explicit list ``"0.w_qkv,0.w2,29.w2"`` -> entries."""
    recipe = str(recipe).strip()
    if recipe.startswith("auto"):
        raise UserError(f"--mixed {recipe}: choosing linears by measured sensitivity needs calibration data; "
                        f"run `turbolm lite gptq --mixed {recipe}` and convert its checkpoint")
    if recipe in MIXED_RECIPES:
        return MIXED_RECIPES[recipe](num_layer)
    out = []
    for item in (x.strip() for x in recipe.split(",") if x.strip()):
        layer, _, name = item.partition(".")
        if not layer.isdigit() or int(layer) >= num_layer or name not in WORKSPACE_LINEARS:
            raise UserError(f"--mixed {recipe!r}: '{item}' is not a recipe ({', '.join(MIXED_RECIPES)}) or "
                            f"LAYER.NAME with LAYER < {num_layer} and NAME one of {', '.join(WORKSPACE_LINEARS)}")
        out.append(f"{int(layer)}.{name}")
    return out
