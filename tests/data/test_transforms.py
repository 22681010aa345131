"""Feature transforms against a plain numpy reference, set by set."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import torch
from data_cases import write

from setpipe.data import FittedTransforms, SetBatch, fit_transforms, read_dataset
from setpipe.data.transforms import fit_on_batches
from setpipe.errors import DataError
from setpipe.spec.models import DataSpec

RAW = ["pt", "eta", "phi", "pid"]
CHARGED = [211.0, 321.0, 11.0, 13.0]
FEATURES: list[dict[str, Any]] = [
    {"name": "log_pt", "source": "pt", "ops": [{"op": "log", "eps": 0.5}]},
    {"name": "std_pt", "source": "pt", "ops": [{"op": "log1p"}, {"op": "standardize"}]},
    {"name": "frac", "source": "pt", "ops": [{"op": "fraction"}]},
    {"name": "deta", "source": "eta", "ops": [{"op": "center", "weight": "pt"}]},
    {"name": "dphi", "source": "phi", "ops": [{"op": "center", "weight": "pt", "periodic": True}]},
    {
        "name": "deta_plain",
        "source": "eta",
        "ops": [{"op": "center"}, {"op": "clip", "min": -0.5, "max": 0.5}],
    },
    {"name": "charged", "source": "pid", "ops": [{"op": "abs"}, {"op": "isin", "values": CHARGED}]},
    {"name": "eta_clip", "source": "eta", "ops": [{"op": "clip", "max": 1.0}]},
]


def data_spec(train: str = "unused") -> DataSpec:
    return DataSpec.model_validate(
        {
            "train": train,
            "elements": {"layout": "parallel", "columns": RAW},
            "features": FEATURES,
            "shuffle": {"files": False, "buffer_sets": 0},
        }
    )


def wrap(x: np.ndarray) -> np.ndarray:
    return x - 2 * math.pi * np.ceil((x - math.pi) / (2 * math.pi))


def make_sets(num: int, seed: int) -> list[np.ndarray]:
    """Jet-like sets [n, 4]; some straddle the phi = +-pi seam, two have weights summing to 0."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(num):
        n = int(rng.integers(1, 15))
        axis = math.pi - 0.05 if i % 3 == 0 else rng.uniform(-3, 3)
        pt = rng.exponential(10.0, n)
        if i in (1, 2):
            pt[:] = 0.0  # zero total weight: centre falls back to the plain mean
        eta = rng.normal(0, 1.2, n)
        phi = wrap(axis + rng.normal(0, 0.1, n))
        pid = rng.choice([22.0, 211.0, -211.0, 130.0, -321.0, 11.0, -13.0, 2112.0], n)
        out.append(np.stack([pt, eta, phi, pid], 1).astype(np.float32))
    return out


def reference(sets: list[np.ndarray], mean: float, std: float) -> np.ndarray:
    """Every feature of FEATURES, computed set by set in float64 with numpy."""
    rows = []
    for s in sets:
        pt, eta, phi, pid = (s[:, j].astype(np.float64) for j in range(4))
        w = pt if pt.sum() != 0 else np.ones_like(pt)
        lead = phi[np.argmax(pt)]  # argmax: the first of equal maxima
        d = wrap(phi - lead)
        frac = pt / pt.sum() if pt.sum() != 0 else np.zeros_like(pt)
        cols = [
            np.log(pt + 0.5),
            (np.log1p(pt) - mean) / std,
            frac,
            eta - (w * eta).sum() / w.sum(),
            wrap(d - (w * d).sum() / w.sum()),
            np.clip(eta - eta.mean(), -0.5, 0.5),
            np.isin(np.abs(pid), CHARGED).astype(np.float64),
            np.minimum(eta, 1.0),
        ]
        rows.append(np.stack(cols, 1))
    return np.concatenate(rows)


def fitted(sets: list[np.ndarray], pieces: int) -> FittedTransforms:
    """Standardize fitted from ``pieces`` batches, as a streaming pass sees them."""
    bounds = np.linspace(0, len(sets), pieces + 1).astype(int)
    batches = [
        SetBatch.from_sets([torch.from_numpy(s) for s in sets[a:b]])
        for a, b in itertools.pairwise(bounds)
    ]
    return fit_on_batches(FittedTransforms.from_spec(data_spec()), batches)


