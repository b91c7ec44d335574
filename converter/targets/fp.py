"""fp16 / bf16 workspaces: the TurboMind layout of LMDeploy v0.1.0 (DESIGN.md §3).

Per layer i and rank r (H heads, KV kv heads, D head size, tp ranks):
  layers.i.attention.w_qkv.r.weight   [hidden, (H + 2KV) D / tp]   [q_r | k_r | v_r], q/k interleaved
  layers.i.attention.w_qkv.r.bias     [1, (H + 2KV) D / tp]        when attn_bias
  layers.i.attention.wo.r.weight      [H D / tp, hidden]           rows split
  layers.i.attention.wo.r.bias        [hidden]                     whole on every rank, when present
  layers.i.feed_forward.w1.r.weight   [hidden, inter / tp]         gate, columns split
  layers.i.feed_forward.w3.r.weight   [hidden, inter / tp]         up, columns split
  layers.i.feed_forward.w2.r.weight   [inter / tp, hidden]         down, rows split
  layers.i.attention_norm.weight, layers.i.ffn_norm.weight  [hidden]
and once: tok_embeddings.weight, output.weight [vocab, hidden], norm.weight [hidden].

With an int8 / int4 ``embedding_type`` (any weight type) the embedding table and lm head are
instead, per ``T`` in tok_embeddings and output (output only when the lm head is not tied):
  T.qweight   uint8 [vocab, hidden] (int8) or [vocab, hidden / 2] (int4: element 2j low nibble)
  T.scales    fp16 [vocab, hidden / G]      G = embedding_group_size (quant.lm_head_group_size, or a
                                            quantized source head's group size)
  T.zeros     fp16 [vocab, hidden / G]      zero points in q units;  W = (q - zero) * scale
"""
from __future__ import annotations

import os
from typing import Dict

import numpy as np

from turbolm.errors import UserError

from ..dtypes import fp32_to_bf16_bits
from ..quant import QuantLinear, pack_int4_columns, quantize_rtn
from ..tp import qkv_rank, rotate_half_to_interleaved, split_cols, split_rows
from . import Target, register_target


class FpTarget(Target):
    def _encode(self, name: str, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def save(self, name: str, x: np.ndarray) -> None:
        self._encode(name, x).tofile(os.path.join(self.out_dir, name))

    def export_misc(self, tok_embeddings, norm, output):
        self.save("norm.weight", norm)
        if not self.embedding_bits:
            self.save("tok_embeddings.weight", tok_embeddings)
            self.save("output.weight", output)
            return
        # a quantized lm head (GPTQ lm_head) comes as its integers; a tied one is the table itself
        tied_q = self.spec.tied and isinstance(output, QuantLinear)
        self._save_rows("tok_embeddings", output if tied_q else tok_embeddings)
        if not self.spec.tied:
            self._save_rows("output", output)

    def _save_rows(self, name: str, w) -> None:
        ql = w if isinstance(w, QuantLinear) else quantize_rtn(w, self.embedding_bits, self.embedding_group)
        (pack_int4_columns(ql.q) if ql.bits == 4 else ql.q).tofile(os.path.join(self.out_dir, f"{name}.qweight"))
        for suffix, a in (("scales", ql.scales), ("zeros", ql.zeros)):
            np.ascontiguousarray(a, dtype=np.float16).tofile(os.path.join(self.out_dir, f"{name}.{suffix}"))

    def export_layer(self, i: int, t: Dict[str, np.ndarray]) -> None:
        s, tp = self.spec, self.tp
        H, KV, D = s.head_num, s.kv_head_num, s.head_dim
        R = s.rotary_dim or D  # partial rotary: only the first R of each head are permuted
        q = rotate_half_to_interleaved(t["q"], H, D, R)
        k = rotate_half_to_interleaved(t["k"], KV, D, R)
        has_bias = s.qkv_bias or s.o_bias
        if has_bias:  # attn_bias = 1 means a w_qkv bias file on every rank; zeros where the model has none
            zeros = lambda n: np.zeros(n * D, np.float32)  # noqa: E731
            qb = rotate_half_to_interleaved(t["q_bias"], H, D, R) if "q_bias" in t else zeros(H)
            kb = rotate_half_to_interleaved(t["k_bias"], KV, D, R) if "k_bias" in t else zeros(KV)
            vb = t["v_bias"] if "v_bias" in t else zeros(KV)
        p = f"layers.{i}."
        for r in range(tp):
            self.save(f"{p}attention.w_qkv.{r}.weight", qkv_rank(q, k, t["v"], H, KV, D, tp, r).T)
            if has_bias:
                self.save(f"{p}attention.w_qkv.{r}.bias", qkv_rank(qb, kb, vb, H, KV, D, tp, r)[None, :])
            self.save(f"{p}attention.wo.{r}.weight", split_rows(t["o"].T, tp, r))
            if "o_bias" in t:
                self.save(f"{p}attention.wo.{r}.bias", t["o_bias"])
            self.save(f"{p}feed_forward.w1.{r}.weight", split_cols(t["gate"].T, tp, r))
            self.save(f"{p}feed_forward.w3.{r}.weight", split_cols(t["up"].T, tp, r))
            self.save(f"{p}feed_forward.w2.{r}.weight", split_rows(t["down"].T, tp, r))
        self.save(f"{p}attention_norm.weight", t["attention_norm"])
        for key in ("q_norm", "k_norm"):  # Qwen3: per head, in the same interleaved order as q / k
            if key in t:
                self.save(f"{p}attention.{key}.weight", rotate_half_to_interleaved(t[key], 1, D, R))
        self.save(f"{p}ffn_norm.weight", t["ffn_norm"])
        for key in ("post_attention_norm", "post_ffn_norm"):  # Gemma 2/3
            if key in t:
                self.save(f"{p}{key}.weight", t[key])


@register_target("fp16")
class Fp16Target(FpTarget):
    def _encode(self, name, x):
        y = np.ascontiguousarray(x, dtype=np.float16)
        if not np.isfinite(y).all() and np.isfinite(x).all():
            raise UserError(f"{name}: values beyond the fp16 range ({float(np.abs(x).max()):.3g}); "
                            "convert with --dtype bf16")
        return y


@register_target("bf16")
class Bf16Target(FpTarget):
    def _encode(self, name, x):
        return fp32_to_bf16_bits(x)
