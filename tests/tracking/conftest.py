"""Tracking fixtures: a real MLflow sqlite store per test, tiny jobs of every task and layout.

Creating an MLflow database runs its migrations (~6 s on the CI machine), so one empty
migrated store is made per session and copied into each test's work dir: every test
still gets its own store.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from setpipe.data.batch import SetBatch
from setpipe.spec import job_from_dict
from setpipe.spec.models import JobSpec


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mlflow.tracking import MlflowClient

    db = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(f"sqlite:///{db}").search_experiments()  # creates and migrates the tables
    return db


@pytest.fixture()
def store(workdir: Path, empty_store: Path) -> Iterator[str]:
    """The tracking URI of a fresh store in ``workdir`` (what tracking_uri_for defaults to)."""
    shutil.copyfile(empty_store, workdir / "mlflow.db")
    yield f"sqlite:///{workdir.resolve() / 'mlflow.db'}"


def write_split(directory: Path, rows: dict[str, list[Any]], files: int = 2) -> Path:
    """``files`` real Parquet files under ``directory`` (lineage lists them; nothing reads)."""
    directory.mkdir(parents=True)
    table = pa.table(rows)
    for i in range(files):
        pq.write_table(table, directory / f"part-{i}.parquet")
    return directory


def make_job(workdir: Path, task: str, **tracking: Any) -> JobSpec:
    """A tiny job per task, each in a different element layout:

    classify: parallel columns + context + transforms (log, standardize, center), DeepSets;
    regress: one vector column (dim 3), UMBC; rank: one struct column, DeepSets.
    """
    data_dir = workdir.parent / "data"
    if not data_dir.exists():
        write_split(data_dir / "train", {"label": [0, 1]})
        write_split(data_dir / "validation", {"label": [0, 1]}, files=1)
    data: dict[str, Any] = {
        "train": str(data_dir / "train"),
        "validation": str(data_dir / "validation"),
    }
    if task == "classify":
        data |= {
            "elements": {"layout": "parallel", "columns": ["part_pt", "part_eta", "part_phi"]},
            "features": [
                {
                    "name": "log_pt",
                    "source": "part_pt",
                    "ops": [{"op": "log"}, {"op": "standardize"}],
                },
                {
                    "name": "eta",
                    "source": "part_eta",
                    "ops": [{"op": "center", "weight": "part_pt"}],
                },
                {"name": "phi", "source": "part_phi"},
            ],
            "context": ["jet_pt"],
            "label": "label",
        }
        model = {
            "task": "classify",
            "num_classes": 3,
            "encoder": {"kind": "deepsets", "phi": [8, 8], "rho": [8]},
        }
    elif task == "regress":
        data |= {"elements": {"layout": "vectors", "column": "points", "dim": 3}, "label": "y"}
        model = {
            "task": "regress",
            "encoder": {"kind": "umbc", "embed": [8], "slots": 2, "heads": 2, "dim": 8},
        }
    else:
        data |= {
            "elements": {"layout": "struct", "column": "passages", "fields": ["sim", "len"]},
            "element_label": "relevance",
        }
        model = {"task": "rank", "encoder": {"kind": "deepsets", "phi": [8], "rho": [8]}}
    return job_from_dict(
        {
            "name": f"t-{task}",
            "workdir": str(workdir),
            "data": data,
            "model": model | {"head": {"hidden": [8]}},
            # chunk_size 3: predictions fold every set in several chunks (MBC path)
            "train": {"epochs": 3, "chunk_size": 3, "workers": 0},
            "tracking": tracking,
        }
    )


def raw_batch(job: JobSpec, sizes: list[int], seed: int = 0) -> SetBatch:
    """Raw element features as the data layer would give them (part_pt > 0 for the log)."""
    g = torch.Generator().manual_seed(seed)
    num_features = len(job.data.elements.feature_names)
    sets = [torch.rand(n, num_features, generator=g) * 4 + 0.5 for n in sizes]
    context = (
        torch.rand(len(sizes), len(job.data.context), generator=g) * 500
        if job.data.context
        else None
    )
    return SetBatch.from_sets(sets, context=context)


def fitted(job: JobSpec, batch: SetBatch) -> Any:
    from setpipe.data.transforms import FittedTransforms, fit_on_batches

    return fit_on_batches(FittedTransforms.from_spec(job.data), [batch])


def trained_state(job: JobSpec, seed: int = 0) -> dict[str, torch.Tensor]:
    """Weights of a freshly built model (random, seeded): exact round trips need no training."""
    from setpipe.models import build_model

    torch.manual_seed(seed)
    model = build_model(job.model, len(job.data.feature_names), len(job.data.context))
    return model.state_dict()
