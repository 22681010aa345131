"""Exported graphs equal the PyTorch model: every encoder and head kind, whole and chunked.

Tiny models, random weights (an exact round trip needs no training). Tolerance: the
parity measure of setpipe export, max |exported - torch| / max |torch| <= 1e-5.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pydantic import TypeAdapter

from setpipe.data.batch import SetBatch
from setpipe.data.transforms import FittedTransforms
from setpipe.errors import ExportError, ModelError
from setpipe.export import ExportedModel, export_model
from setpipe.export.artifact import write_directory
from setpipe.export.parity import measure, relative
from setpipe.models import SetModel, build_model
from setpipe.spec.models import FeatureSpec, ModelSpec

ENCODERS: dict[str, dict[str, Any]] = {
    "deepsets": {"kind": "deepsets", "phi": [8, 8], "rho": [8]},
    "deepsets_max": {"kind": "deepsets", "phi": [8], "rho": [8], "pooling": "max"},
    "umbc": {"kind": "umbc", "embed": [8], "slots": 3, "heads": 2, "dim": 8},
    "umbc_set_softmax": {
        "kind": "umbc",
        "embed": [8],
        "slots": 2,
        "heads": 2,
        "dim": 8,
        "attention": "set_softmax",
        "slot_head": {"kind": "mlp"},
    },
    "set_transformer": {"kind": "set_transformer", "dim": 8, "heads": 2, "layers": 1},
    "deepsets_lcm": {"kind": "deepsets", "phi": [8], "rho": [8], "pooling": "lcm"},
    "deepsets_mean": {"kind": "deepsets", "phi": [8], "rho": [8], "pooling": "mean"},
    # Random slots serve their mean in eval; softmax over slots; no slot residual.
    "umbc_random_softmax": {
        "kind": "umbc",
        "embed": [8],
        "slots": 3,
        "heads": 2,
        "dim": 8,
        "attention": "slot_softmax",
        "random_slots": True,
        "slot_residual": False,
    },
    "umbc_sigmoid": {"kind": "umbc", "embed": [8], "slots": 2, "heads": 2, "dim": 8,
                     "attention": "sigmoid"},
    "set_transformer_isab": {"kind": "set_transformer", "dim": 8, "heads": 2, "layers": 1,
                             "inducing_points": 4},
}  # fmt: skip
F, C = 3, 2
MIXED = [0, 1, 2, 5, 17]  # an empty set, a single element, chunks cutting through sets


def make(encoder: str, task: str, context: int = C, seed: int = 0) -> SetModel:
    """``task`` rank_slots: a rank head whose elements attend to the set's slots."""
    head: dict[str, Any] = {"hidden": [8]}
    if task == "rank_slots":
        task, head = "rank", {"hidden": [8], "context": "slots"}
    spec: dict[str, Any] = {"task": task, "encoder": ENCODERS[encoder], "head": head}
    if task == "classify":
        spec["num_classes"] = 3
    torch.manual_seed(seed)
    model = build_model(TypeAdapter(ModelSpec).validate_python(spec), F, context)
    return model.eval()


def batch(sizes: list[int], context: int = C, seed: int = 1) -> SetBatch:
    g = torch.Generator().manual_seed(seed)
    sets = [torch.randn(n, F, generator=g) for n in sizes]
    ctx = torch.randn(len(sizes), context, generator=g) if context else None
    return SetBatch.from_sets(sets, context=ctx)


def export(model: SetModel, fmt: str, directory: Path, context: int = C) -> ExportedModel:
    write_directory(
        model,
        fmt,
        directory,
        features=[f"f{i}" for i in range(F)],
        context=[f"c{i}" for i in range(context)],
        chunk_size=4,
        model_info={"uri": None, "name": None, "version": None},
    )
    return ExportedModel(directory)


def arrays(b: SetBatch) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    return b.values.numpy(), b.offsets.numpy(), None if b.context is None else b.context.numpy()


