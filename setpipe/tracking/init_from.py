"""model.init_from resolved once, on the driver, and recorded where the model's history is read.

``resolve_init_from`` turns ``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` (in the job's
store) or a checkpoint path into a state-dict file inside the run's directory, which every
Ray Train worker reads (a cluster's workdir is shared). An alias is resolved to the version
it points at now, and that version is what is recorded: the resolution is kept beside the
file (``init_from.json``), so an attempt that resumes the run keeps the version it started
from even if the alias has moved since.

``record_init_from`` puts it on the MLflow run: tags ``setpipe.init_from`` (the resolved
``models:/NAME/VERSION`` or the absolute path), ``setpipe.init_from.uri`` (as the job gives
it), ``setpipe.init_from.run_id`` and ``.parts``, and the source's logged model as a model
input of the run (MLflow's lineage: the run page lists it under its inputs). The registry
copies the ``setpipe.init_from*`` tags onto the version it registers.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from mlflow.entities import LoggedModelInput
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from setpipe.errors import RegistryError
from setpipe.spec.models import InitFromSpec
from setpipe.tracking.pyfunc import load_set_model
from setpipe.tracking.store import REGISTERED_URI_FORMS, parse_registry_uri
from setpipe.train.finetune import read_weights

WEIGHTS_FILE = "init_from.pt"
RECORD_FILE = "init_from.json"
TAG = "setpipe.init_from"


@dataclass(frozen=True)
class InitSource:
    """Where a run's initial weights come from, resolved."""

    uri: str
    """As the job gives it (model.init_from.uri)."""
    resolved: str
    """models:/NAME/VERSION for a registered model, else the absolute path read."""
    weights: str
    """The local state-dict file the workers load."""
    parts: list[str] | None = None
    run_id: str | None = None
    """The MLflow run that trained the source version (registered models only)."""
    model_id: str | None = None
    """The source version's logged model (m-...), the run's model input."""

    def tags(self) -> dict[str, str]:
        tags = {TAG: self.resolved, f"{TAG}.uri": self.uri}
        if self.run_id:
            tags[f"{TAG}.run_id"] = self.run_id
        if self.parts is not None:
            tags[f"{TAG}.parts"] = json.dumps(self.parts)
        return tags


def resolve_init_from(spec: InitFromSpec, tracking_uri: str, run_dir: str | Path) -> InitSource:
    """``spec`` as a state-dict file under ``run_dir`` (kept there: a second call for the same
    URI, e.g. when the run resumes, returns what the first resolved)."""
    run_dir = Path(run_dir)
    record = run_dir / RECORD_FILE
    if record.is_file():
        kept = InitSource(**json.loads(record.read_text()))
        if kept.uri == spec.uri and Path(kept.weights).is_file():
            return InitSource(**(asdict(kept) | {"parts": spec.parts}))
    run_dir.mkdir(parents=True, exist_ok=True)
    weights = run_dir / WEIGHTS_FILE
    if spec.uri.startswith("models:/"):
        source = _from_registry(spec, tracking_uri, weights)
    else:
        path = Path(spec.uri).expanduser().resolve()
        read_weights(path)  # a missing or unreadable source fails here, on the driver
        shutil.copyfile(path / "weights.pt" if path.is_dir() else path, weights)
        source = InitSource(spec.uri, str(path), str(weights), spec.parts)
    record.write_text(json.dumps(asdict(source), indent=1))
    return source


def _from_registry(spec: InitFromSpec, tracking_uri: str, weights: Path) -> InitSource:
    if parse_registry_uri(spec.uri) is None:
        raise RegistryError(
            f"model.init_from: {spec.uri!r} is not a registered model URI; expected "
            f"{REGISTERED_URI_FORMS}, or a setpipe checkpoint directory or weights file"
        )
    loaded = load_set_model(spec.uri, tracking_uri)  # names what exists when it is wrong
    name, version = loaded.name, loaded.version
    torch.save(loaded.model.state_dict(), weights)
    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    mv = client.get_model_version(str(name), str(version))
    model_id = getattr(mv, "model_id", None)
    if not model_id and mv.run_id:
        # The sqlite registry may not keep a version's model id; setpipe tags its run with it.
        logged = client.get_run(mv.run_id).data.tags.get("setpipe.model_uri", "")
        model_id = logged.removeprefix("models:/") if logged.startswith("models:/m-") else None
    return InitSource(
        uri=spec.uri,
        resolved=f"models:/{name}/{version}",
        weights=str(weights),
        parts=spec.parts,
        run_id=mv.run_id or None,
        model_id=model_id or None,
    )


def record_init_from(run_id: str, tracking_uri: str, source: InitSource) -> None:
    """The source on the MLflow run: its tags, and its logged model as a model input."""
    client = MlflowClient(tracking_uri)
    for key, value in source.tags().items():
        client.set_tag(run_id, key, value)
    if source.model_id:
        try:
            client.log_inputs(run_id, models=[LoggedModelInput(source.model_id)])
        except MlflowException as err:  # lineage is a record, not a reason to stop training
            client.set_tag(run_id, f"{TAG}.lineage_error", str(err)[:500])


__all__ = ["InitSource", "record_init_from", "resolve_init_from"]
