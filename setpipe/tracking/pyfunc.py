"""The registered model: an MLflow pyfunc over a SetModel, and the one way to load it.

A logged model holds three artifacts and no pickled object:

- ``weights.pt``       the SetModel's state_dict (read with ``torch.load(weights_only=True)``)
- ``job.yaml``         the resolved job (it rebuilds the model: ``build_model(job.model, ...)``)
- ``transforms.json``  the fitted feature transforms (``FittedTransforms.to_dict()``)

The python model is logged *from code* (``_pyfunc_model.py`` names ``SetPyfunc``), with
the setpipe package shipped as ``code_paths``: setpipe is not on PyPI, and a cloudpickled
instance would tie the model to this interpreter's module layout. Loading therefore
runs setpipe's code, not bytes from a pickle.

Request (``mlflow models serve``: ``{"inputs": [SET, ...]}``; Python: a list of SETs): the
format of ``setpipe.data.request``, which the Ray Serve endpoint speaks too. Pydantic checks
the types (``SetInput``), then ``sets_to_batch`` checks the names and lengths exactly as the
endpoint does.

Per set out: classify ``{"probabilities": [...], "label": int}``, regress ``{"value": x}``,
rank ``{"scores": [...]}`` (one per element, in input order). Several heads
(``model.heads``): ``{"<head>": <that head's output as above>, ...}`` in model.heads order.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version as installed_version
from itertools import pairwise
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
import yaml
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from pydantic import BaseModel

from setpipe.data.batch import SetBatch
from setpipe.data.request import BadRequest, Limits, SetInput, sets_to_batch
from setpipe.errors import ModelError
from setpipe.spec import dump_job, job_from_dict
from setpipe.spec.models import JobSpec
from setpipe.tracking.store import REGISTERED_URI_FORMS, parse_registry_uri, resolve

ARTIFACTS = {"weights": "weights.pt", "job": "job.yaml", "transforms": "transforms.json"}
"""Artifact key -> file name inside the logged model."""
MODEL_CODE = Path(__file__).with_name("_pyfunc_model.py")
PINNED = ("torch", "mlflow", "pyarrow", "pydantic", "numpy", "pyyaml")
"""Requirements pinned at the versions this model was trained with (setpipe is code_paths):
every third-party module the model's code imports comes from one of them or their own
dependencies (tests/serve/test_mlflow_serve.py records the imports and checks)."""


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
    if task == "pretrain_masked":  # a pretrained encoder serves its set embedding
        return [{"embedding": e} for e in out.double().tolist()]
    if task == "regress":
        return [{"value": float(v)} for v in out.double().reshape(-1).tolist()]
    scores = out.double().reshape(-1).tolist()
    bounds = offsets.tolist()
    return [{"scores": scores[lo:hi]} for lo, hi in pairwise(bounds)]


def heads_outputs(
    job: JobSpec, out: torch.Tensor | dict[str, torch.Tensor], offsets: torch.Tensor
) -> list[dict[str, Any]]:
    """Per-set dicts for the job's model: ``task_outputs`` for one head; for several, each
    set's ``{head name: that head's task_outputs}``."""
    if job.model.heads is None:
        assert isinstance(out, torch.Tensor) and job.model.task is not None
        return task_outputs(job.model.task, out, offsets)
    assert isinstance(out, dict)
    per_head = {h.name: task_outputs(h.task, out[h.name], offsets) for h in job.model.heads}
    return [
        {name: outputs[i] for name, outputs in per_head.items()} for i in range(len(offsets) - 1)
    ]


class NonFiniteOutput(ModelError):
    """The model's output for some sets is NaN or infinite: never written, never served."""

    def __init__(self, sets: list[int], message: str) -> None:
        super().__init__(message)
        self.sets = sets


