"""A small, fast GGUF reader: metadata as plain Python values, tensors as numpy views of a memmap.

Why not ``gguf.GGUFReader``: it parses every string of a 49k-token vocabulary through numpy memmap
slices, which takes 15-25 s for SmolLM2; this reads the header with ``struct`` in well under a
second. Dequantization still uses ``gguf.quants`` (the reference implementation).
Layout (v2/v3): magic "GGUF", u32 version, u64 tensor count, u64 kv count, the kv pairs, the tensor
infos (name, n_dims, dims innermost first, type, offset), padding to ``general.alignment`` (32),
then the data.
"""
from __future__ import annotations

import os
import struct
from typing import Any, Dict, List, Tuple

import numpy as np

from turbolm.errors import UserError

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_NP = {0: np.uint8, 1: np.int8, 2: np.uint16, 3: np.int16, 4: np.uint32, 5: np.int32, 6: np.float32, 7: np.bool_,
       10: np.uint64, 11: np.int64, 12: np.float64}
_STRING, _ARRAY = 8, 9


class GGUFTensor:
    def __init__(self, name: str, dims: Tuple[int, ...], qtype: int, data: np.ndarray):
        self.name = name
        self.shape = tuple(reversed(dims))  # numpy order: outermost first, [out, in] for a weight
        self.qtype = qtype
        self.data = data  # raw bytes, [rows..., bytes per row]

    def dequantize(self) -> np.ndarray:
        """float32 array of ``self.shape``."""
        from gguf import GGMLQuantizationType
        from gguf.quants import dequantize

        w = dequantize(np.array(self.data), GGMLQuantizationType(self.qtype))  # copy: memmap slicing is slow
        return np.ascontiguousarray(w, dtype=np.float32).reshape(self.shape)

    @property
    def type_name(self) -> str:
        from gguf import GGMLQuantizationType

        return GGMLQuantizationType(self.qtype).name


class GGUFFile:
    def __init__(self, path: str):
        self.path = path
        size = os.path.getsize(path)
        bad = f"{path} is not a valid GGUF file"
        with open(path, "rb") as f:
            head = f.read(min(size, 64 << 20))
        self._buf, self._pos = head, 0
        try:
            if self._take(4) != b"GGUF":
                raise UserError(f"{bad} (no GGUF magic); re-download it")
            version, n_tensors, n_kv = self._unpack("<I"), self._unpack("<Q"), self._unpack("<Q")
            if version not in (2, 3):
                raise UserError(f"{bad} (version {version}; supported 2 and 3)")
            self.fields: Dict[str, Any] = {}
            for _ in range(n_kv):
                key = self._string()
                self.fields[key] = self._value(self._unpack("<I"))
            infos = []
            for _ in range(n_tensors):
                name = self._string()
                n_dims = self._unpack("<I")
                dims = tuple(self._unpack("<Q") for _ in range(n_dims))
                infos.append((name, dims, self._unpack("<I"), self._unpack("<Q")))
        except (struct.error, IndexError, UnicodeDecodeError, ValueError, MemoryError):
            raise UserError(f"{bad} (header truncated or corrupt); re-download it") from None
        align = int(self.fields.get("general.alignment", 32))
        data_start = (self._pos + align - 1) // align * align
        self._mm = np.memmap(path, dtype=np.uint8, mode="r") if size else np.zeros(0, np.uint8)
        self.tensors: Dict[str, GGUFTensor] = {}
        from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

        for name, dims, qtype, offset in infos:
            try:
                block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(qtype)]
            except (ValueError, KeyError):
                raise UserError(f"{path}: tensor {name} has unknown ggml type {qtype}") from None
            ne0 = dims[0] if dims else 1
            rows = int(np.prod(dims[1:], dtype=np.int64)) if len(dims) > 1 else 1
            row_bytes = ne0 // block * type_size
            begin = data_start + offset
            if begin + rows * row_bytes > size:
                raise UserError(f"{path} is truncated (tensor {name} ends at byte {begin + rows * row_bytes}, the "
                                f"file has {size}); re-download it")
            data = self._mm[begin:begin + rows * row_bytes].reshape(tuple(reversed(dims[1:])) + (row_bytes,))
            self.tensors[name] = GGUFTensor(name, dims, qtype, data)
        del self._buf

    # -- header parsing ----------------------------------------------------------------------
    def _take(self, n: int) -> bytes:
        if self._pos + n > len(self._buf):
            raise IndexError("header past end")
        b = self._buf[self._pos:self._pos + n]
        self._pos += n
        return b

    def _unpack(self, fmt: str):
        (v,) = struct.unpack_from(fmt, self._buf, self._pos)
        self._pos += struct.calcsize(fmt)
        return v

    def _string(self) -> str:
        n = self._unpack("<Q")
        return self._take(n).decode("utf-8")

    def _value(self, vtype: int):
        if vtype in _SCALARS:
            return self._unpack(_SCALARS[vtype])
        if vtype == _STRING:
            return self._string()
        if vtype == _ARRAY:
            etype, count = self._unpack("<I"), self._unpack("<Q")
            if etype in _NP:
                n = count * np.dtype(_NP[etype]).itemsize
                return np.frombuffer(self._take(n), dtype=_NP[etype]).tolist()
            if etype == _STRING:
                return self._string_array(count)
            return [self._value(etype) for _ in range(count)]
        raise ValueError(f"unknown GGUF value type {vtype}")

    def _string_array(self, count: int) -> List[str]:
        buf, pos, out = self._buf, self._pos, []
        unpack = struct.Struct("<Q").unpack_from
        for _ in range(count):
            (n,) = unpack(buf, pos)
            pos += 8
            out.append(buf[pos:pos + n].decode("utf-8", errors="replace"))
            pos += n
        if pos > len(buf):
            raise IndexError("header past end")
        self._pos = pos
        return out

    def close(self):
        self.tensors = {}
        self._mm = None
