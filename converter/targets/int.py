"""int4 / int8 workspaces (weight-only quantization; layout in workspace_template/README.md).

The seven linears of every layer are stored quantized with per-group scales and zero points (group
size G along the input dim); norms and biases stay fp16, and the embedding table and lm head too
unless --embedding_type quantizes them (targets/fp.py). Per linear
``NAME`` (e.g. ``layers.i.attention.w_qkv``) and rank r, for the rank's ``[in, out]`` slice:

  NAME.r.qweight  int4: uint8 [in, ceil(out / 2)], column 2j in the low nibble of byte j, 2j+1 high
                  int8: uint8 [in, out]
  NAME.r.scales   fp16 [in / G, out]
  NAME.r.zeros    fp16 [in / G, out]   zero points in q units;  W = (q - zero) * scale

Rows, columns, permutation and TP split are exactly those of the fp16 layout (targets/fp.py).
A float source is quantized here by round-to-nearest (converter/quant.py); a quantized source
(AWQ) hands over its integers, which are only re-laid-out.
"""
from __future__ import annotations

import os
from typing import Dict

import numpy as np

from turbolm.errors import UserError

from ..quant import (BITS, WORKSPACE_HOME, QuantLinear, check_group_size, concat_rows, pack_int4_columns,
                     quantize_rtn)
from ..tp import rotate_half_to_interleaved
from . import register_target
from .fp import Fp16Target

FORMAT_VERSION = 2  # config.ini format_version of workspaces with int4/int8 linears (runtime: kQuantFormatVersion)
LINEARS = ("q", "k", "v", "o", "gate", "up", "down")


class IntTarget(Fp16Target):
    @classmethod
    def validate(cls, spec, tp: int, group_size: int) -> None:
        check_group_size(spec, tp, group_size)

    def __init__(self, out_dir, spec, tp, group_size=0):
        super().__init__(out_dir, spec, tp, group_size)
        self.bits = BITS[self.weight_type]
        self.int8_linears = set()  # mixed precision: "i.w_qkv", ... kept at int8 (converter/quant.py recipes)
        self.validate(spec, tp, group_size)

    def config_keys(self) -> dict:
        def order(e):
            i, name = e.split(".")
            return int(i), name
        return {"weight_type": self.weight_type, "group_size": self.group_size, "format_version": FORMAT_VERSION,
                "int8_linears": ",".join(sorted(self.int8_linears, key=order)), **self.embedding_keys()}

    def _quant(self, name: str, w, bits: int = 0) -> QuantLinear:
        want = bits or self.bits
        if isinstance(w, QuantLinear):
            if w.bits == want and w.group_size != self.group_size and w.group_size % self.group_size == 0:
                w = w.regroup(self.group_size)  # per-channel sources: one group per row, split to the workspace's
            if w.bits != want or w.group_size != self.group_size:
                raise UserError(f"{name}: the checkpoint is {w.bits}-bit with group size {w.group_size}; it converts "
                                f"to weight_type int{w.bits} --group-size {w.group_size} only")
            return w
        return quantize_rtn(w, want, self.group_size)

    def save_q(self, name: str, ql: QuantLinear) -> None:
        """``ql`` is the rank's slice in canonical [out, in] form; written as [in, out] files."""
        qt = np.ascontiguousarray(ql.q.T)
        (pack_int4_columns(qt) if ql.bits == 4 else qt).tofile(os.path.join(self.out_dir, f"{name}.qweight"))
        for suffix, a in (("scales", ql.scales), ("zeros", ql.zeros)):
            self.save(f"{name}.{suffix}", np.ascontiguousarray(a.T))

    def export_layer(self, i: int, t: Dict[str, np.ndarray]) -> None:
        s, tp = self.spec, self.tp
        H, KV, D = s.head_num, s.kv_head_num, s.head_dim
        R = s.rotary_dim or D  # partial rotary: only the first R of each head are permuted
        bits = {k: 8 if f"{i}.{WORKSPACE_HOME[k]}" in self.int8_linears else self.bits for k in LINEARS}
        ql = {k: self._quant(f"layers.{i}.{k}", t[k], bits[k]) for k in LINEARS}
        q = ql["q"].map_rows(lambda a: rotate_half_to_interleaved(a, H, D, R))
        k = ql["k"].map_rows(lambda a: rotate_half_to_interleaved(a, KV, D, R))
        v = ql["v"]
        has_bias = s.qkv_bias or s.o_bias
        if has_bias:
            zeros = lambda n: np.zeros(n * D, np.float32)  # noqa: E731
            qb = rotate_half_to_interleaved(t["q_bias"], H, D, R) if "q_bias" in t else zeros(H)
            kb = rotate_half_to_interleaved(t["k_bias"], KV, D, R) if "k_bias" in t else zeros(KV)
            vb = t["v_bias"] if "v_bias" in t else zeros(KV)
        hq, hk = H // tp * D, KV // tp * D
        I, o_in = s.inter // tp, H * D // tp
        p = f"layers.{i}."
        for r in range(tp):
            qkv = concat_rows([q.map_rows(lambda a: a[r * hq:(r + 1) * hq]),
                               k.map_rows(lambda a: a[r * hk:(r + 1) * hk]),
                               v.map_rows(lambda a: a[r * hk:(r + 1) * hk])])
            self.save_q(f"{p}attention.w_qkv.{r}", qkv)
            if has_bias:
                b = np.concatenate([qb[r * hq:(r + 1) * hq], kb[r * hk:(r + 1) * hk], vb[r * hk:(r + 1) * hk]])
                self.save(f"{p}attention.w_qkv.{r}.bias", b[None, :])
            self.save_q(f"{p}attention.wo.{r}", ql["o"].in_slice(r * o_in, (r + 1) * o_in))
            if "o_bias" in t:
                self.save(f"{p}attention.wo.{r}.bias", t["o_bias"])
            self.save_q(f"{p}feed_forward.w1.{r}", ql["gate"].map_rows(lambda a: a[r * I:(r + 1) * I]))
            self.save_q(f"{p}feed_forward.w3.{r}", ql["up"].map_rows(lambda a: a[r * I:(r + 1) * I]))
            self.save_q(f"{p}feed_forward.w2.{r}", ql["down"].in_slice(r * I, (r + 1) * I))
        self.save(f"{p}attention_norm.weight", t["attention_norm"])
        for key in ("q_norm", "k_norm"):  # Qwen3: per head, in the same interleaved order as q / k
            if key in t:
                self.save(f"{p}attention.{key}.weight", rotate_half_to_interleaved(t[key], 1, D, R))
        self.save(f"{p}ffn_norm.weight", t["ffn_norm"])
        for key in ("post_attention_norm", "post_ffn_norm"):  # Gemma 2/3
            if key in t:
                self.save(f"{p}{key}.weight", t[key])


@register_target("int4")
class Int4Target(IntTarget):
    pass


@register_target("int8")
class Int8Target(IntTarget):
    pass