def test_every_op_matches_numpy() -> None:
    sets = make_sets(40, seed=0)
    transforms = fitted(sets, pieces=7)
    all_log1p = np.log1p(np.concatenate([s[:, 0] for s in sets]).astype(np.float64))
    stats = transforms.stats["std_pt"]
    assert stats["count"] == len(all_log1p)
    assert stats["mean"] == pytest.approx(all_log1p.mean(), rel=1e-12)
    assert stats["std"] == pytest.approx(all_log1p.std(), rel=1e-12)  # population std
    out = transforms.apply(SetBatch.from_sets([torch.from_numpy(s) for s in sets]))
    assert transforms.feature_names == [f["name"] for f in FEATURES]
    assert out.values.dtype == torch.float32
    expected = reference(sets, all_log1p.mean(), all_log1p.std())
    np.testing.assert_allclose(out.values.numpy(), expected, rtol=2e-6, atol=2e-6)


def test_periodic_centre_ignores_where_the_seam_is() -> None:
    # The same jet rotated around the circle: the centred phi must not change, and away
    # from the seam it is the plain weighted mean.
    phi = np.array([0.02, -0.03, 0.05, -0.01])
    pt = np.array([5.0, 40.0, 1.0, 3.0])
    linear = phi - (pt * phi).sum() / pt.sum()
    transforms = FittedTransforms.from_spec(data_spec())
    for rotation in [0.0, math.pi, -math.pi + 0.01, 2.5, 3.13]:
        s = np.stack([pt, np.zeros(4), wrap(phi + rotation), np.zeros(4)], 1).astype(np.float32)
        feats = transforms._chain(  # one feature, no standardize needed
            transforms.features[4],  # type: ignore[index]
            torch.from_numpy(s).double(),
            __import__("setpipe.data.transforms", fromlist=["_Sets"])._Sets(
                SetBatch.from_sets([torch.from_numpy(s)])
            ),
            stop_at_standardize=False,
        )
        np.testing.assert_allclose(feats.numpy(), linear, atol=2e-6)


def test_saved_transforms_apply_identically() -> None:
    sets = make_sets(10, seed=1)
    transforms = fitted(sets, pieces=2)
    again = FittedTransforms.from_dict(json.loads(json.dumps(transforms.to_dict())))
    batch = SetBatch.from_sets([torch.from_numpy(s) for s in sets])
    assert torch.equal(transforms.apply(batch).values, again.apply(batch).values)


def test_unfitted_standardize_is_an_error() -> None:
    transforms = FittedTransforms.from_spec(data_spec())
    batch = SetBatch.from_sets([torch.ones(2, 4)])
    with pytest.raises(DataError) as err:
        transforms.apply(batch)
    assert str(err.value) == (
        "feature 'std_pt' has a standardize op that was never fitted; call fit_transforms on "
        "the training data first"
    )


def test_standardize_is_fitted_in_one_pass_over_ray_data(ray_local: None, tmp_path: Path) -> None:
    sets = make_sets(120, seed=2)
    cols = {
        name: pa.array([s[:, j] for s in sets], pa.list_(pa.float32()))
        for j, name in enumerate(RAW)
    }
    write(pa.table(cols), tmp_path, files=3, row_group_size=9)
    spec = data_spec(str(tmp_path))
    transforms = fit_transforms(spec, read_dataset(spec, "train"))
    all_log1p = np.log1p(np.concatenate([s[:, 0] for s in sets]).astype(np.float64))
    assert transforms.stats["std_pt"]["count"] == len(all_log1p)
    assert transforms.stats["std_pt"]["mean"] == pytest.approx(all_log1p.mean(), rel=1e-12)
    assert transforms.stats["std_pt"]["std"] == pytest.approx(all_log1p.std(), rel=1e-12)


FIX_TRANSFORM = "filter these rows, add an offset (eps), or set data.on_bad_row: skip"


def log_spec(train: str, ops: list[dict[str, Any]], **extra: Any) -> DataSpec:
    return DataSpec.model_validate(
        {
            "train": train,
            "elements": {"layout": "parallel", "columns": RAW},
            "features": [
                {"name": "log_pt", "source": "pt", "ops": ops},
                {"name": "eta", "source": "eta"},
            ],
            "shuffle": {"files": False, "buffer_sets": 0},
            **extra,
        }
    )


