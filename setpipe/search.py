"""Hyperparameter search on Ray Tune: ``setpipe tune JOB.yaml`` runs the job's ``search:`` block.

Each trial is the job with the space's values set through the override path
(``setpipe.spec.space.trial_job``) and trains with the same loop as ``setpipe run``
(``pipeline.train``: its own Ray Train workers; one for a job of workers: 0, whose in-process
mode cannot run inside a Tune trial),
reporting every epoch's metrics to Tune so ASHA can stop poor trials at its rungs. Each
trial is an MLflow run nested under one parent run (``mlflow.parentRunId``) keyed by its
Tune trial id; the parent records the space and the best trial's figures, and only the best
trial's model goes through the registry gate, as ``setpipe run``'s would.

A search killed mid-way continues with ``resume=True``: Tune restores the experiment
(``Tuner.restore``: finished trials are kept, unfinished ones restarted), a restarted trial
finds its nested run by trial id and reopens it, and its Ray Train run resumes from its last
checkpoint, so no trial ever gets a second MLflow run.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from setpipe import pipeline
from setpipe.errors import TrainError
from setpipe.spec.models import JobSpec
from setpipe.spec.space import trial_job

TRIAL_CPU = 0.1
"""CPU a trial's own process reserves: it only drives its Ray Train workers, and Tune refuses
an empty resource request."""
TRIAL_TAG = "setpipe.search.trial"
PARENT_TAG = "mlflow.parentRunId"
ROLE_TAG = "setpipe.search"
OUTCOME = "outcome.json"


@dataclass
class SearchSummary:
    parent_run_id: str
    best_trial: str
    best_config: dict[str, Any]
    best_run_id: str
    metrics: dict[str, float]
    """The best trial's chosen-epoch val_* and test_* figures."""
    decision: Any
    """setpipe.tracking.registry.GateDecision of the best trial's model."""
    trials: int
    stopped_early: list[str]
    """Trial ids the scheduler stopped before their last epoch."""
    failed: list[str]
    wall_s: float
    resumed: bool


def _state_path(job: JobSpec) -> Path:
    return Path(job.workdir).resolve() / "runs" / job.name / "search.json"


def _read_state(job: JobSpec) -> dict[str, Any] | None:
    path = _state_path(job)
    return json.loads(path.read_text()) if path.exists() else None


def _write_state(job: JobSpec, **state: Any) -> None:
    path = _state_path(job)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=1) + "\n")
    tmp.replace(path)


def _param_space(job: JobSpec) -> dict[str, Any]:
    from ray import tune

    assert job.search is not None
    space: dict[str, Any] = {}
    for path, choices in job.search.space.items():
        if isinstance(choices, list):
            space[path] = tune.choice(choices)
            continue
        ((kind, (low, high)),) = choices.items()
        if kind.endswith("randint"):
            low, high = int(low), int(high)
        space[path] = getattr(tune, kind)(low, high)
    return space