@pytest.mark.parametrize(
    ("encoder", "task", "fmt"),
    [
        ("deepsets", "classify", "onnx"),
        ("umbc", "regress", "onnx"),
        ("set_transformer", "rank", "onnx"),
        ("set_transformer", "classify", "torch-export"),
        ("umbc", "rank", "torch-export"),
        ("deepsets_max", "regress", "torch-export"),
        ("deepsets_lcm", "classify", "onnx"),
        ("umbc", "rank_slots", "onnx"),
        ("deepsets_mean", "regress", "torch-export"),
        ("umbc_random_softmax", "classify", "onnx"),
        ("umbc_sigmoid", "rank_slots", "torch-export"),
        ("set_transformer_isab", "regress", "onnx"),
    ],
)
def test_round_trip_equals_pytorch(encoder: str, task: str, fmt: str, tmp_path: Path) -> None:
    model = make(encoder, task)
    exported = export(model, fmt, tmp_path)
    meta = json.loads((tmp_path / "export.json").read_text())
    expected = {"whole", "update", "finalize"} if model.is_mbc else {"whole"}
    assert set(meta["graphs"]) == expected | (
        {"score"} if task.startswith("rank") and model.is_mbc else set()
    )
    assert_equals_pytorch(model, exported)


def assert_equals_pytorch(model: SetModel, exported: ExportedModel) -> None:
    """Dynamic sizes: one graph for a batch of several sets, of one set, of one element;
    MBC encoders through the chunked graphs too (chunks of 4 cut through sets)."""
    for sizes in (MIXED, [40], [1]):
        b = batch(sizes)
        with torch.inference_mode():
            ref = model(b).numpy()
        out = exported.predict(*arrays(b))
        assert out.shape == ref.shape
        assert relative(out, ref) <= 1e-5, (sizes, relative(out, ref))
        if model.is_mbc:
            chunked = exported.predict_chunked(*arrays(b), chunk_size=4)
            assert relative(chunked, ref) <= 1e-5, (sizes, relative(chunked, ref))


def _drive(directory: Path, values: np.ndarray, chunk: int) -> np.ndarray:
    """A reference driver written from export.json alone, as C++ code would: one set
    streamed through onnxruntime's update graph, then finalize."""
    import onnxruntime as ort

    meta = json.loads((directory / "export.json").read_text())
    update, finalize = (
        ort.InferenceSession(str(directory / meta["graphs"][g]["file"]))
        for g in ("update", "finalize")
    )
    state = [np.full((1, *t["shape"]), float(t["fill"]), dtype=t["dtype"]) for t in meta["state"]]
    names = [i["name"] for i in meta["graphs"]["update"]["inputs"]]
    for lo in range(0, len(values), chunk):
        part = values[lo : lo + chunk]
        feed = dict(zip(names, [part, np.zeros(len(part), dtype=np.int64), *state], strict=True))
        state = update.run(None, feed)
    names = [i["name"] for i in meta["graphs"]["finalize"]["inputs"]]
    return finalize.run(None, dict(zip(names, state, strict=True)))[0]


def test_chunked_export_streams_a_set_equal_to_whole_set_inference(tmp_path: Path) -> None:
    # UMBC with the exact set softmax: the state carries a running max (merged log-sum-exp
    # style) besides the sums, the hardest state to stream; DeepSets streams in the round
    # trips above and in the CLI test's 20000-element parity.
    model = make("umbc_set_softmax", "classify", context=0)
    export(model, "onnx", tmp_path, context=0)
    b = batch([30_000], context=0, seed=3)
    with torch.inference_mode():
        whole = model(b).numpy()  # PyTorch, one update over the whole set
    streamed = _drive(tmp_path, b.values.numpy(), chunk=1000)
    assert streamed.shape == whole.shape == (1, 3)
    assert relative(streamed, whole) <= 1e-5
    # The same driver in another chunking gives the same answer: a monoid, not a window.
    assert relative(_drive(tmp_path, b.values.numpy(), chunk=7001), streamed) <= 1e-6


def test_export_refuses_a_non_empty_directory_without_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "onnx"
    out.mkdir()
    (out / "model.onnx").write_text("an earlier export")
    with pytest.raises(ExportError) as err:
        export_model("models:/qg@champion", "onnx", out)
    assert str(err.value) == (
        f"--out {out}: the directory is not empty; pass --overwrite to replace it, or give a "
        "new directory"
    )
    assert (out / "model.onnx").read_text() == "an earlier export"