def test_a_transform_that_is_not_finite_names_feature_op_and_element() -> None:
    sets = [np.ones((3, 4), np.float32) for _ in range(4)]
    sets[1][2, 0] = 0.0
    sets[3][0, 0] = -1.0
    batch = SetBatch.from_sets([torch.from_numpy(s) for s in sets])
    cases = [
        (
            [{"op": "log"}],
            "log of 0.0 at element 2 (expected > 0)",
            "log of -1.0 at element 0 (expected > 0)",
        ),
        ([{"op": "log1p"}], None, "log1p of -1.0 at element 0 (expected > -1)"),
        ([{"op": "log", "eps": 0.5}], None, "log of -1.0 at element 0 (expected > -0.5)"),
        ([{"op": "abs"}, {"op": "log"}], "log of 0.0 at element 2 after abs (expected > 0)", None),
    ]
    for ops, row1, row3 in cases:
        transforms = FittedTransforms.from_spec(log_spec("unused", ops))
        problem = transforms.nonfinite_rows(batch)
        assert problem is not None
        assert problem.kind == "transform"
        assert problem.rows.tolist() == [False, row1 is not None, False, row3 is not None]
        for row, words in ((1, row1), (3, row3)):
            if words is not None:
                assert problem.describe(row).startswith(f"feature log_pt (from pt): {words}")
                assert problem.describe(row).endswith(f"; {FIX_TRANSFORM}")
    fine = FittedTransforms.from_spec(log_spec("unused", [{"op": "log", "eps": 1.5}]))
    assert fine.nonfinite_rows(batch) is None


def jets_with_a_zero_pt(tmp_path: Path) -> tuple[list[np.ndarray], Path]:
    """make_sets in one file of row groups of 9; row 12's element 1 has pt 0."""
    sets = make_sets(40, seed=5)
    for s in sets:
        s[:, 0] += 0.1  # make_sets gives two sets all-zero pts
    sets[12][1, 0] = 0.0
    cols = {
        name: pa.array([s[:, j] for s in sets], pa.list_(pa.float32()))
        for j, name in enumerate(RAW)
    }
    write(pa.table(cols), tmp_path, files=1, row_group_size=9)
    return sets, tmp_path / "part-0000.parquet"


def test_log_of_zero_is_a_bad_row_of_its_file(ray_local: None, tmp_path: Path) -> None:
    from data_cases import read_all

    from setpipe.data import BatchStats

    sets, path = jets_with_a_zero_pt(tmp_path)
    data = log_spec(str(tmp_path), [{"op": "log"}])
    with pytest.raises(DataError) as err:
        read_all(data)
    assert str(err.value) == (
        f"{path} row 12: feature log_pt (from pt): log of 0.0 at element 1 (expected > 0); "
        f"{FIX_TRANSFORM}"
    )
    stats = BatchStats()
    batches = read_all(data.model_copy(update={"on_bad_row": "skip"}), stats=stats)
    assert stats.skipped_rows == 1
    assert stats.sets == sum(b.num_sets for b in batches) == 39
    assert stats.elements == sum(len(s) for i, s in enumerate(sets) if i != 12)
    values = torch.cat([b.values for b in batches])
    assert bool(torch.isfinite(values).all())


def test_standardize_is_fitted_on_the_rows_that_remain(ray_local: None, tmp_path: Path) -> None:
    sets, path = jets_with_a_zero_pt(tmp_path)
    ops = [{"op": "log"}, {"op": "standardize"}]
    data = log_spec(str(tmp_path), ops)
    with pytest.raises(DataError) as err:
        fit_transforms(data, read_dataset(data, "train"))
    assert str(err.value) == (
        f"{path} row 12: feature log_pt (from pt): log of 0.0 at element 1 (expected > 0); "
        f"{FIX_TRANSFORM}"
    )
    data = data.model_copy(update={"on_bad_row": "skip"})
    stats = fit_transforms(data, read_dataset(data, "train")).stats["log_pt"]
    logs = np.log(np.concatenate([s[:, 0] for i, s in enumerate(sets) if i != 12]).astype(float))
    assert stats["count"] == len(logs)
    assert stats["mean"] == pytest.approx(logs.mean(), rel=1e-12)
    assert stats["std"] == pytest.approx(logs.std(), rel=1e-12)