def trial_resources(job: JobSpec, cluster_cpus: float) -> tuple[dict[str, Any], str | None]:
    """(overrides that size each trial's Ray Train workers, a note or None).

    Every running trial holds its workers' CPUs for its whole run, and each trial's Ray Data
    read tasks need a free CPU (``setpipe.train.resources.DATA_CPUS``) to run at all. Sized
    one trial at a time (``worker_resources``), ``concurrency`` trials of 1 worker x 1 CPU on
    2 CPUs leave 0.8 CPU: no read task is ever scheduled, and every trial waits forever
    ("Cluster resources are not enough to run any task from ReadReadSetParquet"). So the
    CPUs left after the trials' own processes and Ray Data are shared out among all the
    workers of all concurrent trials, 1 CPU each at most; a job's own
    ``resources_per_worker.CPU`` that does not fit is refused, naming the numbers.
    """
    from setpipe.train.resources import DATA_CPUS, MIN_WORKER_CPUS

    assert job.search is not None
    if cluster_cpus <= 0:  # no CPU yet (an autoscaling cluster's head): left to Ray
        return {}, None
    running = min(job.search.concurrency, job.search.trials)
    workers = max(1, job.train.workers)  # workers: 0 trains on one worker in a trial
    free = cluster_cpus - DATA_CPUS - running * TRIAL_CPU
    asked = job.train.resources_per_worker.get("CPU")

    def fits(per_worker: float) -> int:
        """The concurrency at which every trial's workers get ``per_worker`` CPUs each."""
        return int((cluster_cpus - DATA_CPUS) // (workers * per_worker + TRIAL_CPU))

    if asked is not None:
        if running * workers * asked <= free:
            return {}, None
        fit = fits(asked)
        raise TrainError(
            f"{job.name}: search.concurrency {running} x train.workers {workers} x "
            f"train.resources_per_worker.CPU {asked:g} = {running * workers * asked:g} CPUs, "
            f"but the cluster's {cluster_cpus:g} CPUs leave {max(free, 0):g} after "
            f"{running} x {TRIAL_CPU:g} for the trials and {DATA_CPUS:g} for reading data: "
            "the trials would wait forever for each other. "
            + (f"Set search.concurrency to {fit}" if fit else "Use fewer train.workers")
            + f", or resources_per_worker.CPU to {max(free, 0) / (running * workers):.3g}, "
            "or add CPUs"
        )
    share = min(1.0, free / (running * workers))
    if share < MIN_WORKER_CPUS:
        fit = fits(MIN_WORKER_CPUS)
        raise TrainError(
            f"{job.name}: search.concurrency {running} x train.workers {workers} on a cluster "
            f"of {cluster_cpus:g} CPUs: after {running} x {TRIAL_CPU:g} for the trials and "
            f"{DATA_CPUS:g} for reading data each worker would get {max(share, 0):.2g} CPU "
            f"(at least {MIN_WORKER_CPUS:g} is needed). "
            + (f"Set search.concurrency to {fit} or less" if fit else "Use fewer workers")
            + ", or add CPUs"
        )
    if share >= 1.0:
        return {}, None
    return {"train.resources_per_worker": {"CPU": round(share, 4)}}, (
        f"search.concurrency {running} x train.workers {workers} on {cluster_cpus:g} CPUs: "
        f"each trial's worker takes {share:.3g} CPU so that {DATA_CPUS:g} stays free for "
        "reading data (set train.resources_per_worker.CPU to choose)"
    )


def _nested_run(job: JobSpec, parent: str, trial: str) -> str:
    """The trial's MLflow run: the one already tagged with its trial id, else a new one."""
    from mlflow.tracking import MlflowClient

    from setpipe.tracking.mlflow_run import open_run
    from setpipe.tracking.store import tracking_uri_for

    client = MlflowClient(tracking_uri_for(job))
    experiment = client.get_run(parent).info.experiment_id
    found = client.search_runs(
        [experiment],
        filter_string=f"tags.`{PARENT_TAG}` = '{parent}' and tags.`{TRIAL_TAG}` = '{trial}'",
    )
    if found:
        return open_run(job, run_id=found[0].info.run_id)
    return open_run(job, tags={PARENT_TAG: parent, TRIAL_TAG: trial, ROLE_TAG: "trial"})


def _record_placement_group(path: str, epoch: int, metrics: dict[str, float]) -> None:
    """``on_epoch`` on rank 0 of a trial's Train run: the id of the workers' placement group
    (every epoch: a restarted worker group has a new one)."""
    import ray.util

    group = ray.util.get_current_placement_group()
    if group is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(group.id.hex())


def _group_file(outcomes: Path, trial_id: str) -> Path:
    return outcomes / f"{trial_id}.placement_group"


def _train_groups_remover(outcomes: Path) -> Any:
    """A Tune callback that removes a trial's Train workers' placement group when it ends.

    ASHA stops a trial by ending its process, and with it the Ray Train controller the trial
    started; the workers' placement group outlives them (a placement group lives as long as
    the job that made it, and Train V2's own cleaner asks the dashboard's state API, which
    a local Ray without a dashboard, or a host running two Rays, cannot answer). Each
    stopped trial then kept its workers' CPUs until the search ended, and the next trials
    waited forever for them. Rank 0 records the group's id every epoch, before the epoch's
    report reaches Tune, so the group is known when ASHA stops the trial; removing it ends
    the workers (a trial that finished by itself has removed its group already).
    """
    import ray
    from ray import tune
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    def remove(trial: Any) -> None:
        path = _group_file(outcomes, trial.trial_id)
        if not path.exists():
            return
        group = PlacementGroup(ray.PlacementGroupID(bytes.fromhex(path.read_text())))
        with contextlib.suppress(Exception):  # removed already: the Train run ended
            remove_placement_group(group)

    class RemoveTrainGroups(tune.Callback):
        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any):
            remove(trial)

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any):
            remove(trial)

    return RemoveTrainGroups()


