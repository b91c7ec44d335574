"""AWQ checkpoints in AutoAWQ's "gemm" packing (what `turbolm lite auto_awq` writes; AutoAWQ models
on the hub too): an HF folder whose config.json has ``quantization_config = {quant_method: awq,
bits: 4 | 8, group_size: G, zero_point: true, version: gemm}``. Each quantized Linear ``NAME`` has
``NAME.qweight`` int32 ``[in, out / (32 / bits)]``, ``NAME.qzeros`` int32 ``[in / G, out / (32 /
bits)]`` and ``NAME.scales`` fp16 ``[in / G, out]`` (packing: lite/awq_pack.py); everything else is
an ordinary HF tensor. The seven linears of every layer come out as ``quant.QuantLinear`` (their
integers, unchanged), so the workspace is int4 / int8 with the checkpoint's group size.
"""
from __future__ import annotations

import json
import os
from typing import Optional

import numpy as np

from turbolm.errors import UserError

from ..quant import GROUP_ALIGN, QuantLinear
from .hf import HFSource
from . import register_source

LINEAR_KEYS = ("q", "k", "v", "o", "gate", "up", "down")
SUPPORTED_BITS = (4, 8)
SUPPORTED_VERSIONS = ("gemm",)


def _quant_config(model_path: str) -> Optional[dict]:
    try:
        with open(os.path.join(model_path, "config.json")) as f:
            qc = json.load(f).get("quantization_config")
    except (OSError, ValueError, AttributeError):
        return None
    return qc if isinstance(qc, dict) else None


@register_source("awq")
class AWQSource(HFSource):
    claim_priority = 1
    quant_method = "awq"  # config.json quantization_config.quant_method of the folders this claims
    packing = "AWQ gemm"
    dtypes = (("qweight", "I32"), ("qzeros", "I32"), ("scales", "F16"))  # stored dtype of each tensor

    @classmethod
    def claims(cls, model_path: str) -> bool:
        qc = _quant_config(model_path) if os.path.isdir(model_path) else None
        return bool(qc) and str(qc.get("quant_method", "")).lower() == cls.quant_method

    def _check_quantization(self, cfg: dict, cfg_path: str) -> None:
        qc = cfg.get("quantization_config")
        if not isinstance(qc, dict) or str(qc.get("quant_method", "")).lower() != "awq":
            method = qc.get("quant_method", "?") if isinstance(qc, dict) else None
            raise UserError(f"{cfg_path}: not an AWQ checkpoint (quantization_config.quant_method is {method}); "
                            "use --model-format hf for an fp16/bf16 model")
        version = str(qc.get("version", "gemm")).lower()
        if version not in SUPPORTED_VERSIONS:
            raise UserError(f"{cfg_path}: AWQ version '{version}' is not supported; only the AutoAWQ "
                            f"{'/'.join(SUPPORTED_VERSIONS)} packing is (re-quantize with `turbolm lite auto_awq`, "
                            "or AutoAWQ with version='GEMM')")
        if not qc.get("zero_point", True):
            raise UserError(f"{cfg_path}: AWQ without zero points (zero_point: false) is not supported")
        try:
            self.bits, self.group_size = int(qc.get("bits", qc.get("w_bit"))), int(qc.get("group_size", qc.get("q_group_size")))
        except (TypeError, ValueError):
            raise UserError(f"{cfg_path}: quantization_config needs integer bits and group_size") from None
        if self.bits not in SUPPORTED_BITS:
            raise UserError(f"{cfg_path}: AWQ with {self.bits} bits is not supported; supported: "
                            f"{', '.join(map(str, SUPPORTED_BITS))}")
        if self.group_size <= 0 or self.group_size % GROUP_ALIGN:
            raise UserError(f"{cfg_path}: AWQ group_size {self.group_size} is not supported; the runtime needs a "
                            f"multiple of {GROUP_ALIGN} (e.g. 32, 64, 128)")
        skip = qc.get("modules_to_not_convert")
        if skip:
            raise UserError(f"{cfg_path}: modules_to_not_convert {skip} is not supported (every decoder linear "
                            "must be quantized)")

    def _base(self, name: str) -> str:
        return name[: -len(".weight")]

    def _expected(self, name: str, key: str, shape: tuple) -> dict:
        if key not in LINEAR_KEYS:
            return {name: shape}
        out, n_in = shape
        per, G = 32 // self.bits, self.group_size
        if out % per or n_in % G:
            raise UserError(f"{self.model_path}: {name}: [{out}, {n_in}] does not fit {self.bits}-bit packing "
                            f"with group size {G}")
        b = self._base(name)
        return {f"{b}.qweight": (n_in, out // per), f"{b}.qzeros": (n_in // G, out // per), f"{b}.scales": (n_in // G, out)}

    def _refuse_fused(self) -> None:
        if self.names.get("fused"):
            raise UserError(f"{self.model_path}: a quantized checkpoint of an architecture with fused projections "
                            f"({', '.join(self.names['fused'].values())}) is not supported yet; convert the fp16 "
                            "checkpoint, with --weight_type int4|int8 to quantize")

    def _check_tensors(self) -> None:
        self._refuse_fused()
        super()._check_tensors()
        name = self._base(self._name(0, "q"))
        for suffix, want in self.dtypes:
            f = self.tensors[f"{name}.{suffix}"]
            entry = getattr(f, "entries", {}).get(f"{name}.{suffix}")
            got = entry["dtype"] if isinstance(entry, dict) else want  # pytorch .bin: checked when unpacked
            if got != want:
                raise UserError(f"{self.model_path}: {name}.{suffix} is {got}, the {self.packing} packing stores {want}")
        self.spec.src_dtype = f"int{self.bits}"
        self.spec.quant_group_size = self.group_size

    def _linear(self, name: str) -> QuantLinear:
        from turbolm.lite.awq_pack import unpack_awq

        b = self._base(name)
        raw = lambda n: self.tensors[n].get_raw(n)  # noqa: E731
        q, z, s = unpack_awq(raw(f"{b}.qweight"), raw(f"{b}.qzeros"), raw(f"{b}.scales"), self.bits)
        return QuantLinear(q.astype(np.uint8), s.astype(np.float32), z.astype(np.float32), self.bits, self.group_size)

    def layer(self, i):
        out = {}
        for k in LINEAR_KEYS:
            out[k] = self._linear(self._name(i, k))
        from ..spec import OPTIONAL_LAYER_KEYS
        for k in ("attention_norm", "ffn_norm"):
            out[k] = self._get(self._name(i, k))
        for k in OPTIONAL_LAYER_KEYS:
            if self._name(i, k) in self.tensors:
                out[k] = self._get(self._name(i, k))
        return out
