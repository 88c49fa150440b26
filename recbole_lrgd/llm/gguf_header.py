"""How long a GGUF file should be, from its header alone: a file cut short (an interrupted download or copy)
is then named as truncated, not reported as a converter's reshape error.

The header (metadata, then one entry per tensor: shape, type, offset) is walked with ``struct``; the tensor
data is never read. ``gguf.GGUFReader`` is no use here: it maps every tensor (the reshape error itself, on a
truncated file) and views every metadata item as its own numpy array, slow for a large vocabulary, on every run.
"""
from __future__ import annotations

import math
import mmap
import os
import struct
from functools import lru_cache
from typing import Union

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

from recbole_lrgd.errors import LRGDError

DEFAULT_ALIGNMENT = 32  # the tensor data starts at a multiple of this, unless general.alignment says otherwise
SCALAR_FORMATS = {GGUFValueType.UINT8: "B", GGUFValueType.INT8: "b", GGUFValueType.UINT16: "H",
                  GGUFValueType.INT16: "h", GGUFValueType.UINT32: "I", GGUFValueType.INT32: "i",
                  GGUFValueType.FLOAT32: "f", GGUFValueType.BOOL: "?", GGUFValueType.UINT64: "Q",
                  GGUFValueType.INT64: "q", GGUFValueType.FLOAT64: "d"}


class _Header:
    """A cursor over the header's bytes, in the file's byte order."""

    def __init__(self, buf: Union[bytes, mmap.mmap], order: str):
        self.buf, self.order, self.pos = buf, order, 0

    def read(self, fmt: str):
        value = struct.unpack_from(self.order + fmt, self.buf, self.pos)[0]
        self.pos += struct.calcsize(fmt)
        return value

    def skip(self, n: int) -> None:
        if self.pos + n > len(self.buf):
            raise struct.error(f"{n} bytes at {self.pos}, past the end")
        self.pos += n

    def string(self) -> bytes:
        n = self.read("Q")
        self.skip(n)
        return bytes(self.buf[self.pos - n:self.pos])

    def value(self, kind: int):
        """Read one metadata value of type ``kind``; arrays and strings are skipped (None)."""
        kind = GGUFValueType(kind)
        if kind == GGUFValueType.STRING:
            self.skip(self.read("Q"))
            return None
        if kind == GGUFValueType.ARRAY:
            item, count = GGUFValueType(self.read("I")), self.read("Q")
            if item in SCALAR_FORMATS:
                self.skip(count * struct.calcsize(SCALAR_FORMATS[item]))
            else:
                for _ in range(count):
                    self.value(item)
            return None
        return self.read(SCALAR_FORMATS[kind])


def data_end(buf: Union[bytes, mmap.mmap]) -> int:
    """The byte offset where a GGUF's tensor data ends, by its header; ``ValueError`` (or ``struct.error``)
    when the header itself is cut short or unreadable."""
    order = "<" if struct.unpack_from("<I", buf, 4)[0] & 0xFFFF else ">"  # a big-endian file reads 0 here
    header = _Header(buf, order)
    header.skip(8)  # magic, version
    n_tensors, n_kv = header.read("Q"), header.read("Q")
    alignment = DEFAULT_ALIGNMENT
    for _ in range(n_kv):
        key = header.string()
        value = header.value(header.read("I"))
        if key == b"general.alignment" and value:
            alignment = int(value)
    end = 0
    for _ in range(n_tensors):
        header.string()  # name
        dims = [header.read("Q") for _ in range(header.read("I"))]
        block_size, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(header.read("I"))]
        end = max(end, header.read("Q") + math.prod(dims) * type_size // block_size)
    return -(-header.pos // alignment) * alignment + end


@lru_cache(maxsize=8)
def _expected_size_of(path: str, size: int, mtime_ns: int) -> int:
    """``expected_size`` of a file as it is now (``size`` and ``mtime_ns`` are the cache key only)."""
    return expected_size(path)


def expected_size(path: str) -> int:
    """The size in bytes a GGUF file's header says it has; ``LRGDError`` when the header itself is cut short."""
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            return data_end(buf)
    except (ValueError, KeyError, struct.error) as exc:
        why = "runs past the end of the file" if isinstance(exc, struct.error) else f"does not read ({exc})"
        raise LRGDError(f"GGUF file {path!r} is truncated or corrupt ({os.path.getsize(path)} bytes): "
                        f"its header {why}") from None


def check_complete(path: str) -> None:
    """``LRGDError`` naming a GGUF file that is shorter than its header says, with both sizes. A file is read once
    per process while its size and modification time stay the same (the tokenizer's and the model's loads)."""
    st = os.stat(path)
    expected, size = _expected_size_of(path, st.st_size, st.st_mtime_ns), st.st_size
    if size < expected:
        raise LRGDError(f"GGUF file {path!r} is truncated or corrupt: {size} bytes, but its header expects "
                        f"{expected} (copy or download it again)")
