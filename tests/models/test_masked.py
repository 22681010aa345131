"""Masked set modeling (model.task: pretrain_masked): masks, no leak, MBC passes, a real run."""

from __future__ import annotations

import itertools
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from setpipe.data.batch import SetBatch
from setpipe.models import build_model
from setpipe.models.masked import MaskedSetModel, draw_mask
from setpipe.spec import job_from_dict
from setpipe.spec.models import ModelSpec

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))
from sets_data import job_dict, make_data

UMBC = {"kind": "umbc", "embed": [16], "slots": 4, "heads": 2, "dim": 8}
UMBC_RANDOM = {**UMBC, "random_slots": True, "attention": "set_softmax"}
ST = {"kind": "set_transformer", "dim": 8, "heads": 2, "layers": 2}
NAMES = ["a", "b", "c"]


def model_for(encoder: dict, visible: list[str] | None = None, seed: int = 0) -> MaskedSetModel:
    torch.manual_seed(seed)
    spec = ModelSpec.model_validate(
        {
            "task": "pretrain_masked",
            "encoder": encoder,
            "pretrain": {"visible_features": visible or [], "decoder": [12]},
        }
    )
    model = build_model(spec, len(NAMES), 0, NAMES).double()
    assert isinstance(model, MaskedSetModel)
    with torch.no_grad():  # a mask token unlike any input, so a wrong replacement shows
        model.mask_token.copy_(torch.tensor([0.3, -1.1, 2.0], dtype=torch.float64))
    return model


def batch_of(sizes: list[int], seed: int = 0) -> SetBatch:
    g = torch.Generator().manual_seed(seed)
    offsets = torch.tensor([0, *np.cumsum(sizes)], dtype=torch.long)
    values = torch.randn(int(offsets[-1]), len(NAMES), generator=g, dtype=torch.float64)
    return SetBatch(values, offsets)


# --------------------------------------------------------------------------- masks


def test_masks_count_and_seed() -> None:
    sizes = [1, 2, 3, 5, 10, 57, 400]
    offsets = torch.tensor([0, *np.cumsum(sizes)])
    mask = draw_mask(offsets, 0.3, torch.Generator().manual_seed(11))
    per_set = [int(mask[lo:hi].sum()) for lo, hi in itertools.pairwise(offsets)]
    # min(max(round(0.3 n), 1), n - 1): 1 element -> 0, 2 -> 1, 3 -> 1, 5 -> 2 (round(1.5)).
    assert per_set == [0, 1, 1, 2, 3, 17, 120]
    again = draw_mask(offsets, 0.3, torch.Generator().manual_seed(11))
    other = draw_mask(offsets, 0.3, torch.Generator().manual_seed(12))
    assert torch.equal(mask, again)
    assert not torch.equal(mask, other)


def test_masks_uniform_within_a_set() -> None:
    # Each of 6 positions of a 6-element set is masked with probability 2/6 (round(1.8) = 2).
    offsets = torch.tensor([0, 6])
    g = torch.Generator().manual_seed(3)
    hits = torch.stack([draw_mask(offsets, 0.3, g) for _ in range(6000)]).double().mean(0)
    assert torch.allclose(hits, torch.full((6,), 1 / 3, dtype=torch.float64), atol=0.02)


# --------------------------------------------------------------------------- no leak


@pytest.mark.parametrize("encoder", [UMBC, UMBC_RANDOM, ST], ids=["umbc", "umbc_random", "st"])
@pytest.mark.parametrize("visible", [[], ["a"]], ids=["all_masked", "a_visible"])
def test_masked_features_never_reach_their_prediction(encoder: dict, visible: list[str]) -> None:
    model = model_for(encoder, visible)
    batch = batch_of([7, 12, 3, 1])
    mask = draw_mask(batch.offsets, 0.4, torch.Generator().manual_seed(5))
    hidden = [NAMES.index(n) for n in NAMES if n not in visible]

    def predict(values: torch.Tensor) -> torch.Tensor:
        g = torch.Generator().manual_seed(9)  # the same random slots both times
        return model.predict_masked(SetBatch(values, batch.offsets), mask, None, g)

    before = predict(batch.values)
    changed = batch.values.clone()
    rows = mask.nonzero().squeeze(1)
    changed[rows[:, None], torch.tensor(hidden)] += 100.0 * torch.randn(len(rows), len(hidden))
    assert torch.equal(predict(changed), before)  # bit-identical: nothing of them is read
    # Control: a visible element's features do reach the predictions.
    moved = batch.values.clone()
    moved[(~mask).nonzero()[0, 0]] += 1.0
    assert (predict(moved) - before).abs().max() > 1e-6


# --------------------------------------------------------------------------- MBC passes


@pytest.mark.parametrize("encoder", [UMBC, UMBC_RANDOM], ids=["umbc", "umbc_random"])
@pytest.mark.parametrize("chunk", [1, 3, 7, 16])
def test_umbc_loss_is_partition_invariant(encoder: dict, chunk: int) -> None:
    model = model_for(encoder, ["a"])
    batch = batch_of([7, 12, 3, 1, 20], seed=4)
    whole = model.reconstruction(batch, None, torch.Generator().manual_seed(2))
    chunked = model.reconstruction(batch, chunk, torch.Generator().manual_seed(2))
    assert whole[:, 1].tolist() == chunked[:, 1].tolist()  # same masks: same counts
    assert torch.allclose(chunked, whole, rtol=0, atol=1e-10)
    assert whole[:, 1].tolist() == [2 * 2, 4 * 2, 1 * 2, 0, 6 * 2]  # masked x 2 predicted


