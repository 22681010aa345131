"""Fine-tuning: model.init_from, train.freeze, train.lr_multipliers (issue 16 item 4).

Real parts throughout: a local Ray, in-process and 2-worker DDP fits, a real MLflow sqlite
store with a registered source model. Exact expectations: loaded weights equal the source's
bit for bit, frozen weights are unchanged bit for bit after training, each param group's lr
is the peak lr times its multiplier times the schedule's factor.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from mlflow.tracking import MlflowClient
from sets_data import job_dict, make_data

from setpipe.data import fit_transforms, read_dataset
from setpipe.errors import RegistryError, TrainError
from setpipe.models import build_model
from setpipe.pipeline import resolve_init, run
from setpipe.spec import job_from_dict
from setpipe.spec.models import JobSpec
from setpipe.tracking.pyfunc import load_set_model
from setpipe.train import finetune, fit
from setpipe.train.checkpoint import latest_local_checkpoint
from setpipe.train.optim import build_optimizer, build_scheduler, lr_factor
from setpipe.train.trainer import TrainOutcome

ENCODER = [
    "encoder.phi.0.weight", "encoder.phi.0.bias", "encoder.phi.2.weight", "encoder.phi.2.bias",
    "encoder.rho.0.weight", "encoder.rho.0.bias",
]  # fmt: skip
HEAD = ["head.net.0.weight", "head.net.0.bias", "head.net.2.weight", "head.net.2.bias"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_data(tmp_path_factory.mktemp("sets"), train=240, validation=80, test=80)


@pytest.fixture(autouse=True)
def _no_tracking_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def make_job(data: Path, workdir: Path, name: str, model: dict | None = None, **train) -> JobSpec:
    raw = job_dict(data, workdir, **{"epochs": 2, **train})
    raw["name"] = name
    raw["model"].update(model or {})
    return job_from_dict(raw)


def run_fit(job: JobSpec, workdir: Path, name: str) -> tuple[TrainOutcome, Path | None]:
    """fit() as pipeline.train does it: init_from resolved on the driver into the run dir."""
    datasets = {s: read_dataset(job.data, s) for s in ("train", "validation", "test")}
    transforms = fit_transforms(job.data, datasets["train"])
    storage = workdir / "ray_results"
    init = resolve_init(job, storage / name)
    outcome = fit(
        job,
        storage_path=storage,
        run_name=name,
        transforms=transforms,
        datasets=datasets,
        progress=False,
        init=(init.weights, init.resolved) if init else None,
    )
    return outcome, Path(init.weights) if init else None


@pytest.fixture(scope="module")
def source(ray_local, data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A trained source model and the checkpoint directory it left."""
    workdir = tmp_path_factory.mktemp("source")
    outcome, _ = run_fit(make_job(data, workdir, "src"), workdir, "src")
    checkpoint = latest_local_checkpoint(workdir / "ray_results" / "src" / "local_checkpoints")
    assert checkpoint is not None
    return {"outcome": outcome, "checkpoint": checkpoint, "workdir": workdir}


def initial_model(job: JobSpec, weights: Path | None) -> torch.nn.Module:
    model = build_model(job.model, num_features=2, num_context=0)
    finetune.prepare(model, job, str(weights) if weights else None)
    return model


def test_init_from_checkpoint_dir_loads_its_weights_exactly(
    source: dict[str, Any], data: Path, workdir: Path
) -> None:
    job = make_job(data, workdir, "ft", {"init_from": str(source["checkpoint"])})
    init = resolve_init(job, workdir / "ray_results" / "ft")
    assert init is not None and init.resolved == str(source["checkpoint"].resolve())
    saved = torch.load(source["checkpoint"] / "weights.pt", weights_only=True)
    model = initial_model(job, Path(init.weights))
    state = model.state_dict()
    assert list(state) == ENCODER + HEAD
    for name in state:
        assert torch.equal(state[name], saved[name]), name
    # A fresh model with the same seed differs: the weights really came from the source.
    fresh = build_model(job.model, num_features=2, num_context=0).state_dict()
    assert not torch.equal(fresh["encoder.phi.0.weight"], saved["encoder.phi.0.weight"])


def test_frozen_encoder_is_bit_exact_after_training_head_moves(
    source: dict[str, Any], data: Path, workdir: Path
) -> None:
    weights = source["checkpoint"] / "weights.pt"
    job = make_job(
        data, workdir, "frozen", {"init_from": str(weights)}, freeze=["encoder"], epochs=2
    )
    out, _ = run_fit(job, workdir, "frozen")
    saved = torch.load(weights, weights_only=True)
    for name in ENCODER:
        assert torch.equal(out.state_dict[name], saved[name]), name
    for name in HEAD:
        assert not torch.equal(out.state_dict[name], saved[name]), name