def pairwise_model(max_set_size: int = 256, kind: str = "points") -> SetModel:
    """A pairwise Set Transformer built with fitted transforms. points: f0 (standardized)
    and f1 are coordinates; jet: f0 is a standardized log pT, f1 rapidity, f2 phi."""
    f0_ops = [{"op": "standardize"}] if kind == "points" else [{"op": "log"}, {"op": "standardize"}]
    features = [
        FeatureSpec.model_validate({"name": "f0", "source": "x", "ops": f0_ops}),
        FeatureSpec.model_validate({"name": "f1", "source": "y"}),
        FeatureSpec.model_validate({"name": "f2", "source": "z"}),
    ]
    fitted = FittedTransforms(
        ["x", "y", "z"], features, {"f0": {"mean": 1.5, "std": 2.0, "count": 1.0}}
    )
    pairwise: dict[str, Any] = {"kind": "points", "coordinates": ["f0", "f1"], "embed": [8]}
    if kind == "jet":  # every ParT feature, ln m^2 (sinh, sin) included
        pairwise = {"kind": "jet", "pt": "f0", "rapidity": "f1", "phi": "f2", "embed": [8]}
    encoder = dict(ENCODERS["set_transformer"], pairwise=pairwise | {"max_set_size": max_set_size})
    spec = {"task": "classify", "num_classes": 3, "encoder": encoder, "head": {"hidden": [8]}}
    torch.manual_seed(0)
    model = build_model(TypeAdapter(ModelSpec).validate_python(spec), F, C, transforms=fitted)
    return model.eval()


def test_pairwise_set_transformer_round_trips(tmp_path: Path) -> None:
    """ParT-style pair biases are computed inside the graph, from the model features read
    back through the fitted transforms (here a standardized coordinate)."""
    model = pairwise_model()
    assert_equals_pytorch(model, export(model, "onnx", tmp_path))


@pytest.mark.parametrize("fmt", ["onnx", "torch-export"])
def test_jet_pairwise_set_transformer_round_trips(fmt: str, tmp_path: Path) -> None:
    """ParT's jet features, computed in float64 as PyTorch does, run in onnxruntime (whose
    CPU kernels lack some float64 ops) and in torch.export."""
    model = pairwise_model(kind="jet")
    assert_equals_pytorch(model, export(model, fmt, tmp_path))


def test_exported_pairwise_model_refuses_sets_above_its_max_set_size(tmp_path: Path) -> None:
    """As the PyTorch model does (model.encoder.pairwise.max_set_size), before the graph
    runs; parity is measured up to the limit, the limit included."""
    model = pairwise_model(max_set_size=12)
    exported = export(model, "onnx", tmp_path)
    assert json.loads((tmp_path / "export.json").read_text())["max_set_size"] == 12
    at_limit = batch([12, 3])
    with torch.inference_mode():
        ref = model(at_limit).numpy()
    assert relative(exported.predict(*arrays(at_limit)), ref) <= 1e-5
    above = batch([3, 13])
    with pytest.raises(ModelError, match="set 1 of the batch has 13 elements"):
        model(above)
    with pytest.raises(ModelError) as err:
        exported.predict(*arrays(above))
    assert str(err.value) == (
        f"{tmp_path}: set 1 of the batch has 13 elements, more than the model's max_set_size "
        "12 (export.json; model.encoder.pairwise.max_set_size): pairwise attention holds "
        "heads x n x n numbers per set (O(n^2) memory); send sets of at most 12 elements, "
        "or export a model trained with a larger max_set_size"
    )
    figures = measure(model, exported, F, C, sizes=(1, 10, 100), chunked_size=0)
    assert set(figures) == {"size_1", "size_10", "size_12", "mixed", "max"}
    assert figures["max"] <= 1e-5


# --------------------------------------------------------------------------- several heads

HEADS: list[dict[str, Any]] = [
    {"name": "flavour", "task": "classify", "target": "label", "num_classes": 3, "hidden": [8]},
    {"name": "mass", "task": "regress", "target": "m", "offset": 50.0, "scale": 10.0,
     "hidden": [8]},
]  # fmt: skip
RANK_HEAD = {"name": "relevance", "task": "rank", "target": "rel", "hidden": [8]}


