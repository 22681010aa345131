"""The model registry: every run registers a version; the champion alias moves only on merit.

Aliases, not stages (stages are deprecated in MLflow 3): each registered version gets
``challenger``; ``job.tracking.alias`` (``champion``) moves to it only when its
validation metric beats the current champion's per ``job.promotion`` (strictly), or
when there is no champion yet. The gated figure is kept on each model version (tag
``setpipe.metric``), so the comparison is always between the numbers the gate saw.
The decision and both figures are logged on the run (``gate.*`` metrics and tags).

Noise-aware (``tracking.min_improvement``): each run stores its validation outputs
(class probabilities and targets, ``gate/validation_outputs.npz``); the gate loads the
champion's, checks they cover the same validation data (the runs' ``data.validation.digest``
tags and the targets), and resamples the sets with the same seeded counts for both models
(a paired bootstrap) for the σ of the difference. ``Nsigma`` then asks for a difference
above N σ, an absolute delta for one above it. Without comparable outputs (another task,
other data, a champion from before) the strict rule applies and the reason says why.
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from mlflow.entities import Metric, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from setpipe.errors import RegistryError
from setpipe.spec.models import JobSpec
from setpipe.tracking.store import tracking_uri_for
from setpipe.train import bootstrap
from setpipe.train.metrics import paired_sigmas

OUTPUTS_DIR = "gate"
OUTPUTS_FILE = "validation_outputs.npz"
"""Artifact ``gate/validation_outputs.npz`` of each run: ``probabilities`` [N, C], ``targets``."""
DIGEST_TAG = "data.validation.digest"

CHALLENGER = "challenger"
METRIC_TAG = "setpipe.metric"
METRIC_NAME_TAG = "setpipe.metric_name"
INIT_FROM_TAG = "setpipe.init_from"
"""Run tags ``setpipe.init_from*`` (``tracking.init_from``) copied onto the version."""


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
    noise: Noise | None = None
    """The bootstrap comparison with the champion (None: not made; the reason says why)."""


@dataclass(frozen=True)
class Noise:
    """The paired bootstrap of the gate metric on the validation sets both models saw."""

    sigma: float
    """σ of challenger - champion."""
    challenger_sigma: float
    champion_sigma: float
    margin: float
    """What the difference must exceed (N σ or the absolute delta)."""
    method: str
    """e.g. "paired bootstrap, 200 resamples of 2000 validation sets"."""


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
    *,
    margin: float = 0.0,
    rule: str = "",
) -> tuple[bool, str]:
    """Whether the alias moves, and why (pure: the whole gate rule in one place).

    ``margin``: how much better than the champion the challenger must be (0: strictly
    better); ``rule``: how the margin came about, said in the reason (e.g. "1sigma =
    0.0041, paired bootstrap ..."), or why none was applied ("; min_improvement ...").
    """
    if challenger is not None and not math.isfinite(challenger):
        return False, f"{metric} is {challenger}: a model without a finite figure is never promoted"
    if champion_version is None:
        return True, "no champion yet"
    if challenger is None:
        return False, f"no {metric} for this version (no validation data)"
    if champion is None:
        return True, f"champion version {champion_version} has no recorded {metric}"
    gain = challenger - champion if direction == "maximize" else champion - challenger
    better = gain > margin
    relation = ">" if challenger > champion else ("<" if challenger < champion else "=")
    verdict = "beats" if better else "does not beat"
    if rule and not rule.startswith(";"):
        needed = f" by {abs(challenger - champion):.3g}, needed more than {margin:.3g} ({rule})"
        return better, (
            f"{metric} {challenger:.6g} {relation} {champion:.6g} of version {champion_version}"
            f"{needed}: {verdict} the champion ({direction})"
        )
    return better, (
        f"{metric} {challenger:.6g} {relation} {champion:.6g} of version {champion_version}: "
        f"{verdict} the champion ({direction}){rule}"
    )


def store_outputs(client: MlflowClient, run_id: str, validation: tuple[Any, Any]) -> None:
    """``gate/validation_outputs.npz`` on the run: the validation outputs the gate resamples."""
    probabilities, targets = validation
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / OUTPUTS_FILE
        np.savez_compressed(
            path, probabilities=np.asarray(probabilities), targets=np.asarray(targets)
        )
        client.log_artifact(run_id, str(path), OUTPUTS_DIR)


def _stored_outputs(client: MlflowClient, run_id: str) -> tuple[np.ndarray, np.ndarray] | None:
    try:
        with tempfile.TemporaryDirectory() as tmp:
            local = client.download_artifacts(run_id, f"{OUTPUTS_DIR}/{OUTPUTS_FILE}", tmp)
            with np.load(local) as data:
                return data["probabilities"], data["targets"]
    except (MlflowException, OSError):
        return None


def _noise(
    client: MlflowClient,
    job: JobSpec,
    run_id: str,
    champion_version: str,
    validation: tuple[Any, Any] | None,
) -> Noise | str:
    """The bootstrap comparison with the champion, or why it cannot be made (a sentence)."""
    metric, _ = job.promotion
    name = metric.removeprefix("val_")
    if job.model.heads is not None:
        return "a job with several heads (model.heads) stores no validation outputs yet"
    if job.model.task != "classify":
        return f"the {job.model.task} task stores no validation outputs yet"
    if job.data.weight or job.data.reweight or job.model.class_weights:
        return "the validation figures are weighted and the stored outputs carry no weights yet"
    if validation is None:
        return "this run has no validation outputs"
    champion_run = client.get_model_version(job.model_name, champion_version).run_id
    if not champion_run:
        return f"champion version {champion_version} has no run"
    mine = client.get_run(run_id).data.tags.get(DIGEST_TAG)
    theirs = client.get_run(champion_run).data.tags.get(DIGEST_TAG)
    if mine and theirs and mine != theirs:
        return (
            f"the validation data differs from champion version {champion_version}'s "
            f"({DIGEST_TAG} {mine[:12]} vs {theirs[:12]})"
        )
    stored = _stored_outputs(client, champion_run)
    if stored is None:
        return f"champion version {champion_version} stored no validation outputs"
    probabilities = np.asarray(validation[0], dtype=np.float64)
    targets = np.asarray(validation[1])
    their_probabilities, their_targets = stored
    background = job.model.background_class
    sets = len(targets)
    if len(their_targets) != sets or their_probabilities.shape != probabilities.shape:
        return (
            f"the validation data differs from champion version {champion_version}'s "
            f"({sets} sets vs {len(their_targets)})"
        )
    resampled = f"{bootstrap.RESAMPLES} resamples of {sets} validation sets"
    if np.array_equal(targets, their_targets):
        sigma, mine_sigma, their_sigma = paired_sigmas(
            name, probabilities, their_probabilities, targets, background
        )
        method = f"paired bootstrap, {resampled}"
    elif np.array_equal(np.sort(targets), np.sort(their_targets)):
        # Same sets read in another order (Ray Data's): no pairing, so σ of each model on its
        # own resamples, added in quadrature (larger than the paired σ: a stricter gate).
        _, mine_sigma, _ = paired_sigmas(name, probabilities, probabilities, targets, background)
        _, their_sigma, _ = paired_sigmas(
            name, their_probabilities, their_probabilities, their_targets, background,
            seed=bootstrap.SEED + 1,
        )  # fmt: skip
        sigma = math.hypot(mine_sigma, their_sigma)
        method = f"unpaired bootstrap (the sets came in another order), {resampled}"
    else:
        return (
            f"the validation targets differ from champion version {champion_version}'s "
            f"(same count {sets}, other labels)"
        )
    if not math.isfinite(sigma):
        return f"the bootstrap σ of {metric} is undefined (one class only in resamples)"
    kind, value = job.tracking.improvement_rule or ("sigma", 0.0)
    margin = value * sigma if kind == "sigma" else value
    return Noise(sigma, mine_sigma, their_sigma, margin, method)


def register_and_gate(
    job: JobSpec,
    run_id: str,
    logged_model_uri: str,
    metric_value: float | None,
    validation: tuple[Any, Any] | None = None,
) -> GateDecision:
    """Register ``logged_model_uri`` as a new version of ``job.model_name``, alias it
    ``challenger``, and move ``job.tracking.alias`` to it if it beats the champion.

    ``validation``: (probabilities [N, C], targets [N]) of the registered weights on the
    validation split (classify); stored on the run for later gates, and compared with the
    champion's under ``tracking.min_improvement``."""
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
    # Where the weights started (model.init_from), as recorded on the run.
    run_tags = client.get_run(run_id).data.tags
    tags |= {k: v for k, v in run_tags.items() if k.startswith(INIT_FROM_TAG)}
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
    if validation is not None and job.model.task == "classify":
        store_outputs(client, run_id, validation)

    try:
        champion_version: str | None = str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        champion_version = None
    champion_metric = (
        _recorded_metric(client, name, champion_version) if champion_version is not None else None
    )
    noise: Noise | None = None
    margin, rule = 0.0, ""
    improvement = job.tracking.min_improvement
    if (
        improvement is not None
        and champion_version is not None
        and metric_value is not None
        and champion_metric is not None
    ):
        found = _noise(client, job, run_id, champion_version, validation)
        if isinstance(found, Noise):
            noise, margin = found, found.margin
            sigma_text = f"σ {found.sigma:.3g}"
            rule = f"min_improvement {improvement}, {sigma_text}, {found.method}"
        elif job.tracking.improvement_rule and job.tracking.improvement_rule[0] == "delta":
            margin = job.tracking.improvement_rule[1]
            rule = f"min_improvement {improvement}; no σ: {found}"
        else:
            rule = f"; min_improvement {improvement} not applied: {found} (strict rule)"
    moved, reason = decide(
        metric_value, champion_version, champion_metric, metric, direction, margin=margin, rule=rule
    )
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
        noise=noise,
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
    if d.noise is not None:
        metrics |= {
            "gate.sigma": d.noise.sigma,
            "gate.challenger_sigma": d.noise.challenger_sigma,
            "gate.champion_sigma": d.noise.champion_sigma,
            "gate.margin": d.noise.margin,
        }
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
    if job.tracking.min_improvement is not None:
        tags["gate.min_improvement"] = str(job.tracking.min_improvement)
        tags["gate.noise"] = d.noise.method if d.noise is not None else "none"
    now = int(time.time() * 1000)
    client.log_batch(
        run_id,
        metrics=[Metric(k, v, now, 0) for k, v in metrics.items()],
        tags=[RunTag(k, v) for k, v in tags.items()],
    )


__all__ = [
    "CHALLENGER",
    "GateDecision",
    "Noise",
    "decide",
    "register_and_gate",
    "store_outputs",
]
