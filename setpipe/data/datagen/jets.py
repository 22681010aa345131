"""Synthetic jet-like sets: fast, needs no extra, learnable but not trivial.

Two classes loosely shaped like gluon (label 0) and quark (label 1) jets. Gluon-like
jets have more particles (negative binomial, mean 44 vs 30, wide enough that the
distributions overlap a lot), a softer and more even pT sharing (Dirichlet-like gamma
fractions with shape 0.8 vs 0.5) and a wider angular spread (0.10 vs 0.07 in eta and
phi around the jet axis). Particle ids are drawn from the same list with class-dependent
weights (more photons and neutral hadrons in gluon-like jets). No single feature
separates the classes; a set model reaches an AUC of roughly 0.8-0.9.

Columns: part_pt, part_eta, part_phi (list<float32>), part_pid (list<int32>), label
(int64), jet_pt (float32), event_id (int64). Everything is vectorised numpy over
particles; 100k jets take a few seconds.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow as pa

from setpipe.data.datagen._write import SPLITS, ragged, write_files

PIDS = np.array([22, 211, -211, 130, 2112, -2112, 321, -321, 11, -11, 13, -13], dtype=np.int32)
# Per-class id weights: gluon-like jets are richer in photons and neutral hadrons.
PID_WEIGHTS = {
    0: np.array([0.34, 0.17, 0.17, 0.07, 0.05, 0.04, 0.05, 0.05, 0.02, 0.02, 0.01, 0.01]),
    1: np.array([0.26, 0.21, 0.21, 0.05, 0.04, 0.03, 0.07, 0.07, 0.02, 0.02, 0.01, 0.01]),
}
MEAN_MULTIPLICITY = {0: 44.0, 1: 30.0}
FRACTION_SHAPE = {0: 0.8, 1: 0.5}  # smaller shape: a few hard particles carry the pT
ANGULAR_WIDTH = {0: 0.10, 1: 0.07}
DISPERSION = 6.0  # negative binomial shape: multiplicities overlap between classes
ROWS_PER_FILE = 20_000


def make_jets(num_jets: int, seed: int, first_event_id: int = 0) -> pa.Table:
    """``num_jets`` jets, half of each class, in random order."""
    rng = np.random.default_rng(seed)
    label = rng.permutation(np.arange(num_jets) % 2).astype(np.int64)
    mean = np.where(label == 0, MEAN_MULTIPLICITY[0], MEAN_MULTIPLICITY[1])
    # Gamma-Poisson = negative binomial: over-dispersed like real multiplicities.
    sizes = 2 + rng.poisson(rng.gamma(DISPERSION, mean / DISPERSION)).astype(np.int64)
    jet_pt = rng.uniform(500.0, 550.0, num_jets).astype(np.float32)
    jet_eta = rng.uniform(-1.7, 1.7, num_jets)
    jet_phi = rng.uniform(-math.pi, math.pi, num_jets)

    owner = np.repeat(np.arange(num_jets), sizes)
    plabel = label[owner]
    shape = np.where(plabel == 0, FRACTION_SHAPE[0], FRACTION_SHAPE[1])
    z = rng.gamma(shape, 1.0)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    z_sum = np.add.reduceat(z, starts)
    part_pt = (z / z_sum[owner] * jet_pt[owner]).astype(np.float32)
    # Harder particles sit closer to the axis, as in a real shower.
    width = np.where(plabel == 0, ANGULAR_WIDTH[0], ANGULAR_WIDTH[1])
    width = width * (z / z_sum[owner] * sizes[owner]) ** -0.25
    part_eta = (jet_eta[owner] + rng.normal(0.0, 1.0, owner.size) * width).astype(np.float32)
    phi = jet_phi[owner] + rng.normal(0.0, 1.0, owner.size) * width
    part_phi = (phi - 2 * math.pi * np.ceil((phi - math.pi) / (2 * math.pi))).astype(np.float32)
    u = rng.random(owner.size)
    cdf = {c: np.cumsum(w / w.sum()) for c, w in PID_WEIGHTS.items()}
    pid_index = np.where(
        plabel == 0, np.searchsorted(cdf[0], u, side="right"), np.searchsorted(cdf[1], u, "right")
    )
    part_pid = PIDS[np.minimum(pid_index, len(PIDS) - 1)]
    return pa.table(
        {
            "part_pt": ragged(sizes, pa.array(part_pt)),
            "part_eta": ragged(sizes, pa.array(part_eta)),
            "part_phi": ragged(sizes, pa.array(part_phi)),
            "part_pid": ragged(sizes, pa.array(part_pid)),
            "label": pa.array(label),
            "jet_pt": pa.array(jet_pt),
            "event_id": pa.array(first_event_id + np.arange(num_jets, dtype=np.int64)),
        }
    )


def generate_jets(
    out_dir: Path, sizes: dict[str, int], seed: int = 0, rows_per_file: int = ROWS_PER_FILE
) -> dict[str, list[Path]]:
    """Write ``train/``, ``validation/``, ``test/`` under ``out_dir`` (a size 0 split is skipped).

    Each split has its own random stream and event-id range, so one split's size does
    not change another's jets.
    """
    written = {}
    for i, split in enumerate(SPLITS):
        n = sizes.get(split, 0)
        if n <= 0:
            continue
        table = make_jets(n, seed=seed * 10 + i, first_event_id=i * 1_000_000_000)
        written[split] = write_files(table, Path(out_dir) / split, rows_per_file, "jets")
    return written
