"""The model registry: every run registers a version; the champion alias moves only on merit.

Aliases, not stages (stages are deprecated in MLflow 3): each registered version gets
``challenger``; ``job.tracking.alias`` (``champion``) moves to it only when its
validation metric beats the current champion's per ``job.promotion`` (strictly), or
when there is no champion yet. The gated figure is kept on each model version (tag
``setpipe.metric``), so the comparison is always between the numbers the gate saw.
The decision and both figures are logged on the run (``gate.*`` metrics and tags).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from mlflow.entities import Metric, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from setpipe.errors import RegistryError
from setpipe.spec.models import JobSpec
from setpipe.tracking.store import tracking_uri_for

CHALLENGER = "challenger"
METRIC_TAG = "setpipe.metric"
METRIC_NAME_TAG = "setpipe.metric_name"


@dataclass(frozen=True)
class GateDecision:
    name: str
    """Registered model name."""
    version: str
    """The version this run registered (it holds ``challenger``)."""
    challenger_metric: float | None
    """This run's validation figure on the promotion metric (None: no validation)."""
    champion_version_before: str | None
    """Who held the champion alias before the gate (None: nobody)."""
    champion_metric_before: float | None
    """Their figure (None: nobody, or no figure recorded)."""
    moved: bool
    """Whether the champion alias now points at ``version``."""
    reason: str
    """One sentence saying why, with both figures."""


def _recorded_metric(client: MlflowClient, name: str, version: str) -> float | None:
    mv = client.get_model_version(name, version)
    text = mv.tags.get(METRIC_TAG)
    if text is None:
        return None
    value = float(text)
    return value if math.isfinite(value) else None


def decide(
    challenger: float | None,
    champion_version: str | None,
    champion: float | None,
    metric: str,
    direction: str,
) -> tuple[bool, str]:
    """Whether the alias moves, and why (pure: the whole gate rule in one place)."""
    if challenger is not None and not math.isfinite(challenger):
        return False, f"{metric} is {challenger}: a model without a finite figure is never promoted"
    if champion_version is None:
        return True, "no champion yet"
    if challenger is None:
        return False, f"no {metric} for this version (no validation data)"
    if champion is None:
        return True, f"champion version {champion_version} has no recorded {metric}"
    better = challenger > champion if direction == "maximize" else challenger < champion
    relation = ">" if challenger > champion else ("<" if challenger < champion else "=")
    verdict = "beats" if better else "does not beat"
    return better, (
        f"{metric} {challenger:.6g} {relation} {champion:.6g} of version {champion_version}: "
        f"{verdict} the champion ({direction})"
    )


def register_and_gate(
    job: JobSpec, run_id: str, logged_model_uri: str, metric_value: float | None
) -> GateDecision:
    """Register ``logged_model_uri`` as a new version of ``job.model_name``, alias it
    ``challenger``, and move ``job.tracking.alias`` to it if it beats the champion."""
    tracking_uri = tracking_uri_for(job)
    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    name, alias = job.model_name, job.tracking.alias
    metric, direction = job.promotion
    if metric_value is not None and not math.isfinite(metric_value):
        # A NaN figure once read as "no figure", and with no champion yet a NaN model won.
        raise RegistryError(
            f"{job.name}: the gate metric {metric} is {metric_value}, not a number; the model "
            "is not registered (non-finite outputs or loss: check the learning rate and the data)"
        )
    try:
        client.create_registered_model(name)
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    model_id = (
        logged_model_uri.removeprefix("models:/")
        if logged_model_uri.startswith("models:/m-")
        else None
    )
    tags = {METRIC_NAME_TAG: metric, "setpipe.job": job.name}
    if metric_value is not None:
        tags[METRIC_TAG] = repr(float(metric_value))
    # The store's files, not the models:/m-... URI: given that, MLflow's sqlalchemy registry
    # looks the logged model up through the process's *global* tracking URI (a TODO in
    # its code), which is not this job's store.
    source = (
        client.get_logged_model(model_id).artifact_location
        if model_id is not None
        else logged_model_uri
    )
    mv = client.create_model_version(
        name, source=source, run_id=run_id, tags=tags, model_id=model_id
    )
    version = str(mv.version)
    client.set_registered_model_alias(name, CHALLENGER, version)

    try:
        champion_version: str | None = str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        champion_version = None
    champion_metric = (
        _recorded_metric(client, name, champion_version) if champion_version is not None else None
    )
    moved, reason = decide(metric_value, champion_version, champion_metric, metric, direction)
    if moved:
        client.set_registered_model_alias(name, alias, version)

    decision = GateDecision(
        name=name,
        version=version,
        challenger_metric=metric_value,
        champion_version_before=champion_version,
        champion_metric_before=champion_metric,
        moved=moved,
        reason=reason,
    )
    _log_decision(client, run_id, job, decision)
    return decision


def _log_decision(client: MlflowClient, run_id: str, job: JobSpec, d: GateDecision) -> None:
    """``gate.*`` on the run: the figures as metrics, the who and why as tags."""
    metric, direction = job.promotion
    metrics = {"gate.moved": 1.0 if d.moved else 0.0}
    if d.challenger_metric is not None:
        metrics["gate.challenger_metric"] = d.challenger_metric
    if d.champion_metric_before is not None:
        metrics["gate.champion_metric_before"] = d.champion_metric_before
    tags = {
        "gate.model": d.name,
        "gate.version": d.version,
        "gate.alias": job.tracking.alias,
        "gate.metric": metric,
        "gate.direction": direction,
        "gate.moved": "true" if d.moved else "false",
        "gate.champion_version_before": d.champion_version_before or "none",
        "gate.reason": d.reason,
    }
    now = int(time.time() * 1000)
    client.log_batch(
        run_id,
        metrics=[Metric(k, v, now, 0) for k, v in metrics.items()],
        tags=[RunTag(k, v) for k, v in tags.items()],
    )


__all__ = [
    "CHALLENGER",
    "GateDecision",
    "decide",
    "register_and_gate",
]