def _counting_report_callback() -> Any:
    """Ray Train's TuneReportCallback that counts what it passed on to Tune."""
    from ray.tune.integration.ray_train import TuneReportCallback

    class Counting(TuneReportCallback):
        count = 0

        def after_report(self, run_context: Any, metrics: Any, checkpoint: Any) -> None:
            self.count += 1
            super().after_report(run_context, metrics, checkpoint)

    return Counting()


def _trial(
    config: dict[str, Any],
    *,
    job: JobSpec,
    parent: str,
    outcomes: str,
    resources: dict[str, Any],
) -> None:
    """One Tune trial: the job with ``config``'s values, trained, logged and its model logged."""
    from ray import tune

    from setpipe.tracking.mlflow_run import close_run, log_epoch, log_model
    from setpipe.tracking.store import tracking_uri_for

    trial_id = tune.get_context().get_trial_id()
    path = Path(outcomes) / f"{trial_id}.json"
    if path.exists():
        # A search killed between this trial's end and Tune noting it: the trial restarts
        # on --resume, but its run, model and outcome are all written. Report its figures
        # again (Tune needs the metric in a result) and train nothing twice.
        tune.report(json.loads(path.read_text())["metrics"])
        return
    group_file = _group_file(Path(outcomes), trial_id)  # see _train_groups_remover
    reports = _counting_report_callback()
    # Train V2's in-process mode (workers: 0) cannot run inside a Tune trial: its
    # ray.train calls resolve to Tune's session there and fail. A trial trains on one
    # Ray Train worker instead, whose epochs reach Tune through Ray Train's callback.
    workers = {"train.workers": 1} if job.train.workers == 0 else {}
    # No worker-group restarts inside a trial: a restart after the search removed a stopped
    # trial's placement group would make a new group that nothing removes.
    no_restarts = {"train.max_failures": 0}
    candidate = trial_job(job, config | workers | resources | no_restarts)
    run_id = _nested_run(candidate, parent, trial_id)
    try:
        trained = pipeline.train(
            candidate,
            progress=False,
            run_id=run_id,
            ray_run=f"{job.name}-{trial_id}",
            on_epoch=partial(_record_placement_group, str(group_file)),
            callbacks=[reports],
        )
        outcome = trained.outcome
        uri = tracking_uri_for(candidate)
        if outcome.test_metrics:
            log_epoch(run_id, uri, outcome.history[-1]["epoch"], outcome.test_metrics)
        logged = log_model(
            run_id,
            candidate,
            outcome.state_dict,
            trained.inputs.transforms,
            outcome.history,
            trained.inputs.example,
            validation=outcome.val_predictions,
        )
    except BaseException:
        close_run(run_id, "FAILED")
        raise
    close_run(run_id, "FINISHED")
    predictions = outcome.val_predictions
    record = {
        "run_id": run_id,
        "model_uri": logged,
        "config": config,
        "metrics": outcome.val_metrics | outcome.test_metrics,
        "epochs": len(outcome.history),
        "val_predictions": [p.tolist() for p in predictions] if predictions else None,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))
    if not reports.count:
        # Ray Train restored a run that had already finished every epoch (killed after its
        # last report): nothing reached Tune in this attempt, whose result needs the metric.
        tune.report(record["metrics"])


