"""Safetensors files read lazily (numpy memmap) and written atomically, bf16 included.

The `safetensors` numpy reader cannot represent bf16, and its flax reader places whole tensors on
the default device. We only need the format itself: an 8-byte little-endian header length, a JSON
header {name: {dtype, shape, data_offsets}}, then raw little-endian data. Reading maps the file, so
a loader can slice one layer or one shard of a tensor without reading the rest.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import ml_dtypes
import numpy as np

_DTYPES = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
_NAMES = {v: k for k, v in _DTYPES.items()}


def read_header(path: Path) -> tuple[int, dict]:
    """Returns (data start offset, header dict) of a .safetensors file; errors name the file."""
    try:
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) != 8:
                raise ValueError(f"{path}: not a safetensors file (shorter than 8 bytes)")
            (size,) = struct.unpack("<Q", raw)
            header = json.loads(f.read(size))
    except FileNotFoundError:
        raise FileNotFoundError(f"weights file not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError, OverflowError, MemoryError):
        raise ValueError(f"{path}: not a safetensors file (unreadable header)") from None
    header.pop("__metadata__", None)
    return 8 + size, header


class SafetensorsFile:
    """Lazy, memory-mapped access to the tensors of one file: `f[name]` -> np.ndarray view."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._start, self._header = read_header(self.path)
        self._mmap: np.memmap | None = None

    def keys(self) -> list[str]:
        return list(self._header)

    def __contains__(self, name: str) -> bool:
        return name in self._header

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._header[name]["shape"])

    def __getitem__(self, name: str) -> np.ndarray:
        info = self._header[name]
        if info["dtype"] not in _DTYPES:
            raise ValueError(f"{self.path}: tensor {name} has unsupported dtype {info['dtype']}")
        if self._mmap is None:
            self._mmap = np.memmap(self.path, dtype=np.uint8, mode="r")
        begin, end = info["data_offsets"]
        raw = self._mmap[self._start + begin : self._start + end]
        return raw.view(_DTYPES[info["dtype"]]).reshape(info["shape"])


def write(path: str | Path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> None:
    """Writes tensors to one .safetensors file (the caller handles atomicity of the folder)."""
    header: dict = {"__metadata__": {"format": "pt", **(metadata or {})}}
    offset = 0
    for name, array in tensors.items():
        if array.dtype not in _NAMES:
            raise ValueError(f"tensor {name}: dtype {array.dtype} cannot be written to safetensors")
        header[name] = {
            "dtype": _NAMES[array.dtype],
            "shape": list(array.shape),
            "data_offsets": [offset, offset + array.nbytes],
        }
        offset += array.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for array in tensors.values():
            f.write(np.ascontiguousarray(array).tobytes())
