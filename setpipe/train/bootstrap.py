"""Seeded bootstrap resamples as count weights, so every metric is computed once per
resample in one vectorised pass.

A resample of N sets drawn with replacement is the original sample with integer weights
(how often each set was drawn); a metric that takes per-set weights then gives the
resample's figure without copying data. A *paired* bootstrap gives two models the same
weights, so the spread of their difference leaves out the sets both find easy or hard.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

RESAMPLES = 200
"""Bootstrap resamples: the σ of a σ estimate is about σ / sqrt(2 * 200) = 5 % of it."""
SEED = 0
"""Fixed, so the same outputs always get the same σ (a gate decision is reproducible)."""
CHUNK = 25
"""Resamples per vectorised pass: bounds memory at CHUNK x N float64 per array."""


def chunks(n: int, resamples: int = RESAMPLES, seed: int = SEED) -> Iterator[np.ndarray]:
    """Blocks of at most CHUNK rows, [rows, n] float64: how often each of n sets is drawn in
    each resample (every row sums to n). One random stream, drawn block by block."""
    rng = np.random.default_rng(seed)
    for start in range(0, resamples, CHUNK):
        rows = min(CHUNK, resamples - start)
        drawn = rng.integers(0, n, size=(rows, n)) + np.arange(rows)[:, None] * n
        yield np.bincount(drawn.ravel(), minlength=rows * n).reshape(rows, n).astype(np.float64)


def resample_counts(n: int, resamples: int = RESAMPLES, seed: int = SEED) -> np.ndarray:
    """All of ``chunks(n, resamples, seed)`` as one [resamples, n] array."""
    return np.concatenate(list(chunks(n, resamples, seed)))


__all__ = ["CHUNK", "RESAMPLES", "SEED", "chunks", "resample_counts"]
