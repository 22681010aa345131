"""Handwritten digits as point sets, from scikit-learn's bundled 8x8 digits (no download).

Each image becomes one set: every lit pixel (intensity > 0) is a point with x (column),
y (7 - row, so up is up) and intensity (0..16 scaled to 0..1). With
``points_per_digit=N`` each image is instead resampled to N points: pixels drawn with
probability proportional to intensity, each jittered uniformly within its pixel; that
makes sets as large as wanted from the same 1797 images.

Columns: points (list<struct<x: float32, y: float32, intensity: float32>>), digit
(int64), image_id (int64). Images are split into train/validation/test by a seeded
permutation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from setpipe.data.datagen._write import SPLITS, ragged, split_sizes, write_files


def make_digits(points_per_digit: int | None, seed: int) -> pa.Table:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = digits.images.astype(np.float64) / 16.0  # [n, 8, 8]
    n = images.shape[0]
    rows, cols = np.meshgrid(np.arange(8), np.arange(8), indexing="ij")
    flat = images.reshape(n, 64)
    if points_per_digit is None:
        lit = flat > 0
        sizes = lit.sum(axis=1)
        owner, pixel = np.nonzero(lit)  # row-major: image after image
        jitter_x = jitter_y = 0.0
    else:
        rng = np.random.default_rng(seed)
        cdf = np.cumsum(flat, axis=1)
        cdf /= cdf[:, -1:]
        sizes = np.full(n, points_per_digit)
        owner = np.repeat(np.arange(n), points_per_digit)
        u = rng.random(owner.size)
        # Inverse-CDF sampling per image, vectorised: offset each image's CDF by its index.
        pixel = np.searchsorted((cdf + np.arange(n)[:, None]).ravel(), u + owner, side="right")
        pixel = np.minimum(pixel - owner * 64, 63)
        jitter_x = rng.uniform(-0.5, 0.5, owner.size)
        jitter_y = rng.uniform(-0.5, 0.5, owner.size)
    x = (cols.ravel()[pixel] + jitter_x).astype(np.float32)
    y = (7 - rows.ravel()[pixel] + jitter_y).astype(np.float32)
    intensity = flat[owner, pixel].astype(np.float32)
    points = pa.StructArray.from_arrays(
        [pa.array(x), pa.array(y), pa.array(intensity)], names=["x", "y", "intensity"]
    )
    return pa.table(
        {
            "points": ragged(sizes, points),
            "digit": pa.array(digits.target.astype(np.int64)),
            "image_id": pa.array(np.arange(n, dtype=np.int64)),
        }
    )


def generate_digits(
    out_dir: Path,
    validation: float = 0.1,
    test: float = 0.1,
    points_per_digit: int | None = None,
    seed: int = 0,
    rows_per_file: int = 1000,
) -> dict[str, list[Path]]:
    """Write train/validation/test subdirectories of digit point sets."""
    table = make_digits(points_per_digit, seed)
    order = np.random.default_rng([seed, 1]).permutation(table.num_rows)
    sizes = split_sizes(table.num_rows, validation, test)
    written, start = {}, 0
    for split in SPLITS:
        part = table.take(pa.array(order[start : start + sizes[split]]))
        start += sizes[split]
        if part.num_rows:
            written[split] = write_files(part, Path(out_dir) / split, rows_per_file, "digits")
    return written
