"""The split hash: stable across calls, chunkings and integer widths; pinned to a reference."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from setpipe.data.split import assign, key_unit
from setpipe.spec.models import SplitSpec

MASK = (1 << 64) - 1


def splitmix64(z: int) -> int:
    """The splitmix64 finaliser in plain Python integers, the reference for the numpy one."""
    z = (z + 0x9E3779B97F4A7C15) & MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def fnv1a(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for byte in data:
        h = ((h ^ byte) * 0x100000001B3) & MASK
    return h


def unit(bits: int) -> float:
    return (splitmix64(bits) >> 11) / float(1 << 53)


def test_integer_and_string_keys_match_the_reference() -> None:
    ints = [0, 1, 2, -1, 12345678901234, -(2**63), 2**63 - 1]
    got = key_unit(pa.array(ints, pa.int64()))
    assert got.tolist() == [unit(i & MASK) for i in ints]
    words = ["", "a", "query-17", "ünïcode", "x" * 40]
    got = key_unit(pa.array(words))
    assert got.tolist() == [unit(fnv1a(w.encode())) for w in words]
    floats = [0.5, -2.25]
    got = key_unit(pa.array(floats))
    expected = [unit(int(np.array([f]).view(np.uint64)[0])) for f in floats]
    assert got.tolist() == expected


def test_same_key_same_split_whatever_the_layout() -> None:
    keys = np.arange(-500, 5000, 7, dtype=np.int64)
    rule = SplitSpec(key="k", validation=0.2, test=0.1)
    whole = assign(pa.array(keys), rule)
    assert np.array_equal(whole, assign(pa.array(keys), rule))  # across calls
    chunked = pa.chunked_array(
        [pa.array(keys[:100]), pa.array(keys[100:101]), pa.array(keys[101:])]
    )
    assert np.array_equal(whole, assign(chunked, rule))  # across chunkings
    narrow = keys[(keys > -(2**31)) & (keys < 2**31)].astype(np.int32)
    assert np.array_equal(whole, assign(pa.array(narrow), rule))  # int32 == int64 keys
    sliced = pa.array(keys).slice(33, 200)
    assert np.array_equal(whole[33:233], assign(sliced, rule))
    strings = pa.array([f"id-{k}" for k in keys])
    assert np.array_equal(assign(strings, rule), assign(strings.slice(0), rule))


@pytest.mark.parametrize(("val", "test"), [(0.1, 0.0), (0.2, 0.1), (0.0, 0.5)])
def test_fractions_hold_on_many_keys(val: float, test: float) -> None:
    n = 200_000
    codes = assign(pa.array(np.arange(n)), SplitSpec(key="k", validation=val, test=test))
    for code, p in [(1, val), (2, test), (0, 1 - val - test)]:
        share = float((codes == code).mean())
        assert abs(share - p) <= 4 * np.sqrt(p * (1 - p) / n) + 1e-12
