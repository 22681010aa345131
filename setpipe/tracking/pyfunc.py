"""The registered model: an MLflow pyfunc over a SetModel, and the one way to load it.

A logged model holds three artifacts and no pickled object:

- ``weights.pt``       the SetModel's state_dict (read with ``torch.load(weights_only=True)``)
- ``job.yaml``         the resolved job (it rebuilds the model: ``build_model(job.model, ...)``)
- ``transforms.json``  the fitted feature transforms (``FittedTransforms.to_dict()``)

The python model is logged *from code* (``_pyfunc_model.py`` names ``SetPyfunc``), with
the setpipe package shipped as ``code_paths``: setpipe is not on PyPI, and a cloudpickled
instance would tie the model to this interpreter's module layout. Loading therefore
runs setpipe's code, not bytes from a pickle.

Request (``mlflow models serve``: ``{"inputs": [SET, ...]}``; Python: a list of SETs)::

    SET = {"features": {"part_pt": [...], "part_eta": [...], ...},   # raw element features
           "context": {"jet_pt": 512.0}}                              # the job's context, if any

``features`` has one equal-length list per RAW element feature of the job
(``data.elements.feature_names``: the parallel columns, the struct fields, or the vector
components ``<column>_0 ...``), so one request shape covers all three layouts. Pydantic
checks the types (``SetInput``), then ``setpipe.serve.schema.sets_to_batch`` checks the
names and lengths exactly as the Ray Serve endpoint does.

Per set out: classify ``{"probabilities": [...], "label": int}``, regress ``{"value": x}``,
rank ``{"scores": [...]}`` (one per element, in input order).
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import version as installed_version
from itertools import pairwise
from pathlib import Path
from typing import Any

import mlflow
import torch
import yaml
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from pydantic import BaseModel, ConfigDict, Field

from setpipe.data.batch import SetBatch
from setpipe.errors import ModelError
from setpipe.spec import dump_job, job_from_dict
from setpipe.spec.models import JobSpec

ARTIFACTS = {"weights": "weights.pt", "job": "job.yaml", "transforms": "transforms.json"}
"""Artifact key -> file name inside the logged model."""
MODEL_CODE = Path(__file__).with_name("_pyfunc_model.py")
PINNED = ("torch", "mlflow", "pyarrow", "pydantic", "numpy", "pyyaml")
"""Requirements pinned at the versions this model was trained with (setpipe is code_paths)."""


class SetInput(BaseModel):
    """One set: raw element feature name -> one number per element; context name -> number."""

    model_config = ConfigDict(extra="forbid")

    features: dict[str, list[float]] = Field(
        description="Every raw element feature of the job: equal-length lists of finite numbers."
    )
    context: dict[str, float] = Field(
        default_factory=dict, description="The job's set-level context features (none: {})."
    )


# --------------------------------------------------------------------------- the loaded model


def task_outputs(task: str, out: torch.Tensor, offsets: torch.Tensor) -> list[dict[str, Any]]:
    """Per-set dicts from ``SetModel.predict_chunked`` outputs (classify logits, values, scores)."""
    if task == "classify":
        probabilities = torch.softmax(out.double(), dim=1)
        labels = probabilities.argmax(dim=1).tolist()
        return [
            {"probabilities": p, "label": int(c)}
            for p, c in zip(probabilities.tolist(), labels, strict=True)
        ]
    if task == "regress":
        return [{"value": float(v)} for v in out.double().reshape(-1).tolist()]
    scores = out.double().reshape(-1).tolist()
    bounds = offsets.tolist()
    return [{"scores": scores[lo:hi]} for lo, hi in pairwise(bounds)]


@dataclass
class LoadedSetModel:
    """A logged model in memory: the job, the SetModel (eval), the fitted transforms."""

    job: JobSpec
    model: torch.nn.Module
    """The SetModel, in eval mode, on CPU (move it with ``.model.to(device)``)."""
    transforms: Any
    """The FittedTransforms: raw element features -> the model's features."""
    name: str | None = None
    """Registered model name (None when loaded from a logged-model or local URI)."""
    version: str | None = None
    """Registered version (None when loaded from a logged-model or local URI)."""

    @classmethod
    def from_files(
        cls,
        weights: str | Path,
        job_yaml: str | Path,
        transforms_json: str | Path,
        name: str | None = None,
        version: str | None = None,
    ) -> LoadedSetModel:
        from setpipe.data.transforms import FittedTransforms
        from setpipe.models import build_model

        job = job_from_dict(yaml.safe_load(Path(job_yaml).read_text()), source=str(job_yaml))
        transforms = FittedTransforms.from_dict(json.loads(Path(transforms_json).read_text()))
        model = build_model(job.model, len(job.data.feature_names), len(job.data.context))
        state = torch.load(weights, map_location="cpu", weights_only=True)
        try:
            model.load_state_dict(state)
        except RuntimeError as err:
            raise ModelError(
                f"{weights}: the weights do not fit the model job.yaml describes ({err}); "
                "the artifacts come from different runs"
            ) from None
        model.eval()
        return cls(job=job, model=model, transforms=transforms, name=name, version=version)

    def predict_batch(self, raw: SetBatch) -> list[dict[str, Any]]:
        """Per-set outputs for a batch of RAW element features (transforms applied here).

        ``predict_chunked`` keeps memory constant in the set size (MBC encoders).
        """
        batch = self.transforms.apply(raw)
        device = next(self.model.parameters()).device
        with torch.inference_mode():
            out = self.model.predict_chunked(batch.to(device), self.job.train.chunk_size)
        return task_outputs(self.job.model.task, out.cpu(), batch.offsets.cpu())

    def predict_sets(self, sets: list[SetInput] | list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Per-set outputs for sets in the request format (the pyfunc's predict)."""
        from setpipe.serve.schema import Limits, sets_to_batch

        items = [s.model_dump() if isinstance(s, BaseModel) else s for s in sets]
        # The pyfunc is also a batch API: the server's per-request limits do not apply.
        unlimited = Limits(max_sets=2**62, max_elements_per_set=2**62, max_body_bytes=2**62)
        return self.predict_batch(sets_to_batch(items, self.job, unlimited))


class SetPyfunc(mlflow.pyfunc.PythonModel):
    """The MLflow python model: ``list[SetInput]`` in (validated by MLflow), dicts out."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        paths = context.artifacts
        self.loaded = LoadedSetModel.from_files(paths["weights"], paths["job"], paths["transforms"])

    def predict(
        self, model_input: list[SetInput], params: dict[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        return self.loaded.predict_sets(model_input)


# --------------------------------------------------------------------------- log and load


@contextmanager
def _scoped_tracking_uri(uri: str) -> Iterator[None]:
    """MLflow's global tracking URI set to ``uri`` for the block, then put back as it was.

    ``mlflow.set_tracking_uri`` also writes $MLFLOW_TRACKING_URI (and ``None`` deletes it),
    so the variable is restored too: a user's setting must survive a logged model.
    """
    from mlflow.tracking._tracking_service import utils

    before, env = utils._tracking_uri, os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before)  # type: ignore[arg-type]
        if env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = env


def pip_requirements() -> list[str]:
    """``name==version`` of what the model needs, as installed here (setpipe: code_paths)."""
    return [f"{name}=={installed_version(name)}" for name in PINNED]


def log_pyfunc(
    run_id: str,
    tracking_uri: str,
    job: JobSpec,
    state_dict: dict[str, torch.Tensor],
    transforms: dict[str, Any],
    input_example: list[dict[str, Any]] | None,
) -> str:
    """Log the model under ``run_id``; returns its URI ``models:/m-...``."""
    from mlflow.models import Model

    client = MlflowClient(tracking_uri)
    # Created here, in the run's experiment: Model.log alone would put it in the process's
    # active experiment (the Default one, artifacts under ./mlruns of the cwd).
    logged = client.create_logged_model(
        experiment_id=client.get_run(run_id).info.experiment_id,
        name="model",
        source_run_id=run_id,
    )
    with tempfile.TemporaryDirectory(prefix="setpipe-model-") as tmp:
        files = {key: Path(tmp) / name for key, name in ARTIFACTS.items()}
        torch.save({k: v.detach().cpu() for k, v in state_dict.items()}, files["weights"])
        files["job"].write_text(dump_job(job))
        files["transforms"].write_text(json.dumps(transforms))
        with warnings.catch_warnings():
            # The output hint dict[str, Any] is deliberate (three task shapes); MLflow warns
            # that it cannot validate Any.
            warnings.filterwarnings("ignore", message=".*Any type hint.*")
            # Model.log, not mlflow.pyfunc.log_model: only it takes run_id and model_id, and
            # the run is not the process's active run (there is none). It reads the tracking
            # URI globally, hence the scoped override.
            with _scoped_tracking_uri(tracking_uri):
                info = Model.log(
                    artifact_path=None,  # deprecated in MLflow 3 in favour of name
                    name="model",
                    flavor=mlflow.pyfunc,
                    run_id=run_id,
                    model_id=logged.model_id,
                    python_model=str(MODEL_CODE),
                    artifacts={key: str(path) for key, path in files.items()},
                    code_paths=[str(Path(__file__).resolve().parents[1])],  # the setpipe package
                    pip_requirements=pip_requirements(),
                    input_example=input_example,
                )
    return info.model_uri


def load_set_model(model_uri: str, tracking_uri: str | None = None) -> LoadedSetModel:
    """Load ``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, ``models:/m-...`` or a local dir.

    The same loader and ``predict_batch`` that the pyfunc's ``predict`` runs. An alias
    is resolved once, so ``.version`` is the version actually loaded.
    """
    from mlflow.artifacts import download_artifacts
    from mlflow.models import Model

    from setpipe.tracking.registry import parse_registry_uri, resolve

    name = version = None
    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    with tempfile.TemporaryDirectory(prefix="setpipe-load-") as tmp:
        try:
            # Where the files are, asked of this store explicitly: download_artifacts would
            # look models:/ URIs up in the process's default store.
            if parse_registry_uri(model_uri) is not None:
                name, version = resolve(model_uri, tracking_uri)
                source = client.get_model_version_download_uri(name, version)
            elif model_uri.startswith("models:/"):
                source = client.get_logged_model(
                    model_uri.removeprefix("models:/")
                ).artifact_location
            else:
                source = model_uri
            local = download_artifacts(
                artifact_uri=source,
                dst_path=tmp,
                tracking_uri=tracking_uri,
                registry_uri=tracking_uri,
            )
        except (MlflowException, OSError) as err:
            raise ModelError(
                f"cannot load model {model_uri!r} from {tracking_uri or 'the default store'}: "
                f"{err}; give models:/NAME@ALIAS, models:/NAME/VERSION, models:/m-<id> or a "
                "model directory"
            ) from None
        conf = Model.load(local).flavors.get("python_function", {})
        logged = conf.get("artifacts", {})
        missing = [key for key in ARTIFACTS if key not in logged]
        if missing:
            raise ModelError(
                f"{model_uri}: not a setpipe model (no {', '.join(missing)} artifact); it was not "
                "logged by setpipe"
            )
        paths = {key: Path(local) / logged[key]["path"] for key in ARTIFACTS}
        return LoadedSetModel.from_files(
            paths["weights"], paths["job"], paths["transforms"], name=name, version=version
        )


__all__ = ["LoadedSetModel", "SetInput", "SetPyfunc", "load_set_model", "task_outputs"]
