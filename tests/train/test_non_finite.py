"""Training never promotes garbage: a NaN loss stops the run at once; non-finite outputs on
validation fail it; neither registers a model. Real local Ray, real MLflow sqlite store."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient
from sets_data import job_dict, make_data

from setpipe.errors import TrainError
from setpipe.pipeline import run
from setpipe.spec import job_from_dict
from setpipe.train.hooks import FAIL_ENV


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = make_data(tmp_path_factory.mktemp("sets"), train=200, validation=60, test=60)
    # A validation set whose values are finite in float32 but overflow the encoder's sums.
    huge = root / "validation_huge"
    huge.mkdir()
    table = pq.read_table(root / "validation" / "part-0.parquet")
    x = table.column("x").to_pylist()
    x[3] = [3e38] * len(x[3])
    table = table.set_column(0, "x", pa.array(x, pa.list_(pa.float32())))
    pq.write_table(table, huge / "part-0.parquet")
    return root


@pytest.fixture(autouse=True)
def _no_tracking_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv(FAIL_ENV, raising=False)


def _outcome(workdir: Path) -> tuple[list[str], list[object]]:
    """(statuses of the job's MLflow runs, its registered versions)."""
    client = MlflowClient(f"sqlite:///{workdir.resolve() / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    return [r.info.status for r in runs], client.search_model_versions("name = 'sets'")


def test_a_nan_loss_stops_the_run_at_once_and_registers_nothing(
    ray_local, data: Path, workdir: Path
) -> None:
    """Before: lr 1e30 trained 2 epochs on NaN, val_auc 0.45 from NaN probabilities, and the
    NaN model became champion ("no champion yet"), predicting [nan, nan]."""
    job = job_from_dict(
        job_dict(data, workdir, epochs=2, optimizer={"name": "sgd", "lr": 1e30}, max_failures=0)
    )
    with pytest.raises(TrainError) as err:
        run(job, progress=False)
    message = str(err.value)
    assert message.startswith("sets: the training loss is nan in epoch 1, batch ")
    assert message.endswith(
        "training stopped. Likely cause: the batch's features are finite, so the weights "
        "diverged: lower train.optimizer.lr (now 1e+30) or set train.grad_clip"
    )
    statuses, versions = _outcome(workdir)
    assert (statuses, versions) == (["FAILED"], [])


def test_non_finite_validation_outputs_fail_the_run(ray_local, data: Path, workdir: Path) -> None:
    raw = job_dict(data, workdir, epochs=1)
    raw["data"]["validation"] = str(data / "validation_huge")
    with pytest.raises(TrainError) as err:
        run(job_from_dict(raw), progress=False)
    assert str(err.value) == (
        "sets: the model's outputs on the validation split are not finite (NaN or infinite) "
        "for 1 of 30 sets; the model is not registered. Likely cause: weights that diverged "
        "(lower train.optimizer.lr or set train.grad_clip) or features a transform made "
        "non-finite (check the data with `setpipe inspect`)"
    )
    statuses, versions = _outcome(workdir)
    assert (statuses, versions) == (["FAILED"], [])
