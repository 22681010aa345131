"""The whole run on one page: spec → data → transforms → MLflow run → train → model → registry.

``train(job)`` is the first half (read, fit the transforms, train on Ray Train) without
MLflow: what benchmarks and experiments call. ``run(job)`` wraps it in an MLflow run, logs
the model, registers it and gates the alias. Whether a re-run of a job name resumes its
last unfinished attempt or starts a new run is ``setpipe.attempts``' rule (the same job
only; ``resume="fresh"`` never, ``resume="resume"`` insists).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from setpipe import attempts
from setpipe.spec.models import InitFromSpec, JobSpec

if TYPE_CHECKING:
    from setpipe.data.batch import SetBatch
    from setpipe.data.transforms import FittedTransforms
    from setpipe.tracking.init_from import InitSource
    from setpipe.train.trainer import TrainOutcome


@dataclass
class RunSummary:
    run_id: str
    model_uri: str
    """models:/<name>/<version> of the version this run registered."""
    version: str
    decision: Any
    """setpipe.tracking.registry.GateDecision: whether the alias moved, and why."""
    metrics: dict[str, float]
    """The chosen epoch's val_* metrics, test_* metrics, and the run's last train_* ones."""
    artifacts: dict[str, str]
    """Where things are: tracking URI, Ray run directory (checkpoints), state file."""
    resumed_from_epoch: int = 0
    prediction: dict[str, Any] = field(default_factory=dict)
    """The champion's output on the first test set (loaded back from the registry)."""
    data_fingerprint: str | None = None
    """``Inputs.data_fingerprint``: the version of the data this run read."""


@dataclass
class Inputs:
    """What training reads: the splits as Ray Datasets, the fitted transforms, an example."""

    datasets: dict[str, Any]
    """train / validation / test -> ray.data.Dataset (None where the job has no such split)."""
    transforms: FittedTransforms
    example: SetBatch
    """The first 4 sets of test (else validation, else train) in file order, raw."""
    data_fingerprint: str | None = None
    """setpipe.data.fingerprint of the files read, taken as they were listed (None: a
    source named no file, which reading reports)."""


@dataclass
class Trained:
    inputs: Inputs
    outcome: TrainOutcome
    ray_run: Path
    """The Ray run directory: checkpoints, and what a re-run under the same name resumes."""


def connect(address: str | None) -> None:
    """No address: a local Ray in this process, on 127.0.0.1 only, token auth on (its token
    file 0600); else join the cluster."""
    import ray
    import ray.data

    from setpipe._compat import init_ray

    if not ray.is_initialized():
        init_ray(address)
    # setpipe prints its own progress; Ray Data's would add a block of lines every 10 s.
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False


def _first_sets(datasets: dict[str, Any], count: int) -> Any:
    """The first ``count`` sets of the test split (else validation, else train) in file order.

    Ray Data hands blocks over as they finish unless told to keep order, so without it
    each run of a job would log a different input example and print the champion's
    prediction on a different set.
    """
    source = datasets["test"] or datasets["validation"] or datasets["train"]
    # A derived Dataset shares its parent's context: order is kept for this small read
    # only, then put back, so the split's own passes stay unordered (faster).
    options = source.context.execution_options
    kept, options.preserve_order = options.preserve_order, True
    try:
        return source.limit(count).take_batch(count, batch_format="pyarrow")
    finally:
        options.preserve_order = kept


def read_inputs(job: JobSpec, *, address: str | None = None) -> Inputs:
    """Join (or start) Ray, open the three splits, fit the transforms in one streaming pass."""
    from setpipe.data import fit_transforms, read_dataset, table_to_batch
    from setpipe.data.fingerprint import fingerprint
    from setpipe.data.reading import check_labels
    from setpipe.errors import DataError

    connect(address or job.cluster.address)
    check_labels(job.data, job.model)  # a bad label in any split stops the run here
    # Taken just before the splits are listed: a file landing in between is read but not
    # counted, so the scheduler (on_new_data) retrains once more instead of never on it.
    try:
        data_fingerprint: str | None = fingerprint(job.data)
    except DataError:
        data_fingerprint = None  # read_dataset names the empty source in its own words
    splits = ("train", "validation", "test")
    # Packed: the read tasks convert the rows; the training workers only shuffle and slice.
    datasets = {s: read_dataset(job.data, s, model=job.model, packed=True) for s in splits}
    transforms = fit_transforms(job.data, datasets["train"], model=job.model)
    example = table_to_batch(_first_sets(datasets, 4), job.data)
    return Inputs(datasets, transforms, example, data_fingerprint)


