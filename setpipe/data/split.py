"""Stable splits: a row goes to train, validation or test by a hash of its key.

The hash depends only on the key's value, so a set stays in its split across reruns,
machines, file layouts and Ray versions. Integers hash their 64-bit two's-complement
bits, floats their float64 bits, strings and binaries their bytes (FNV-1a 64); then
the splitmix64 finaliser mixes the bits and the top 53 give u in [0, 1):
u < validation -> validation; u < validation + test -> test; else train.
All vectorised in numpy (strings: a loop over byte positions, not rows).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from setpipe.spec.models import SplitSpec

_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)


def _splitmix64(z: np.ndarray) -> np.ndarray:
    z = z + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _fnv1a(arr: pa.Array) -> np.ndarray:
    arr = pc.cast(arr, pa.large_binary())
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64)[
        arr.offset : arr.offset + len(arr) + 1
    ]
    data = np.frombuffer(arr.buffers()[2], dtype=np.uint8) if arr.buffers()[2] else np.zeros(0)
    starts, lengths = offsets[:-1], np.diff(offsets)
    h = np.full(len(arr), _FNV_OFFSET, dtype=np.uint64)
    for k in range(int(lengths.max()) if len(lengths) else 0):
        active = lengths > k
        h[active] = (h[active] ^ data[starts[active] + k].astype(np.uint64)) * _FNV_PRIME
    return h


def key_unit(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """float64 [rows] in [0, 1): the stable hash of each key."""
    chunks = list(col.chunks) if isinstance(col, pa.ChunkedArray) else [col]
    parts = []
    for c in chunks:
        t = c.type
        if pa.types.is_integer(t) or pa.types.is_boolean(t):
            bits = np.asarray(pc.cast(c, pa.int64()).to_numpy(zero_copy_only=False)).view(np.uint64)
        elif pa.types.is_floating(t):
            floats = np.asarray(c.to_numpy(zero_copy_only=False), dtype=np.float64)
            bits = floats.view(np.uint64)
        else:
            bits = _fnv1a(c)
        parts.append(bits)
    bits = np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint64)
    with np.errstate(over="ignore"):
        mixed = _splitmix64(bits.astype(np.uint64, copy=False))
    return (mixed >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def assign(col: pa.ChunkedArray | pa.Array, split: SplitSpec) -> np.ndarray:
    """int8 [rows]: 0 train, 1 validation, 2 test."""
    u = key_unit(col)
    out = np.zeros(len(u), dtype=np.int8)
    out[u < split.validation + split.test] = 2
    out[u < split.validation] = 1
    return out


SPLIT_CODE = {"train": 0, "validation": 1, "test": 2}
