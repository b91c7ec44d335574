"""GPTQ checkpoints (AutoGPTQ / GPTQModel ``checkpoint_format`` gptq or gptq_v2; `turbolm lite gptq`
writes them): an HF folder whose config.json (or quantize_config.json) has ``quantization_config =
{quant_method: gptq, bits: 4 | 8, group_size: G, desc_act, sym}``. Each quantized Linear holds
``qweight`` / ``qzeros`` / ``scales`` / ``g_idx`` (layout: lite/gptq_pack.py). The integers go to
the workspace unchanged when the groups are contiguous (``g_idx[i] == i // G``: no act-order, or
act-order with static groups); act-order with scattered groups cannot be laid out in the runtime's
contiguous groups, so those linears are dequantized and re-quantized (RTN), with a warning.
"""
from __future__ import annotations

import json
import os
import re
import sys

import numpy as np

from turbolm.errors import UserError

from ..quant import GROUP_ALIGN, WORKSPACE_LINEARS, QuantLinear, quantize_rtn
from . import register_source
from .awq import SUPPORTED_BITS, AWQSource


@register_source("gptq")
class GPTQSource(AWQSource):
    claim_priority = 1
    quant_method = "gptq"
    packing = "GPTQ"

    @classmethod
    def claims(cls, model_path: str) -> bool:
        return super().claims(model_path) or (
            os.path.isdir(model_path) and os.path.isfile(os.path.join(model_path, "quantize_config.json"))
            and os.path.isfile(os.path.join(model_path, "config.json")))

    def _check_quantization(self, cfg: dict, cfg_path: str) -> None:
        qc = cfg.get("quantization_config")
        side = os.path.join(self.model_path, "quantize_config.json")
        if not isinstance(qc, dict) and os.path.isfile(side):
            with open(side) as f:
                qc = dict(json.load(f), quant_method="gptq")
        if not isinstance(qc, dict) or str(qc.get("quant_method", "")).lower() != "gptq":
            method = qc.get("quant_method", "?") if isinstance(qc, dict) else None
            raise UserError(f"{cfg_path}: not a GPTQ checkpoint (quantization_config.quant_method is {method})")
        fmt = str(qc.get("checkpoint_format", "gptq")).lower()
        if fmt not in ("gptq", "gptq_v2"):
            raise UserError(f"{cfg_path}: GPTQ checkpoint_format '{fmt}' is not supported (gptq, gptq_v2); "
                            "marlin / bitblas repacks must be converted back with GPTQModel first")
        self.zero_offset = 1 if fmt == "gptq" else 0
        try:
            self.bits, self.group_size = int(qc["bits"]), int(qc.get("group_size", 128))
        except (KeyError, TypeError, ValueError):
            raise UserError(f"{cfg_path}: quantization_config needs integer bits and group_size") from None
        if self.bits not in SUPPORTED_BITS:
            raise UserError(f"{cfg_path}: GPTQ with {self.bits} bits is not supported; supported: "
                            f"{', '.join(map(str, SUPPORTED_BITS))}")
        if self.group_size == -1:
            raise UserError(f"{cfg_path}: GPTQ without groups (group_size -1) is not supported yet; the runtime "
                            "needs groups of a multiple of 16 (re-quantize with group_size 128)")
        if self.group_size <= 0 or self.group_size % GROUP_ALIGN:
            raise UserError(f"{cfg_path}: GPTQ group_size {self.group_size} is not supported; the runtime needs a "
                            f"multiple of {GROUP_ALIGN} (e.g. 32, 64, 128)")
        self.lm_head = bool(qc.get("lm_head"))  # GPTQModel's quantized lm head (`lite gptq --lm_head`)
        self.warned = False
        # GPTQModel's per-module overrides: {"+:REGEX" (or "REGEX"): {bits, group_size}, "-:REGEX": skipped}
        self.dynamic = []
        for key, over in (qc.get("dynamic") or {}).items():
            if key.startswith("-:"):
                raise UserError(f"{cfg_path}: dynamic '{key}' leaves modules unquantized; every decoder linear "
                                "must be quantized")
            over = over or {}
            if int(over.get("group_size", self.group_size)) != self.group_size or \
                    int(over.get("bits", self.bits)) not in SUPPORTED_BITS:
                raise UserError(f"{cfg_path}: dynamic '{key}' {over}: only bits 4 / 8 at the checkpoint's group "
                                "size are supported")
            try:
                self.dynamic.append((re.compile(key[2:] if key.startswith("+:") else key), int(over.get("bits", self.bits))))
            except re.error:
                raise UserError(f"{cfg_path}: dynamic key '{key}' is not a regular expression") from None

    def _bits_of(self, module: str) -> int:
        for rx, bits in self.dynamic:
            if rx.search(module):
                return bits
        return self.bits

    def _expected(self, name: str, key: str, shape: tuple) -> dict:
        from .awq import LINEAR_KEYS

        if key not in LINEAR_KEYS:
            return {name: shape}
        out, n_in = shape
        b = self._base(name)
        bits = self._bits_of(b)
        per, G = 32 // bits, self.group_size
        if out % per or n_in % per or n_in % G:
            raise UserError(f"{self.model_path}: {name}: [{out}, {n_in}] does not fit {bits}-bit GPTQ packing "
                            f"with group size {G}")
        return {f"{b}.qweight": (n_in // per, out), f"{b}.qzeros": (n_in // G, out // per),
                f"{b}.scales": (n_in // G, out), f"{b}.g_idx": (n_in,)}

    dtypes = (("qweight", "I32"), ("qzeros", "I32"), ("scales", "F16"), ("g_idx", "I32"))

    def _output_expected(self) -> dict:
        if not self.lm_head:
            return super()._output_expected()
        return self._expected("lm_head.weight", "q", (self.spec.vocab, self.spec.hidden))

    def output(self):
        """A quantized lm head as a QuantLinear (its integers; a tied one is the embedding table too)."""
        return self._linear("lm_head.weight") if self.lm_head else super().output()

    def _linear(self, name: str) -> QuantLinear:
        from turbolm.lite.gptq_pack import dequantize_gptq, unpack_gptq

        b = self._base(name)
        raw = lambda n: self.tensors[n].get_raw(n)  # noqa: E731
        if b.endswith(("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")) and f"{b}.bias" in self.tensors:
            if np.any(self._get(f"{b}.bias")):  # AutoGPTQ writes zero biases everywhere; real ones cannot go
                raise UserError(f"{self.model_path}: {b}.bias is not zero; MLP biases are not supported by the "
                                "workspace format")
        qweight, qzeros, scales, g_idx = (raw(f"{b}.{s}") for s in ("qweight", "qzeros", "scales", "g_idx"))
        G, bits = self.group_size, self._bits_of(b)
        if np.array_equal(np.asarray(g_idx), np.arange(len(g_idx)) // G):
            q, z, s = unpack_gptq(qweight, qzeros, scales.view(np.float16) if scales.dtype == np.uint16 else scales,
                                  bits, self.zero_offset)
            return QuantLinear(q, s.T.copy(), z.T.copy(), bits, G)
        if not self.warned:
            print(f"turbolm convert: {self.model_path} was quantized with act-order and scattered groups (g_idx); "
                  f"the runtime needs contiguous groups, so its linears are dequantized and re-quantized (RTN, "
                  f"group {G}): expect a little more error than the checkpoint's own", file=sys.stderr)
            self.warned = True
        sc = scales.view(np.float16) if scales.dtype == np.uint16 else scales
        w = dequantize_gptq(qweight, qzeros, sc, g_idx, bits, self.zero_offset)
        return quantize_rtn(w, bits, G)

    def _check_tensors(self) -> None:
        super()._check_tensors()
        # mixed widths (dynamic): the workspace's int8 linears; q, k, v share w_qkv, so one width
        wide = []
        for i in range(self.spec.num_layer):
            for home, keys in WORKSPACE_LINEARS.items():
                widths = {self._bits_of(self._base(self._name(i, k))) for k in keys}
                if len(widths) > 1:
                    raise UserError(f"{self.model_path}: layer {i} has q/k/v at different widths {sorted(widths)}; "
                                    "the workspace keeps them in one matrix (w_qkv)")
                if widths.pop() != self.bits:
                    if self.bits != 4:
                        raise UserError(f"{self.model_path}: mixed widths need a 4-bit checkpoint with 8-bit overrides")
                    wide.append(f"{i}.{home}")
        self.spec.int8_linears = tuple(wide)
        if self.lm_head:
            self.spec.head_bits = self._bits_of("lm_head")
