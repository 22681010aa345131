"""`setpipe predict`: Ray Data batch inference keeps every row and its keys."""

from __future__ import annotations

import itertools
import os
import shutil
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from serve_helpers import Registered

from setpipe.cli import main
from setpipe.data.batching import budget_bounds
from setpipe.errors import ServeError
from setpipe.tracking.store import resolve


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


def test_a_relative_output_is_resolved_on_the_driver(
    registered: Registered,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Ray's write tasks run in the workers' working directory, not the driver's: a relative
    --output used to land there while the driver counted its own empty directory and
    printed "0 predictions ... written", exit 0."""
    import ray

    worker_cwd = Path(ray.get(ray.remote(os.path.abspath).remote(".")))
    monkeypatch.chdir(tmp_path)
    assert worker_cwd != tmp_path
    name = f"predictions-{uuid.uuid4().hex[:8]}"
    try:
        rc = main(
            [
                "predict", f"models:/{registered.name}@champion",
                "--input", str(registered.data_dir / "test"), "--output", name,
                "--tracking-uri", registered.tracking_uri,
            ]
        )  # fmt: skip
        assert not (worker_cwd / name).exists()
    finally:
        shutil.rmtree(worker_cwd / name, ignore_errors=True)
    assert rc == 0
    assert pq.read_table(tmp_path / name).num_rows == 100
    # The version the alias points at now (another test of this session may have moved it).
    _, version = resolve(f"models:/{registered.name}@champion", registered.tracking_uri)
    # The last line is setpipe's (a Ray worker's log line may be forwarded before it).
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"100 predictions from {registered.name} version {version} written to {tmp_path / name}"
    )


def test_an_output_that_is_a_file_is_refused(registered: Registered, tmp_path: Path) -> None:
    from setpipe.serve.batch_predict import predict_dataset

    existing = tmp_path / "predictions.parquet"
    existing.write_bytes(b"not mine to replace")
    with pytest.raises(ServeError) as err:
        predict_dataset(
            f"models:/{registered.name}@champion",
            str(registered.data_dir / "test"),
            existing,
            tracking_uri=registered.tracking_uri,
        )
    assert str(err.value) == (
        f"--output {existing}: is a file; give a directory (new or empty) for the prediction "
        "Parquet files"
    )
    assert existing.read_bytes() == b"not mine to replace"


def test_rows_written_must_be_the_rows_predicted(tmp_path: Path) -> None:
    """What the driver finds at --output after the write is checked against what the model
    predicted: on a cluster whose workers write to their own disks they differ."""
    from setpipe.serve.batch_predict import check_written, output_location

    location = output_location(str(tmp_path))
    pq.write_table(pa.table({"label": [0, 1, 1]}), tmp_path / "part-0.parquet")
    assert check_written(location, predicted=3, read=4) == 3
    with pytest.raises(ServeError) as err:
        check_written(location, predicted=5, read=5)
    assert str(err.value) == (
        f"--output {tmp_path}: 3 prediction rows are there after writing, but the model "
        "predicted 5 (of 5 rows read): the Ray workers wrote to a disk this machine does not "
        "see. On a cluster give --output a directory every node shares, or an s3:// / gs:// "
        "URI"
    )
