"""W8A8 checkpoints in compressed-tensors' "int-quantized" format (what `turbolm lite smooth_quant`
writes; LLMC and llm-compressor export the same for vLLM / SGLang): an HF folder whose config.json
has ``quantization_config = {quant_method: compressed-tensors, format: int-quantized,
config_groups: {...: {weights: int 8-bit symmetric per channel, input_activations: int 8-bit
symmetric per token, dynamic}}}``. Each quantized Linear ``NAME`` has ``NAME.weight`` int8
``[out, in]`` and ``NAME.weight_scale`` ``[out, 1]`` (W = weight * scale); everything else is an
ordinary HF tensor. The seven linears of every layer come out as ``quant.QuantLinear`` with one
group per row (``PER_CHANNEL``): unsigned q = weight + 128, zero point 128, so the workspace is
int8 at the group size the converter picks, and its act_type is int8.
"""
from __future__ import annotations

import numpy as np

from turbolm.errors import UserError

from ..quant import PER_CHANNEL, QuantLinear
from .awq import LINEAR_KEYS, AWQSource
from .hf import HFSource
from . import register_source

FORMAT = "int-quantized"


def _is_w8a8_args(w: dict, a: dict) -> bool:
    return (isinstance(w, dict) and isinstance(a, dict) and w.get("num_bits") == 8 and w.get("type", "int") == "int"
            and w.get("symmetric", True) and w.get("strategy") == "channel" and a.get("num_bits") == 8
            and a.get("type", "int") == "int" and a.get("symmetric", True) and a.get("dynamic") in (True, "true")
            and a.get("strategy") == "token")


@register_source("w8a8")
class W8A8Source(AWQSource):  # AWQ's claims() and layer(): seven QuantLinears from _linear, the rest as HF
    quant_method = "compressed-tensors"

    def _check_quantization(self, cfg: dict, cfg_path: str) -> None:
        qc = cfg.get("quantization_config")
        method = qc.get("quant_method", "?") if isinstance(qc, dict) else None
        if method != "compressed-tensors":
            raise UserError(f"{cfg_path}: not a compressed-tensors checkpoint (quantization_config.quant_method is "
                            f"{method}); W8A8 checkpoints come from `turbolm lite smooth_quant`")
        groups = list((qc.get("config_groups") or {}).values())
        fmt = qc.get("format") or (groups[0].get("format") if groups else None)
        if fmt != FORMAT:
            raise UserError(f"{cfg_path}: compressed-tensors format '{fmt}' is not supported; --model-format w8a8 "
                            f"reads '{FORMAT}' (int8 weights per channel, int8 activations per token)")
        if len(groups) != 1 or not _is_w8a8_args(groups[0].get("weights"), groups[0].get("input_activations")):
            raise UserError(f"{cfg_path}: only the W8A8 scheme is supported (one config group: int8 symmetric "
                            "weights per channel, int8 symmetric dynamic activations per token)")
        ignore = [m for m in (qc.get("ignore") or []) if m != "lm_head"]
        if ignore:
            raise UserError(f"{cfg_path}: ignore {ignore} is not supported (every decoder linear must be quantized)")

    def _base(self, name: str) -> str:
        return name[: -len(".weight")]

    def _expected(self, name: str, key: str, shape: tuple) -> dict:
        if key not in LINEAR_KEYS:
            return {name: shape}
        return {name: shape, f"{self._base(name)}.weight_scale": (shape[0], 1)}

    def _check_tensors(self) -> None:
        self._refuse_fused()
        HFSource._check_tensors(self)
        name = self._name(0, "q")
        got = self.tensors[name].dtype_name(name)
        if got != "int8":
            raise UserError(f"{self.model_path}: {name} is {got}; a W8A8 checkpoint stores int8 weights")
        self.spec.src_dtype = "int8"
        self.spec.quant_group_size = PER_CHANNEL
        self.spec.act_type = "int8"

    def _linear(self, name: str) -> QuantLinear:
        q = self.tensors[name].get_raw(name)
        scale = self._get(f"{self._base(name)}.weight_scale")
        out, n_in = q.shape
        return QuantLinear((q.astype(np.int16) + 128).astype(np.uint8), scale.reshape(out, 1).astype(np.float32),
                           np.full((out, 1), 128.0, np.float32), 8, n_in)