def non_finite_sets(outputs: list[dict[str, Any]]) -> list[int]:
    """Indices of the per-set outputs holding a NaN or an infinity."""

    def finite(value: Any) -> bool:
        if isinstance(value, float):
            return math.isfinite(value)
        if isinstance(value, list):
            return all(finite(v) for v in value)
        if isinstance(value, dict):  # one head's output, with several heads
            return all(finite(v) for v in value.values())
        return True

    return [i for i, out in enumerate(outputs) if not all(finite(v) for v in out.values())]


NON_FINITE_HINT = (
    "a feature outside what the model was trained on (e.g. a value whose transform is not "
    "finite, like log of 0), or weights that diverged in training"
)


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
        model = build_model(
            job.model, len(job.data.feature_names), len(job.data.context), transforms=transforms
        )
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

    def check_inputs(self, raw: SetBatch) -> None:
        """BadRequest (422) naming the sets whose features a transform of the job makes
        non-finite (e.g. log of a pT <= 0): the model's output for them would be NaN."""
        problem = self.transforms.nonfinite_rows(raw)
        if problem is None:
            return
        bad = [int(i) for i in np.flatnonzero(problem.rows)]
        shown = "; ".join(f"sets[{i}]: {problem.describe(i)}" for i in bad[:5])
        more = f"; and {len(bad) - 5} more sets" if len(bad) > 5 else ""
        raise BadRequest(422, shown + more)

    def predict_batch(
        self, raw: SetBatch, *, allow_non_finite: bool = False
    ) -> list[dict[str, Any]]:
        """Per-set outputs for a batch of RAW element features (transforms applied here).

        ``predict_chunked`` keeps memory constant in the set size (MBC encoders). A set whose
        output is not finite raises NonFiniteOutput naming it, unless ``allow_non_finite``
        (the server checks each request's own sets after batching several together).
        """
        batch = self.transforms.apply(raw)
        device = next(self.model.parameters()).device
        with torch.inference_mode():
            # A pretraining model's own outputs are reconstruction errors: serve the embedding.
            embed = self.job.model.task == "pretrain_masked"
            run = self.model.embed_chunked if embed else self.model.predict_chunked
            out = run(batch.to(device), self.job.train.chunk_size)
        out = {n: o.cpu() for n, o in out.items()} if isinstance(out, dict) else out.cpu()
        outputs = heads_outputs(self.job, out, batch.offsets.cpu())
        bad = [] if allow_non_finite else non_finite_sets(outputs)
        if bad:
            shown = ", ".join(map(str, bad[:10])) + (
                f" and {len(bad) - 10} more" if len(bad) > 10 else ""
            )
            raise NonFiniteOutput(
                bad,
                f"the model's output is not finite (NaN or infinite) for set(s) {shown} of "
                f"{len(outputs)}; nothing was returned for them. Likely cause: {NON_FINITE_HINT}",
            )
        return outputs

    def predict_sets(self, sets: list[SetInput] | list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Per-set outputs for sets in the request format (the pyfunc's predict)."""
        items = [s.model_dump() if isinstance(s, BaseModel) else s for s in sets]
        # The pyfunc is also a batch API: the server's per-request limits do not apply.
        unlimited = Limits(max_sets=2**62, max_elements_per_set=2**62, max_body_bytes=2**62)
        raw = sets_to_batch(items, self.job, unlimited)
        self.check_inputs(raw)
        return self.predict_batch(raw)


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


def _without_any_hint_warning(show: Callable[..., None]) -> Callable[..., None]:
    """``warnings.showwarning`` that drops MLflow's "Any type hint" warning."""

    def showwarning(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: Any = None,
        line: str | None = None,
    ) -> None:
        if "Any type hint is inferred as AnyType" not in str(message):
            show(message, category, filename, lineno, file, line)

    return showwarning


def pip_requirements() -> list[str]:
    """``name==version`` of what the model needs, as installed here (setpipe: code_paths).

    The public version only: a local label such as torch's ``+cpu`` names a build that
    PyPI does not have, so ``mlflow models serve``'s virtualenv could not install it; the
    CPU or CUDA build of that version is the deployer's choice, as it is setpipe's (README).
    """
    from packaging.version import Version

    return [f"{name}=={Version(installed_version(name)).public}" for name in PINNED]


def log_pyfunc(
    run_id: str,
    tracking_uri: str,
    job: JobSpec,
    state_dict: dict[str, torch.Tensor],
    transforms: dict[str, Any],
    input_example: list[dict[str, Any]] | None,
) -> str:
    """Log the model under ``run_id`` in the store at ``tracking_uri``; returns ``models:/m-...``.

    Every step goes to this store explicitly, through public MLflow API: a logged model
    in the run's experiment, the pyfunc saved into a temporary directory, its files
    uploaded to the logged model, the model recorded as the run's output, the model
    marked READY. (``Model.log`` does the same steps but finds the store through the
    process-global tracking URI, which setpipe would have to swap for the call.)
    """
    from mlflow.entities import LoggedModelOutput
    from mlflow.models import Model

    client = MlflowClient(tracking_uri)
    # In the run's experiment: left to MLflow it would be the process's active experiment
    # (the Default one, artifacts under ./mlruns of the cwd).
    logged = client.create_logged_model(
        experiment_id=client.get_run(run_id).info.experiment_id,
        name="model",
        source_run_id=run_id,
    )
    try:
        with tempfile.TemporaryDirectory(prefix="setpipe-model-") as tmp:
            files = {key: Path(tmp) / name for key, name in ARTIFACTS.items()}
            torch.save({k: v.detach().cpu() for k, v in state_dict.items()}, files["weights"])
            files["job"].write_text(dump_job(job))
            files["transforms"].write_text(json.dumps(transforms))
            local = Path(tmp) / "model"
            with warnings.catch_warnings():
                # The output hint dict[str, Any] is deliberate (three task shapes); MLflow
                # warns that it cannot validate Any, from inside a helper that resets the
                # filters to "once" (filter_user_warnings_once), where no filter of ours
                # holds: the warning is dropped where it would be shown instead.
                warnings.showwarning = _without_any_hint_warning(warnings.showwarning)
                mlflow.pyfunc.save_model(
                    path=str(local),
                    # What Model.log writes into MLmodel: where the model lives, and whose.
                    mlflow_model=Model(
                        artifact_path=logged.artifact_location,
                        model_uuid=logged.model_id,
                        run_id=run_id,
                        model_id=logged.model_id,
                    ),
                    python_model=str(MODEL_CODE),
                    artifacts={key: str(path) for key, path in files.items()},
                    code_paths=[str(Path(__file__).resolve().parents[1])],  # the setpipe package
                    pip_requirements=pip_requirements(),
                    input_example=input_example,
                )
            # Saving runs the model on the input example; its imports leave bytecode behind.
            for cache in list(local.rglob("__pycache__")):
                shutil.rmtree(cache, ignore_errors=True)
            client.log_model_artifacts(logged.model_id, str(local))
        client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=0)])
    except BaseException:
        client.finalize_logged_model(logged.model_id, "FAILED")
        raise
    client.finalize_logged_model(logged.model_id, "READY")
    return f"models:/{logged.model_id}"


def load_set_model(model_uri: str, tracking_uri: str | None = None) -> LoadedSetModel:
    """Load ``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, ``models:/m-...`` or a local dir.

    The same loader and ``predict_batch`` that the pyfunc's ``predict`` runs. An alias
    is resolved once, so ``.version`` is the version actually loaded.
    """
    from mlflow.artifacts import download_artifacts
    from mlflow.models import Model

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
                f"{err}; give {REGISTERED_URI_FORMS}, models:/m-<id> or a model directory"
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


__all__ = [
    "LoadedSetModel",
    "SetInput",
    "SetPyfunc",
    "heads_outputs",
    "load_set_model",
    "task_outputs",
]
