"""Pairwise-interaction attention (setpipe/models/pairwise.py): the pair features against an
independent numpy reference (4-vectors in long double), padding, the O(n²) size limit,
and the job checks on the named features."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from setpipe.data.batch import SetBatch
from setpipe.data.transforms import FittedTransforms
from setpipe.errors import ModelError, SpecError
from setpipe.models import build_model
from setpipe.models.pairwise import PairwiseEmbedding
from setpipe.spec import job_from_dict
from setpipe.spec.models import FeatureSpec, JetPairwiseSpec, ModelSpec, PointPairwiseSpec

L = np.longdouble
EPS = 1e-8
# Model features of a jet: log pT, rapidity and phi standardized (phi NOT centred, so sets
# near phi = pi cross the seam), a particle mass passed through, one feature the pairs ignore.
FEATURES = [
    {"name": "log_pt", "source": "pt", "ops": [{"op": "log"}, {"op": "standardize"}]},
    {"name": "y_s", "source": "y", "ops": [{"op": "standardize"}]},
    {"name": "phi_s", "source": "phi", "ops": [{"op": "standardize"}]},
    {"name": "m", "source": "m", "ops": []},
    {"name": "other", "source": "y", "ops": [{"op": "abs"}]},
]
STATS = {
    "log_pt": {"mean": 0.3, "std": 0.9, "count": 1.0},
    "y_s": {"mean": -0.05, "std": 0.25, "count": 1.0},
    "phi_s": {"mean": 2.9, "std": 0.4, "count": 1.0},
}


def transforms() -> FittedTransforms:
    features = [FeatureSpec.model_validate(f) for f in FEATURES]
    return FittedTransforms(
        ["pt", "y", "phi", "m"], features, {k: dict(v) for k, v in STATS.items()}
    )


def jet_sets(sizes: list[int], seed: int = 0) -> list[np.ndarray]:
    """Raw (pt, y, phi, m) per particle: pT 0.5 + Exp(2), y ~ N(0, 0.3), phi ~ N(3.0, 0.3)
    wrapped to (-pi, pi] (about a third of the particles sit past the seam)."""
    rng = np.random.default_rng(seed)
    out = []
    for n in sizes:
        phi = np.angle(np.exp(1j * rng.normal(3.0, 0.3, n)))
        m = rng.choice([0.0, 0.13957, 0.49368], n)
        out.append(np.stack([0.5 + rng.exponential(2.0, n), rng.normal(0, 0.3, n), phi, m], 1))
    return out


def model_features(raw: np.ndarray) -> np.ndarray:
    """The model features of FEATURES from raw (pt, y, phi, m), in float64."""
    pt, y, phi, m = raw.T
    s = STATS
    return np.stack(
        [
            (np.log(pt) - s["log_pt"]["mean"]) / s["log_pt"]["std"],
            (y - s["y_s"]["mean"]) / s["y_s"]["std"],
            (phi - s["phi_s"]["mean"]) / s["phi_s"]["std"],
            m,
            np.abs(y),
        ],
        1,
    )


def reference(x: np.ndarray, names: list[str], massive: bool) -> np.ndarray:
    """ParT's definitions in long double from the model features of one set [n, F]:
    features read back (exp, affine), 4-vectors, m^2 = (p_a + p_b)^2 directly."""
    x = x.astype(L)
    s = {k: {q: L(v) for q, v in d.items()} for k, d in STATS.items()}
    pt = np.exp(x[:, 0] * s["log_pt"]["std"] + s["log_pt"]["mean"])
    y = x[:, 1] * s["y_s"]["std"] + s["y_s"]["mean"]
    phi = x[:, 2] * s["phi_s"]["std"] + s["phi_s"]["mean"]
    m = x[:, 3] if massive else np.zeros_like(pt)
    mt = np.sqrt(pt**2 + m**2)
    p4 = np.stack([mt * np.cosh(y), pt * np.cos(phi), pt * np.sin(phi), mt * np.sinh(y)], 1)
    a, b = np.meshgrid(np.arange(len(pt)), np.arange(len(pt)), indexing="ij")
    dy = y[a] - y[b]
    pi = L(np.pi)
    dphi = np.remainder(phi[a] - phi[b] + pi, 2 * pi) - pi
    delta = np.sqrt(dy**2 + dphi**2)
    ptmin = np.minimum(pt[a], pt[b])
    tot = p4[a] + p4[b]
    m2 = tot[..., 0] ** 2 - tot[..., 1] ** 2 - tot[..., 2] ** 2 - tot[..., 3] ** 2
    feats = {
        "ln_delta": np.log(np.maximum(delta, EPS)),
        "ln_kt": np.log(np.maximum(ptmin * delta, EPS)),
        "ln_z": np.log(np.maximum(ptmin / (pt[a] + pt[b]), EPS)),
        "ln_m2": np.log(np.maximum(m2, EPS)),
    }
    return np.stack([feats[n] for n in names], -1)


JET = {"kind": "jet", "pt": "log_pt", "rapidity": "y_s", "phi": "phi_s"}


@pytest.mark.parametrize(
    ("dtype", "tol"), [(torch.float32, 1e-6), (torch.float64, 1e-12)], ids=["f32", "f64"]
)
@pytest.mark.parametrize("massive", [False, True], ids=["massless", "mass"])
def test_jet_pair_features_equal_the_numpy_reference(
    dtype: torch.dtype, tol: float, massive: bool
) -> None:
    names = ["ln_delta", "ln_kt", "ln_z", "ln_m2"]
    spec = JetPairwiseSpec.model_validate({**JET, "mass": "m" if massive else None})
    emb = PairwiseEmbedding(spec, transforms(), heads=2)
    sets = [model_features(r) for r in jet_sets([7, 12, 3])]
    batch = SetBatch.from_sets([torch.tensor(s, dtype=dtype) for s in sets])
    x, mask = batch.padded()
    got = emb.pair_features(x, mask)
    assert got.dtype == dtype and got.shape == (3, 12, 12, 4)
    worst = 0.0
    for i, s in enumerate(sets):
        n = len(s)
        ref = reference(x[i, :n].double().numpy(), names, massive)
        worst = max(worst, float(np.abs(got[i, :n, :n].double().numpy() - ref).max()))
        assert torch.all(got[i, n:] == 0) and torch.all(got[i, :, n:] == 0)  # padding: zeros
    assert worst <= tol, worst


def test_pair_features_see_through_centring_to_the_raw_kinematics() -> None:
    """Centred y and phi (pT-weighted axis, phi wrapped) then standardized, made by the real
    transforms: the pairs equal the reference on the RAW kinematics (centring cancels)."""
    features = [
        {"name": "log_pt", "source": "pt", "ops": [{"op": "log"}, {"op": "standardize"}]},
        {"name": "y_s", "source": "y", "ops": [{"op": "center", "weight": "pt"}]},
        {
            "name": "phi_s",
            "source": "phi",
            "ops": [{"op": "center", "weight": "pt", "periodic": True}],
        },
    ]
    stats = {"log_pt": dict(STATS["log_pt"])}
    t = FittedTransforms(
        ["pt", "y", "phi"], [FeatureSpec.model_validate(f) for f in features], stats
    )
    raw = jet_sets([9, 5], seed=3)
    batch = t.apply(SetBatch.from_sets([torch.tensor(r[:, :3]) for r in raw]))
    emb = PairwiseEmbedding(JetPairwiseSpec.model_validate(JET), t, heads=1)
    x, mask = batch.padded()
    got = emb.pair_features(x.double(), mask)
    for i, r in enumerate(raw):
        n = len(r)
        # The reference's inverse is the STATS one: feed it raw values in that encoding.
        ref = reference(model_features(r), ["ln_delta", "ln_kt", "ln_z", "ln_m2"], False)
        # float32 model features (what the transforms give) limit this to ~1e-5.
        np.testing.assert_allclose(got[i, :n, :n].numpy(), ref.astype(np.float64), atol=2e-5)


@pytest.mark.parametrize(
    ("dtype", "tol"), [(torch.float32, 1e-6), (torch.float64, 1e-12)], ids=["f32", "f64"]
)
def test_point_pair_features_equal_the_numpy_reference(dtype: torch.dtype, tol: float) -> None:
    t = FittedTransforms(
        ["x", "y", "z"],
        [
            FeatureSpec.model_validate(
                {"name": "xs", "source": "x", "ops": [{"op": "standardize"}]}
            ),
            FeatureSpec.model_validate({"name": "ys", "source": "y", "ops": [{"op": "center"}]}),
            FeatureSpec.model_validate({"name": "zs", "source": "z"}),
        ],
        {"xs": {"mean": 3.0, "std": 2.5, "count": 1.0}},
    )
    spec = PointPairwiseSpec.model_validate({"kind": "points", "coordinates": ["xs", "ys"]})
    emb = PairwiseEmbedding(spec, t, heads=2)
    rng = np.random.default_rng(1)
    sets = [rng.normal(size=(n, 3)) for n in (6, 2)]
    batch = SetBatch.from_sets([torch.tensor(s, dtype=dtype) for s in sets])
    x, mask = batch.padded()
    got = emb.pair_features(x, mask)  # [B, N, N, 1 + 2]: distance, then x_b - x_a
    for i, s in enumerate(sets):
        c = np.stack([s[:, 0].astype(L) * L(2.5) + L(3.0), s[:, 1].astype(L)], 1)
        disp = c[None, :, :] - c[:, None, :]
        ref = np.concatenate([np.sqrt((disp**2).sum(-1))[..., None], disp], -1)
        n = len(s)
        assert float(np.abs(got[i, :n, :n].double().numpy() - ref).max()) <= tol


def jet_model(max_set_size: int = 64, transforms_: FittedTransforms | None = None):  # -> SetModel
    torch.manual_seed(0)
    encoder = {
        "kind": "set_transformer",
        "dim": 8,
        "heads": 2,
        "layers": 2,
        "pairwise": {**JET, "mass": "m", "embed": [8], "max_set_size": max_set_size},
    }
    spec = ModelSpec(encoder=encoder, task="classify", num_classes=2, head={"hidden": [8]})
    model = build_model(spec, len(FEATURES), transforms=transforms_ or transforms())
    return model.double().eval()


def test_padding_never_changes_outputs() -> None:
    """Each set alone equals the same set padded beside larger ones, and the bias is 0 on
    every pair that touches padding."""
    model = jet_model()
    sets = [torch.tensor(model_features(r)) for r in jet_sets([4, 11, 1, 7], seed=5)]
    together = model(SetBatch.from_sets(sets))
    for i, s in enumerate(sets):
        torch.testing.assert_close(
            model(SetBatch.from_sets([s]))[0], together[i], rtol=0, atol=1e-12
        )
    x, mask = SetBatch.from_sets(sets).padded()
    bias = model.encoder.pairwise(x, mask)  # [B, H, N, N]
    pair = mask[:, None, :, None] & mask[:, None, None, :]
    assert torch.all(bias.masked_select(~pair.expand_as(bias)) == 0)
    assert bias.masked_select(pair.expand_as(bias)).abs().max() > 0


def test_the_bias_changes_the_attention() -> None:
    """The same weights with the pair bias switched off give other outputs."""
    model = jet_model()
    batch = SetBatch.from_sets([torch.tensor(model_features(r)) for r in jet_sets([6, 9])])
    with_bias = model(batch)
    model.encoder.pairwise.embed[-1].weight.data.zero_()
    model.encoder.pairwise.embed[-1].bias.data.zero_()
    assert (with_bias - model(batch)).abs().max() > 1e-4


def test_a_set_past_max_set_size_is_refused_by_name() -> None:
    model = jet_model(max_set_size=8)
    sets = [torch.tensor(model_features(r)) for r in jet_sets([5, 8, 9])]
    with pytest.raises(ModelError) as err:
        model(SetBatch.from_sets(sets))
    assert str(err.value).startswith(
        "set 2 of the batch has 9 elements, more than model.encoder.pairwise.max_set_size=8: "
        "pairwise attention holds heads x n x n numbers per set (O(n^2) memory); raise "
        "max_set_size to at least 9"
    )


def test_without_fitted_transforms_the_model_loads_but_refuses_to_run() -> None:
    spec = jet_model().encoder.pairwise
    model = build_model(
        ModelSpec(
            encoder={"kind": "set_transformer", "dim": 8, "heads": 2, "pairwise": JET},
            task="classify",
            num_classes=2,
        ),
        len(FEATURES),
    )
    assert spec is not None
    batch = SetBatch.from_sets(
        [torch.tensor(model_features(jet_sets([3])[0]), dtype=torch.float32)]
    )
    with pytest.raises(ModelError, match="built without them: build_model"):
        model(batch)


def pair_job(pairwise: dict, **encoder: object) -> dict:
    return {
        "name": "pairs",
        "data": {
            "train": "data",
            "elements": {"layout": "parallel", "columns": ["pt", "y", "phi", "m"]},
            "features": FEATURES,
            "label": "label",
        },
        "model": {
            "task": "classify",
            "num_classes": 2,
            "encoder": {"kind": "set_transformer", "pairwise": pairwise, **encoder},
        },
    }


def test_job_checks_the_named_features() -> None:
    assert job_from_dict(pair_job(JET)).model.encoder.pairwise.pt == "log_pt"
    with pytest.raises(SpecError, match=r"pairwise: rapidity 'other' goes through abs, which"):
        job_from_dict(pair_job({**JET, "rapidity": "other"}))
    with pytest.raises(SpecError, match=r"phi 'phi' is not a model feature; expected one of"):
        job_from_dict(pair_job({**JET, "phi": "phi"}))
    with pytest.raises(SpecError, match=r"ISAB \(inducing_points\) has none"):
        job_from_dict(pair_job(JET, inducing_points=4))
