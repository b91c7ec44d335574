"""A validating, torch-free safetensors reader (numpy memmap).

Why not ``safetensors.safe_open(framework="np")``: numpy has no bfloat16, and we want every file's
header checked against its size *before* anything is written, so a truncated download is one
clear error instead of a half-written workspace.
Format: u64 little-endian header length N, N bytes of JSON {name: {dtype, shape, data_offsets}},
then the data; offsets are relative to the end of the header.
"""
from __future__ import annotations

import json
import os
import struct
from typing import Dict, Tuple

import numpy as np

from turbolm.errors import UserError

from .dtypes import bf16_bits_to_fp32

# safetensors dtype -> (numpy dtype of the stored bits, our dtype name)
DTYPES = {
    "F32": (np.float32, "fp32"),
    "F16": (np.float16, "fp16"),
    "BF16": (np.uint16, "bf16"),
    "F64": (np.float64, "fp32"),
    "I32": (np.int32, "int32"),  # AWQ qweight / qzeros (read with get_raw)
    "I8": (np.int8, "int8"),     # W8A8 (compressed-tensors) weights (read with get_raw)
}


class SafetensorsFile:
    def __init__(self, path: str):
        self.path = path
        self.entries: Dict[str, dict] = {}
        size = os.path.getsize(path)
        bad = f"{path} is truncated or corrupt"
        fix = "re-download or re-save the checkpoint"
        if size < 8:
            raise UserError(f"{bad} ({size} bytes); {fix}")
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > size - 8 or n > 100 << 20:
                raise UserError(f"{bad} (header of {n} bytes in a {size}-byte file); {fix}")
            try:
                header = json.loads(f.read(n))
            except (ValueError, UnicodeDecodeError):
                raise UserError(f"{bad} (unreadable header); {fix}") from None
        if not isinstance(header, dict):
            raise UserError(f"{bad} (header is not a JSON object); {fix}")
        self.data_start = 8 + n
        data_size = size - self.data_start
        for name, e in header.items():
            if name == "__metadata__":
                continue
            try:
                np_dtype, _ = DTYPES[e["dtype"]]
                begin, end = e["data_offsets"]
                shape = tuple(int(d) for d in e["shape"])
            except (KeyError, TypeError, ValueError):
                raise UserError(f"{bad} (tensor {name}: dtype {e.get('dtype') if isinstance(e, dict) else e!r} "
                                f"unsupported or entry malformed); {fix}") from None
            if end - begin != int(np.prod(shape, dtype=np.int64)) * np.dtype(np_dtype).itemsize or begin < 0:
                raise UserError(f"{bad} (tensor {name}: {end - begin} bytes for shape {list(shape)}); {fix}")
            if end > data_size:
                raise UserError(f"{bad} (tensor {name} ends at byte {self.data_start + end} but the file has "
                                f"{size} bytes); {fix}")
            self.entries[name] = {"dtype": e["dtype"], "shape": shape, "offsets": (begin, end)}
        self._mm = None

    def dtype_name(self, name: str) -> str:
        return DTYPES[self.entries[name]["dtype"]][1]

    def shape(self, name: str) -> Tuple[int, ...]:
        return self.entries[name]["shape"]

    def get_raw(self, name: str) -> np.ndarray:
        """The stored values as their own numpy dtype (bf16 as uint16 bits), read-only."""
        if self._mm is None:
            self._mm = np.memmap(self.path, dtype=np.uint8, mode="r")
        e = self.entries[name]
        np_dtype, _ = DTYPES[e["dtype"]]
        begin, end = e["offsets"]
        return np.frombuffer(self._mm, dtype=np_dtype, count=(end - begin) // np.dtype(np_dtype).itemsize,
                             offset=self.data_start + begin).reshape(e["shape"])

    def get_fp32(self, name: str) -> np.ndarray:
        raw = self.get_raw(name)
        return bf16_bits_to_fp32(raw) if DTYPES[self.entries[name]["dtype"]][1] == "bf16" else raw.astype(np.float32)

    def close(self):
        self._mm = None
