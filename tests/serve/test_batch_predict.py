"""`setpipe predict`: Ray Data batch inference keeps every row and its keys."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from serve_helpers import Registered

from setpipe.cli import main
from setpipe.data.batching import budget_bounds
from setpipe.errors import ServeError


def test_predict_slices_by_the_training_rule() -> None:
    """batch_predict cuts row ranges with the trainer's own budget_bounds (one rule)."""

    def slices(sizes: np.ndarray, budget: int) -> list[tuple[int, int]]:
        return list(itertools.pairwise(budget_bounds(sizes, budget).tolist()))

    sizes = np.array([3, 4, 2, 10, 1, 1])
    assert slices(sizes, 8) == [(0, 2), (2, 3), (3, 4), (4, 6)]
    assert slices(np.array([], dtype=np.int64), 8) == []


def test_predict_writes_one_row_per_input_row_with_keys(
    registered: Registered, tmp_path: Path
) -> None:
    import mlflow

    from setpipe.tracking.store import resolve

    out = tmp_path / "predictions"
    source = registered.data_dir / "test"
    uri = f"models:/{registered.name}@champion"
    rc = main(
        [
            "predict", uri, "--input", str(source), "--output", str(out),
            "--tracking-uri", registered.tracking_uri, "--batch-elements", "300",
            "--keep", "jet_pt",
        ]
    )  # fmt: skip
    assert rc == 0
    inputs = pq.read_table(source).to_pandas().set_index("event_id")
    got = pq.read_table(out).to_pandas()
    assert list(got.columns) == ["event_id", "jet_pt", "prob_0", "prob_1", "label"]
    assert len(got) == len(inputs) == 100
    assert sorted(got["event_id"]) == sorted(inputs.index)
    got = got.set_index("event_id").loc[inputs.index]
    np.testing.assert_array_equal(got["jet_pt"], inputs["jet_pt"])
    np.testing.assert_array_equal(got["label"], (got["prob_1"] > got["prob_0"]).astype(int))

    _, version = resolve(uri, registered.tracking_uri)
    mlflow.set_tracking_uri(registered.tracking_uri)
    model = mlflow.pyfunc.load_model(f"models:/{registered.name}/{version}")
    features = ["part_pt", "part_eta", "part_phi", "part_pid"]
    rows = inputs.reset_index().to_dict("records")
    sets = [
        {
            "features": {f: list(map(float, r[f])) for f in features},
            "context": {"jet_pt": r["jet_pt"]},
        }
        for r in rows
    ]
    expected = np.asarray([_as_dict(o)["probabilities"] for o in model.predict(sets)])
    np.testing.assert_allclose(got[["prob_0", "prob_1"]].to_numpy(), expected, rtol=1e-5, atol=1e-6)


def _as_dict(output: object) -> dict:
    return output if isinstance(output, dict) else output.model_dump()  # type: ignore[attr-defined]


def test_predict_refuses_a_non_empty_output(registered: Registered, tmp_path: Path) -> None:
    from setpipe.serve.batch_predict import predict_dataset

    (tmp_path / "old.parquet").write_bytes(b"")
    with pytest.raises(ServeError) as err:
        predict_dataset(
            f"models:/{registered.name}@champion",
            str(registered.data_dir / "test"),
            tmp_path,
            tracking_uri=registered.tracking_uri,
        )
    assert str(err.value) == f"--output {tmp_path}: not empty; give a new or empty directory"