def test_eval_masks_fixed_and_embedding_served() -> None:
    model = model_for(UMBC, ["a"]).eval()
    batch = batch_of([7, 12, 3])
    first = model.predict_chunked(batch, 5)
    assert torch.equal(first, model.predict_chunked(batch, 5))
    assert first.shape == (3, 2)
    embedding = model.embed_chunked(batch, 5)
    assert embedding.shape == (3, model.encoder.out_dim)  # type: ignore[union-attr]


@pytest.mark.parametrize("encoder", [UMBC, ST], ids=["umbc", "st"])
def test_encoder_parameters_match_a_classify_model(encoder: dict) -> None:
    pretrain = model_for(encoder, ["a"])
    classify = build_model(
        ModelSpec.model_validate({"task": "classify", "num_classes": 2, "encoder": encoder}),
        len(NAMES),
    )
    ours = {k: v.shape for k, v in pretrain.state_dict().items() if k.startswith("encoder.")}
    theirs = {k: v.shape for k, v in classify.state_dict().items() if k.startswith("encoder.")}
    assert ours == theirs
    others = {k.split(".")[0] for k in pretrain.state_dict() if not k.startswith("encoder.")}
    assert others <= {"mask_token", "predicted", "decoder", "query", "context_attention"}


# --------------------------------------------------------------------------- the job


def pretrain_job(data: Path, workdir: Path, **model: object) -> dict:
    raw = job_dict(data, workdir, epochs=2)
    raw["name"] = "sets-pretrain"
    del raw["data"]["label"]
    raw["data"]["features"] = [
        {"name": "x", "source": "x", "ops": [{"op": "standardize"}]},
        {"name": "y", "source": "y", "ops": [{"op": "standardize"}]},
    ]
    raw["model"] = {
        "task": "pretrain_masked",
        "encoder": {"kind": "umbc", "embed": [16], "slots": 4, "heads": 2, "dim": 16},
        "pretrain": {"mask_fraction": 0.3, "visible_features": ["y"]},
        **model,
    }
    return raw


def test_job_rules(tmp_path: Path) -> None:
    raw = pretrain_job(tmp_path, tmp_path)
    job = job_from_dict(raw)
    assert job.promotion == ("val_loss", "minimize")
    with_label = {**raw, "data": {**raw["data"], "label": "label"}}
    with pytest.raises(Exception, match=r"reads no labels .* remove data\.label"):
        job_from_dict(with_label)
    bad = {**raw, "model": {**raw["model"], "pretrain": {"visible_features": ["pt"]}}}
    with pytest.raises(Exception, match=r"visible_features: pt is not a model feature"):
        job_from_dict(bad)
    deepsets = {**raw, "model": {**raw["model"], "encoder": {"kind": "deepsets", "phi": [8]}}}
    with pytest.raises(Exception, match=r"umbc \(slots\) or set_transformer"):
        job_from_dict(deepsets)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_data(tmp_path_factory.mktemp("sets"))


def test_pretrain_run_registers_a_model(
    ray_local: None, data: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from setpipe.pipeline import run
    from setpipe.tracking.pyfunc import load_set_model

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    job = job_from_dict(pretrain_job(data, workdir))
    summary = run(job, progress=False)
    metrics = summary.metrics
    for name in ("val_loss", "val_masked_mse", "test_loss", "test_masked_mse"):
        assert np.isfinite(metrics[name]), name
    # Predicting y from the set and x from the rest, the model beats the unconditional
    # guess: standardized features have variance ~1 per predicted entry.
    assert metrics["val_masked_mse"] < 1.0
    uri = f"sqlite:///{workdir.resolve() / 'mlflow.db'}"
    client = MlflowClient(uri, registry_uri=uri)
    version = client.get_model_version("sets-pretrain", summary.version)
    assert client.get_run(version.run_id).data.tags["setpipe.task"] == "pretrain_masked"
    # Served, a pretrained model answers with the set embedding of the unmasked set.
    loaded = load_set_model(summary.model_uri, tracking_uri=uri)
    out = loaded.predict_sets([{"features": {"x": [0.1, 0.3, 1.0], "y": [0.2, -0.1, 0.5]}}])
    assert list(out[0]) == ["embedding"]
    assert len(out[0]["embedding"]) == loaded.model.encoder.out_dim
    shutil.rmtree(workdir / "ray_results", ignore_errors=True)


def test_classify_job_starts_from_the_pretrained_encoder(
    ray_local: None, data: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pretrained encoder loads into a classify job by name (model.init_from, parts
    [encoder]) and, frozen (train.freeze), leaves training bit-identical: a linear probe."""
    from setpipe.pipeline import train

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    pre = train(job_from_dict(pretrain_job(data, workdir)), progress=False).outcome
    weights = workdir / "pretrained.pt"
    torch.save({k: torch.as_tensor(v) for k, v in pre.state_dict.items()}, weights)
    raw = pretrain_job(data, workdir)
    raw["name"] = "sets-probe"
    raw["data"]["label"] = "label"
    raw["model"] = {
        "task": "classify",
        "num_classes": 2,
        "encoder": raw["model"]["encoder"],
        "init_from": {"uri": str(weights), "parts": ["encoder"]},
    }
    raw["train"]["freeze"] = ["encoder"]
    raw["train"]["epochs"] = 1
    probe = train(job_from_dict(raw), progress=False).outcome
    encoder = {k: v for k, v in pre.state_dict.items() if k.startswith("encoder.")}
    assert encoder  # the UMBC's embed, slots, projections, slot head
    for name, value in encoder.items():
        assert torch.equal(torch.as_tensor(probe.state_dict[name]), torch.as_tensor(value)), name
    assert np.isfinite(probe.test_metrics["test_auc"])