def tune(
    job: JobSpec, *, address: str | None = None, progress: bool = True, resume: bool = False
) -> SearchSummary:
    """Run ``job.search`` on Ray Tune; register the best trial's model through the gate."""
    import numpy as np
    import ray
    from mlflow.tracking import MlflowClient
    from ray import tune as ray_tune
    from ray.tune.schedulers import ASHAScheduler

    from setpipe.tracking.mlflow_run import close_run, log_epoch, open_run
    from setpipe.tracking.registry import register_and_gate
    from setpipe.tracking.store import tracking_uri_for

    search = job.search
    if search is None:
        raise TrainError(
            f"{job.name}: the job has no search block; add search: {{space: ..., trials: N}} "
            "(see the README's Hyperparameter search) or use setpipe run"
        )
    started = time.monotonic()
    state = _read_state(job)
    pipeline.connect(address or job.cluster.address)
    # Before the parent run opens: a search that cannot fit the cluster leaves no run behind.
    resources, note = trial_resources(job, ray.cluster_resources().get("CPU", 0.0))
    if note and progress:
        print(f"note: {note}", flush=True)
    if resume:
        if state is None or state["status"] == "FINISHED":
            last = f"its last search {state['status']}" if state else "it has no search yet"
            raise TrainError(
                f"--resume: job {job.name!r} has no search to resume ({last}, "
                f"{_state_path(job)}); run setpipe tune without --resume to start one"
            )
        parent = open_run(job, run_id=state["parent_run_id"])
    else:
        parent = open_run(job, tags={ROLE_TAG: "parent"})
    storage = Path(job.workdir).resolve() / "ray_results"
    name = f"{job.name}-search-{parent[:8]}"
    outcomes = Path(job.workdir).resolve() / "runs" / job.name / name
    _write_state(job, parent_run_id=parent, tune_run=name, status="RUNNING")
    uri = tracking_uri_for(job)
    client = MlflowClient(uri)
    metric, direction = job.search_objective
    mode = "max" if direction == "maximize" else "min"
    trainable = ray_tune.with_parameters(
        _trial, job=job, parent=parent, outcomes=str(outcomes), resources=resources
    )
    trainable = ray_tune.with_resources(trainable, {"cpu": TRIAL_CPU})
    try:
        if resume and ray_tune.Tuner.can_restore(str(storage / name)):
            tuner = ray_tune.Tuner.restore(
                str(storage / name), trainable=trainable, resume_errored=True
            )
        else:
            client.log_dict(parent, search.model_dump(mode="json"), "search/space.json")
            scheduler = None
            if search.scheduler is not None:
                scheduler = ASHAScheduler(
                    time_attr="training_iteration",
                    # ASHA stops every trial that reaches max_t; one past the last epoch
                    # lets a trial that earned its last epoch finish (and log its model).
                    max_t=job.train.epochs + 1,
                    grace_period=search.scheduler.grace_epochs,
                    reduction_factor=search.scheduler.reduction_factor,
                )
            from ray.tune.search import BasicVariantGenerator

            tuner = ray_tune.Tuner(
                trainable,
                param_space=_param_space(job),
                tune_config=ray_tune.TuneConfig(
                    metric=metric,
                    mode=mode,
                    num_samples=search.trials,
                    scheduler=scheduler,
                    search_alg=BasicVariantGenerator(
                        random_state=search.seed, max_concurrent=search.concurrency
                    ),
                ),
                run_config=ray_tune.RunConfig(
                    name=name,
                    storage_path=str(storage),
                    verbose=1 if progress else 0,
                    callbacks=[_train_groups_remover(outcomes)],
                ),
            )
        results = tuner.fit()
        finished: dict[str, dict[str, Any]] = {}
        stopped, failed = [], []
        for result in results:
            trial_id = _trial_id(result)
            path = outcomes / f"{trial_id}.json"
            if path.exists():
                finished[trial_id] = json.loads(path.read_text())
            elif result.error is not None:
                failed.append(trial_id)
            else:
                stopped.append(trial_id)
        _close_stopped(client, parent, stopped, failed)
        if not finished:
            raise TrainError(
                f"{job.name}: no trial of the search finished ({len(failed)} failed, "
                f"{len(stopped)} stopped); see {storage / name}"
            )
        sign = 1.0 if mode == "max" else -1.0
        # Ties (two trials at val_auc 1.0) go to the lowest trial id: the first one sampled.
        best_id = max(
            sorted(finished),
            key=lambda t: sign * finished[t]["metrics"].get(metric, -sign * np.inf),
        )
        best = finished[best_id]
        best_job = trial_job(job, best["config"])
        gate_metric, _ = best_job.promotion
        predictions = best["val_predictions"]
        decision = register_and_gate(
            best_job,
            best["run_id"],
            best["model_uri"],
            best["metrics"].get(gate_metric),
            tuple(np.asarray(p) for p in predictions) if predictions else None,
        )
        log_epoch(parent, uri, best["epochs"] - 1, best["metrics"])
        client.log_dict(parent, best["config"], "search/best_config.json")
        for key, value in {
            "setpipe.search.best_trial": best_id,
            "setpipe.search.best_run": best["run_id"],
            "setpipe.search.trials": str(len(results)),
            "setpipe.search.stopped_early": str(len(stopped)),
        }.items():
            client.set_tag(parent, key, value)
    except BaseException as err:
        status = "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED"
        close_run(parent, status)
        _write_state(job, parent_run_id=parent, tune_run=name, status=status)
        raise
    close_run(parent, "FINISHED")
    _write_state(job, parent_run_id=parent, tune_run=name, status="FINISHED")
    return SearchSummary(
        parent_run_id=parent,
        best_trial=best_id,
        best_config=best["config"],
        best_run_id=best["run_id"],
        metrics=best["metrics"],
        decision=decision,
        trials=len(results),
        stopped_early=sorted(stopped),
        failed=sorted(failed),
        wall_s=time.monotonic() - started,
        resumed=resume,
    )


def _trial_id(result: Any) -> str:
    """The Tune trial id of a result: its auto-filled metric, else from its directory name
    (``<trainable>_<trial id>_<index>_<config>_<time>``, for a trial that never reported)."""
    found = (result.metrics or {}).get("trial_id")
    if found:
        return str(found)
    name = Path(result.path).name.removeprefix("_trial_")
    return "_".join(name.split("_")[:2])


def _close_stopped(client: Any, parent: str, stopped: list[str], failed: list[str]) -> None:
    """Nested runs of trials the scheduler stopped (or that failed) end KILLED, not RUNNING
    (nor FAILED: a stopped trial's workers end when its placement group is removed, and its
    training then fails)."""
    if not stopped and not failed:
        return
    experiment = client.get_run(parent).info.experiment_id
    for run in client.search_runs([experiment], filter_string=f"tags.`{PARENT_TAG}` = '{parent}'"):
        trial, status = run.data.tags.get(TRIAL_TAG), run.info.status
        if (trial in stopped and status != "FINISHED") or (trial in failed and status == "RUNNING"):
            client.set_tag(run.info.run_id, "setpipe.search.stopped", "true")
            client.set_terminated(run.info.run_id, status="KILLED")