def make_heads(encoder: str, heads: list[dict[str, Any]], seed: int = 0) -> SetModel:
    spec = {"heads": heads, "encoder": ENCODERS[encoder]}
    torch.manual_seed(seed)
    return build_model(TypeAdapter(ModelSpec).validate_python(spec), F, C).eval()


@pytest.mark.parametrize(
    ("encoder", "rank", "fmt"),
    [
        ("umbc", False, "onnx"),
        ("deepsets", True, "torch-export"),
        ("set_transformer", True, "onnx"),
    ],
)
def test_several_heads_round_trip_one_output_per_head(
    encoder: str, rank: bool, fmt: str, tmp_path: Path
) -> None:
    """One named output per head (``<head>.logits``, ``<head>.value``, ``<head>.scores``) in
    the whole graph and in finalize (a rank head: finalize gives the embedding and score
    the head's scores); ``predict`` and ``predict_chunked`` give head name -> output."""
    heads = [*HEADS, RANK_HEAD] if rank else HEADS
    model = make_heads(encoder, heads)
    exported = export(model, fmt, tmp_path)
    meta = json.loads((tmp_path / "export.json").read_text())
    sets, elements = ["sets", 3], ["sets"]
    outputs = [
        {"name": "flavour.logits", "dtype": "float32", "shape": sets},
        {"name": "mass.value", "dtype": "float32", "shape": elements},
    ]
    scores = {"name": "relevance.scores", "dtype": "float32", "shape": ["elements"]}
    assert meta["graphs"]["whole"]["outputs"] == outputs + ([scores] if rank else [])
    assert meta["heads"] == [
        {"name": "flavour", "task": "classify", "output": "flavour.logits", "shape": sets},
        {"name": "mass", "task": "regress", "output": "mass.value", "shape": ["sets"]},
        *([{"name": "relevance", "task": "rank", "output": "relevance.scores",
            "shape": ["elements"]}] if rank else []),
    ]  # fmt: skip
    if model.is_mbc:
        width = int(model.encoder.out_dim)  # the set embedding, context included
        embedding = {"name": "embedding", "dtype": "float32", "shape": ["sets", width]}
        assert meta["graphs"]["finalize"]["outputs"] == outputs + ([embedding] if rank else [])
        if rank:
            assert meta["graphs"]["score"]["outputs"] == [scores]
    for sizes in (MIXED, [40], [1]):
        b = batch(sizes)
        with torch.inference_mode():
            ref = {k: v.numpy() for k, v in model(b).items()}
        runs = [exported.predict(*arrays(b))]
        if model.is_mbc:
            runs.append(exported.predict_chunked(*arrays(b), chunk_size=4))
        for out in runs:
            assert list(out) == [h["name"] for h in heads]
            for name, value in out.items():
                assert value.shape == ref[name].shape, (name, sizes)
                assert relative(value, ref[name]) <= 1e-5, (name, sizes, relative(value, ref[name]))


def test_onnx_sinh_in_float64_equals_numpy(tmp_path: Path) -> None:
    """onnxruntime has no float64 Sinh kernel; the exporter writes sinh from Exp, with the
    Taylor series near 0 where e^x - e^-x cancels: float64-exact on both sides of 1e-2."""
    import onnxruntime as ort
    from torch.export import Dim

    from setpipe.export.exporter import _export

    class Sinh(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.sinh(x)

    x = np.concatenate([np.logspace(-9, 1.3, 400), [0.0, 9.99e-3, 1e-2, 1.001e-2]])
    x = np.concatenate([x, -x])
    path = tmp_path / "sinh.onnx"
    example = torch.linspace(-1, 1, 5, dtype=torch.float64)
    _export(Sinh(), (example,), ({0: Dim("n")},), path, "onnx", ["x"], ["y"])
    (out,) = ort.InferenceSession(str(path)).run(None, {"x": x})
    assert out.dtype == np.float64
    rel = np.abs(out - np.sinh(x)) / np.maximum(np.abs(np.sinh(x)), 1e-300)
    assert rel.max() <= 1e-14, (x[rel.argmax()], rel.max())