def test_two_workers_ddp_with_frozen_layer_and_init(
    source: dict[str, Any], data: Path, workdir: Path
) -> None:
    weights = source["checkpoint"] / "weights.pt"
    job = make_job(
        data,
        workdir,
        "ddp",
        {"init_from": {"uri": str(weights), "parts": ["encoder"]}},
        freeze=["encoder.phi"],
        lr_multipliers={"encoder.rho": 0.5},
        workers=2,
        epochs=1,
    )
    out, _ = run_fit(job, workdir, "ddp")
    saved = torch.load(weights, weights_only=True)
    for name in ENCODER[:4]:  # encoder.phi: frozen
        assert torch.equal(out.state_dict[name], saved[name]), name
    for name in ENCODER[4:] + HEAD:  # rho loaded then trained; head fresh then trained
        assert not torch.equal(out.state_dict[name], saved[name]), name


def test_lr_multiplier_groups_follow_the_schedule_and_weight_decay(
    data: Path, workdir: Path
) -> None:
    job = make_job(
        data,
        workdir,
        "lr",
        freeze=["head.net.2"],
        lr_multipliers={"encoder": 0.1, "encoder.rho": 0.5, "head.net.0": 2.0},
        optimizer={"lr": 0.01, "weight_decay": 0.05},
        lr_schedule={"kind": "linear", "warmup_steps": 2},
    )
    model = build_model(job.model, num_features=2, num_context=0)
    groups = finetune.prepare(model, job, None)
    optimizer = build_optimizer(groups, job.train.optimizer)
    scheduler = build_scheduler(optimizer, 10, job.train.lr_schedule)
    ids = {id(p): n for n, p in model.named_parameters()}
    by_multiplier = {
        g["lr_multiplier"]: sorted(ids[id(p)] for p in g["params"]) for g in optimizer.param_groups
    }
    assert (
        by_multiplier
        == {
            0.1: sorted(ENCODER[:4]),  # encoder.phi: the encoder's 0.1
            0.5: sorted(ENCODER[4:]),  # encoder.rho: the longer prefix wins
            2.0: sorted(HEAD[:2]),
        }
    )  # head.net.2 is frozen: in no group
    assert all(g["weight_decay"] == 0.05 for g in optimizer.param_groups)
    for step in range(6):
        factor = lr_factor(step, 10, job.train.lr_schedule)
        for group in optimizer.param_groups:
            assert group["lr"] == pytest.approx(0.01 * group["lr_multiplier"] * factor, rel=1e-12)
        optimizer.step()
        scheduler.step()


def test_shape_mismatch_names_the_parameter_and_both_shapes(
    source: dict[str, Any], data: Path, workdir: Path
) -> None:
    wide = {"encoder": {"kind": "deepsets", "phi": [32, 16], "rho": [16]}}
    job = make_job(data, workdir, "wide", {**wide, "init_from": str(source["checkpoint"])})
    with pytest.raises(TrainError) as err:
        run_fit(job, workdir, "wide")
    assert str(err.value).startswith(
        "model.init_from: the shapes differ (encoder.phi.0.weight: (16, 2) in "
        f"{source['checkpoint'].resolve()}, (32, 2) in this model; encoder.phi.0.bias: (16,) "
        "in "
    )
    assert "load only the parts that match with model.init_from.parts" in str(err.value)
    # Loading only the head, which matches, works.
    head_only = {**wide, "init_from": {"uri": str(source["checkpoint"]), "parts": ["head"]}}
    job = make_job(data, workdir, "wide2", head_only)
    init = resolve_init(job, workdir / "ray_results" / "wide2")
    assert init is not None
    model = initial_model(job, Path(init.weights))
    saved = torch.load(source["checkpoint"] / "weights.pt", weights_only=True)
    assert all(torch.equal(model.state_dict()[n], saved[n]) for n in HEAD)


def test_unknown_parts_are_named(source: dict[str, Any], data: Path, workdir: Path) -> None:
    job = make_job(data, workdir, "typo", freeze=["encodr"])
    expected = (
        r"^train.freeze: 'encodr' \(did you mean 'encoder'\?\) matches no parameter of the "
        r"model; expected a part \(encoder, head\)"
    )
    with pytest.raises(TrainError, match=expected):
        finetune.check(job, None)
    job = make_job(data, workdir, "all", freeze=["encoder", "head"])
    with pytest.raises(TrainError, match="freezes every parameter of the model"):
        finetune.check(job, None)
    job = make_job(data, workdir, "idle", freeze=["head"], lr_multipliers={"head.net": 0.1})
    with pytest.raises(TrainError, match=r"'head.net' holds only frozen parameters"):
        finetune.check(job, None)
    parts = {"init_from": {"uri": str(source["checkpoint"]), "parts": ["decoder"]}}
    job = make_job(data, workdir, "parts", parts)
    init = resolve_init(job, workdir / "ray_results" / "parts")
    assert init is not None
    with pytest.raises(TrainError, match=r"^model.init_from.parts: 'decoder'"):
        finetune.check(job, init.weights)