def train(
    job: JobSpec,
    *,
    address: str | None = None,
    progress: bool = True,
    inputs: Inputs | None = None,
    run_id: str | None = None,
    ray_run: str | None = None,
    init: InitSource | None = None,
    on_epoch: Any = None,
    callbacks: list[Any] | None = None,
) -> Trained:
    """Train ``job`` on Ray Train and return the outcome; nothing is registered.

    ``run_id``: the MLflow run rank 0 logs each epoch to (None: no MLflow at all).
    ``ray_run``: the Ray run name under ``<workdir>/ray_results`` (default: the job's name);
    a name that has checkpoints resumes from the latest.
    ``init``: model.init_from already resolved (None: resolved here, when the job has one).
    ``on_epoch(epoch, metrics)``: called on rank 0 after each epoch, after MLflow logging;
    ``callbacks``: Ray Train user callbacks (``setpipe.search`` reports epochs to Tune).
    """
    from functools import partial

    from setpipe.tracking.mlflow_run import log_epoch
    from setpipe.tracking.store import tracking_uri_for
    from setpipe.train import fit

    inputs = inputs or read_inputs(job, address=address)
    storage = Path(job.workdir).resolve() / "ray_results"
    name = ray_run or job.name
    init = init or resolve_init(job, storage / name)
    logger = partial(log_epoch, run_id, tracking_uri_for(job)) if run_id else None
    if on_epoch is not None:
        logger = partial(_both, logger, on_epoch)
    outcome = fit(
        job,
        # The store is resolved here, on the driver: a worker's cwd and environment differ.
        log_epoch=logger,
        storage_path=storage,
        run_name=name,
        transforms=inputs.transforms,
        datasets=inputs.datasets,
        progress=progress,
        init=(init.weights, init.resolved) if init else None,
        callbacks=callbacks,
    )
    return Trained(inputs, outcome, storage / name)


def _both(first: Any, then: Any, epoch: int, metrics: dict[str, float]) -> None:
    if first is not None:
        first(epoch, metrics)
    then(epoch, metrics)


def resolve_init(job: JobSpec, run_dir: Path) -> InitSource | None:
    """model.init_from as a weights file in ``run_dir``, resolved once (None: none)."""
    from setpipe.tracking.init_from import resolve_init_from
    from setpipe.tracking.store import tracking_uri_for

    spec = job.model.init_from
    if not isinstance(spec, InitFromSpec):
        return None
    return resolve_init_from(spec, tracking_uri_for(job), run_dir)


def run(
    job: JobSpec,
    *,
    address: str | None = None,
    progress: bool = True,
    resume: attempts.ResumeMode = "auto",
) -> RunSummary:
    """Train, track, register and gate ``job``: the whole of ``setpipe run``."""
    from setpipe.tracking.init_from import record_init_from
    from setpipe.tracking.mlflow_run import close_run, log_epoch, log_model, open_run
    from setpipe.tracking.pyfunc import load_set_model
    from setpipe.tracking.registry import register_and_gate
    from setpipe.tracking.store import tracking_uri_for

    attempt = attempts.choose(job, resume)
    inputs = read_inputs(job, address=address)
    run_id = open_run(job, run_id=attempt.run_id)
    ray_run = attempt.ray_run or f"{job.name}-{run_id[:8]}"
    attempts.record(job, run_id=run_id, ray_run=ray_run, status="RUNNING")
    if progress:
        print(f"{attempt.note}: MLflow run {run_id}, Ray run {ray_run}", flush=True)
    try:
        init = resolve_init(job, Path(job.workdir).resolve() / "ray_results" / ray_run)
        if init is not None:
            record_init_from(run_id, tracking_uri_for(job), init)
        trained = train(
            job, progress=progress, inputs=inputs, run_id=run_id, ray_run=ray_run, init=init
        )
        outcome = trained.outcome
        if outcome.test_metrics:
            log_epoch(
                run_id, tracking_uri_for(job), outcome.history[-1]["epoch"], outcome.test_metrics
            )
        logged_uri = log_model(
            run_id,
            job,
            outcome.state_dict,
            inputs.transforms,
            outcome.history,
            inputs.example,
            validation=outcome.val_predictions,
        )
        metric, _ = job.promotion
        decision = register_and_gate(
            job, run_id, logged_uri, outcome.val_metrics.get(metric), outcome.val_predictions
        )
    except BaseException as err:
        status = "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED"
        close_run(run_id, status)
        attempts.record(job, run_id=run_id, ray_run=ray_run, status=status)
        raise
    close_run(run_id, "FINISHED")
    attempts.record(job, run_id=run_id, ray_run=ray_run, status="FINISHED")

    tracking_uri = tracking_uri_for(job)
    champion = load_set_model(f"models:/{job.model_name}@{job.tracking.alias}", tracking_uri)
    last_train = {k: v for k, v in outcome.history[-1].items() if k.startswith("train_")}
    return RunSummary(
        run_id=run_id,
        model_uri=f"models:/{decision.name}/{decision.version}",
        version=str(decision.version),
        decision=decision,
        metrics=last_train | outcome.val_metrics | outcome.test_metrics,
        artifacts={
            "tracking_uri": tracking_uri,
            "ray_run": str(trained.ray_run),
            "state": str(attempts.state_path(job)),
            "logged_model": logged_uri,
        },
        resumed_from_epoch=outcome.start_epoch,
        prediction=champion.predict_batch(inputs.example.select([0]))[0],
        data_fingerprint=inputs.data_fingerprint,
    )