def test_bad_uris_say_what_exists(data: Path, workdir: Path, tmp_path: Path) -> None:
    job = make_job(data, workdir, "bad", {"init_from": "models:/nope@champion"})
    with pytest.raises(RegistryError, match=r"models:/nope@champion: no registered model 'nope'"):
        resolve_init(job, workdir / "r")
    job = make_job(data, workdir, "bad", {"init_from": "models:/a/b/c"})
    with pytest.raises(RegistryError, match=r"'models:/a/b/c' is not a registered model URI"):
        resolve_init(job, workdir / "r")
    job = make_job(data, workdir, "bad", {"init_from": str(tmp_path / "none")})
    with pytest.raises(TrainError, match=r"none does not exist; expected a setpipe checkpoint"):
        resolve_init(job, workdir / "r")
    (tmp_path / "empty").mkdir()
    job = make_job(data, workdir, "bad", {"init_from": str(tmp_path / "empty")})
    with pytest.raises(TrainError, match=r"empty is a directory without weights.pt"):
        resolve_init(job, workdir / "r")


def test_resume_continues_from_its_own_checkpoint_not_init_from(
    source: dict[str, Any], data: Path, workdir: Path
) -> None:
    job = make_job(data, workdir, "resume", {"init_from": str(source["checkpoint"])})
    first, _ = run_fit(job, workdir, "resume")
    # The same Ray run again: it finds its own checkpoint of the last epoch.
    again, _ = run_fit(job, workdir, "resume")
    assert again.start_epoch == 2
    saved = torch.load(source["checkpoint"] / "weights.pt", weights_only=True)
    for name, value in first.state_dict.items():
        assert torch.equal(again.state_dict[name], value), name
        assert not torch.equal(value, saved[name]), name


def test_registry_uri_loads_exactly_and_the_version_records_its_source(
    ray_local, data: Path, workdir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # One migrated store per work dir (as the pipeline defaults to: sqlite in it).
    store = workdir / "mlflow.db"
    uri = f"sqlite:///{store.resolve()}"
    client = MlflowClient(uri, registry_uri=uri)
    first = run(make_job(data, workdir, "qsrc", epochs=1), progress=False)
    src_weights = load_set_model("models:/qsrc@champion", uri).model.state_dict()

    job = make_job(
        data,
        workdir,
        "qft",
        {"init_from": {"uri": "models:/qsrc@champion", "parts": ["encoder"]}},
        freeze=["encoder"],
        epochs=1,
    )
    init = resolve_init(job, workdir / "probe")
    assert init is not None and init.resolved == "models:/qsrc/1"
    model = initial_model(job, Path(init.weights))
    for name in ENCODER:
        assert torch.equal(model.state_dict()[name], src_weights[name]), name

    summary = run(job, progress=False)
    tuned = load_set_model(summary.model_uri, uri).model.state_dict()
    for name in ENCODER:
        assert torch.equal(tuned[name], src_weights[name]), name
    assert not torch.equal(tuned[HEAD[0]], src_weights[HEAD[0]])
    expected = {
        "setpipe.init_from": "models:/qsrc/1",
        "setpipe.init_from.uri": "models:/qsrc@champion",
        "setpipe.init_from.run_id": first.run_id,
        "setpipe.init_from.parts": '["encoder"]',
    }
    run_tags = client.get_run(summary.run_id).data.tags
    version_tags = client.get_model_version("qft", summary.version).tags
    assert {k: run_tags[k] for k in expected} == expected
    assert {k: version_tags[k] for k in expected} == expected
    # MLflow's lineage: the source's logged model is a model input of the run.
    source_model = first.artifacts["logged_model"].removeprefix("models:/")
    assert source_model.startswith("m-")
    inputs = client.get_run(summary.run_id).inputs
    assert [m.model_id for m in inputs.model_inputs] == [source_model]


def test_pythia_jet_pt_window_is_checked() -> None:
    from setpipe.data.datagen.pythia import check_jet_pt, pt_hat_window
    from setpipe.errors import DataError

    assert pt_hat_window((500.0, 550.0)) == pytest.approx((450.0, 650.0), rel=1e-12)
    assert check_jet_pt((300.0, 350.0)) == (300.0, 350.0)
    with pytest.raises(DataError, match=r"--jet-pt 350,300: expected MIN,MAX in GeV"):
        check_jet_pt((350.0, 300.0))
    with pytest.raises(DataError, match=r"0 < MIN < MAX"):
        check_jet_pt((0.0, 300.0))
    from argparse import ArgumentTypeError

    from setpipe.commands.datagen import _jet_pt_window

    assert _jet_pt_window("800,850") == (800.0, 850.0)
    with pytest.raises(ArgumentTypeError, match=r"'850,800': expected 0 < MIN < MAX"):
        _jet_pt_window("850,800")
    with pytest.raises(ArgumentTypeError, match=r"'800': expected MIN,MAX jet pT in GeV"):
        _jet_pt_window("800")
