"""Pairwise interaction features for attention (Qu, Li & Qian, "Particle Transformer for Jet
Tagging", ICML 2022): per pair of elements a few features, embedded by a pointwise MLP
to one bias per head, added to the attention logits (setpipe/models/set_transformer.py).

Jets (``kind: jet``), for particles a (query) and b (key), as in ParT::

    Δ = sqrt(Δy² + Δφ²)      k_T = min(pT_a, pT_b) Δ      z = min(pT_a, pT_b) / (pT_a + pT_b)
    m² = (p_a + p_b)²        each fed as its log, clamped at ln 1e-8 (ParT's eps)

m² without a mass feature is that of massless particles, 2 pT_a pT_b (cosh Δy - cos Δφ);
with one, m_a² + m_b² + 2 (mT_a mT_b cosh Δy - pT_a pT_b cos Δφ), mT = sqrt(pT² + m²).
Both are written with cosh Δy - 1 = 2 sinh²(Δy/2) and 1 - cos Δφ = 2 sin²(Δφ/2), which
keep their digits for close pairs where the textbook forms cancel. Energy is not used:
the model sees rapidity relative to the jet axis, and E = mT cosh y needs the absolute y.
Point sets (``kind: points``): the distance |x_b - x_a| and the displacement x_b - x_a.

Where the raw kinematics come from: the model sees transformed features (log pT,
standardized, centred y and φ). The pair features read pT, y and φ back from the named
model features by inverting their ops with the fitted statistics saved with the model:
standardize is affine, log and log1p have exact inverses, and centring shifts every
element of a set alike, which Δy and Δφ cancel (Δφ is wrapped to [-π, π) in any case).
So no extra input column travels from the data, serving needs nothing new, and the pairs
describe the particles the attention sees, augmentation (rotation in the (y, φ) plane)
included. Ops that cannot be undone (clip, fraction, abs, isin) are refused when the job
loads. The inversion and the features run in float64 whatever the model's dtype (exp of a
float32 log pT, then a difference of two nearby rapidities, would lose digits) and come
out in the dtype of the input.

Memory is O(n²) per set: the features, the MLP's activations and the bias hold
B x n x n x (P + Σ widths + heads) numbers, so ``max_set_size`` bounds n.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from setpipe.data.transforms import FittedTransforms
from setpipe.errors import ModelError
from setpipe.models.protocol import mlp
from setpipe.spec.models import JetPairwiseSpec, PointPairwiseSpec

EPS = 1e-8
"""Clamp before each log, as ParT's pairwise_lv_fts: a pair with itself (Δ = 0) gets ln 1e-8."""


@dataclass(frozen=True)
class RawFeature:
    """How to read one raw quantity back from a model feature column."""

    index: int
    """The model feature's column."""
    inverse: tuple[tuple[str, float, float], ...]
    """Steps applied in order: ("affine", scale, shift): v * scale + shift; ("exp", eps, 0):
    exp(v) - eps; ("expm1", eps, 0): expm1(v) - eps. Centring is a per-set shift: skipped."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """float64 [...] raw values from the model features ``x [..., F]``."""
        v = x[..., self.index].to(torch.float64)
        for kind, a, b in self.inverse:
            if kind == "affine":
                v = v * a + b
            elif kind == "exp":
                v = torch.exp(v) - a
            else:
                v = torch.expm1(v) - a
        return v


def raw_feature(transforms: FittedTransforms, name: str) -> RawFeature:
    """The inverse of model feature ``name``'s ops (validated by the job spec)."""
    names = transforms.feature_names
    if name not in names:
        raise ModelError(f"pairwise: {name!r} is not a model feature; expected one of {names}")
    spec = next((f for f in transforms.features or [] if f.name == name), None)
    steps: list[tuple[str, float, float]] = []
    for op in reversed(spec.ops if spec is not None else []):
        if op.op == "standardize":
            stat = transforms.stats.get(name)
            if stat is None:
                raise ModelError(
                    f"pairwise: feature {name!r} has a standardize op that was never fitted; "
                    "build the model with the fitted transforms (fit_transforms first)"
                )
            steps.append(("affine", float(stat["std"]), float(stat["mean"])))
        elif op.op in ("log", "log1p"):
            steps.append(("exp" if op.op == "log" else "expm1", float(op.eps), 0.0))  # type: ignore[union-attr]
        elif op.op != "center":
            raise ModelError(
                f"pairwise: feature {name!r} goes through {op.op}, which cannot be undone; "
                "use log, log1p, standardize or center"
            )
    return RawFeature(names.index(name), tuple(steps))


def wrap_angle(d: torch.Tensor) -> torch.Tensor:
    """Angles to [-π, π)."""
    return torch.remainder(d + math.pi, 2 * math.pi) - math.pi


class PairwiseEmbedding(nn.Module):
    """x [B, N, F], mask [B, N] -> attention bias [B, heads, N, N] (0 where a or b is padding)."""

    def __init__(
        self,
        spec: JetPairwiseSpec | PointPairwiseSpec,
        transforms: FittedTransforms | None,
        heads: int,
    ) -> None:
        """Without ``transforms`` the module has its parameters (to load weights into, to
        check shapes) but cannot run: the inverse ops need the fitted statistics."""
        super().__init__()
        self.kind = spec.kind
        self.names = list(spec.features)
        self.max_set_size = spec.max_set_size
        self.raw = (
            None
            if transforms is None
            else {role: raw_feature(transforms, name) for role, name in spec.named.items()}
        )
        dims = len(spec.named) if spec.kind == "points" else 0
        width = sum(dims if n == "displacement" else 1 for n in self.names)
        self.num_pair_features = width
        self.embed = mlp([width, *spec.embed, heads], activate_last=False)

    def pair_features(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[B, N, N, P] in ``x``'s dtype: entry (a, b) describes query a and key b; zeros
        where either is padding. Computed in float64."""
        if self.raw is None:
            raise ModelError(
                "pairwise features read pT, rapidity and phi back through the job's fitted "
                "transforms, and this model was built without them: build_model(..., "
                "transforms=FittedTransforms) (setpipe run and the registered model do)"
            )
        parts = self._jet(x) if self.kind == "jet" else self._points(x)
        out = torch.cat([p if p.dim() == 4 else p[..., None] for p in parts], -1)
        pair = (mask[:, :, None] & mask[:, None, :])[..., None]
        return torch.where(pair, out, torch.zeros_like(out)).to(x.dtype)

    def _jet(self, x: torch.Tensor) -> list[torch.Tensor]:
        assert self.raw is not None
        pt, y, phi = self.raw["pt"](x), self.raw["rapidity"](x), self.raw["phi"](x)
        pa, pb = pt[:, :, None], pt[:, None, :]
        dy = y[:, :, None] - y[:, None, :]
        dphi = wrap_angle(phi[:, :, None] - phi[:, None, :])
        delta = torch.sqrt(dy.square() + dphi.square())
        ptmin = torch.minimum(pa, pb)
        out: dict[str, torch.Tensor] = {}
        out["ln_delta"] = torch.log(delta.clamp_min(EPS))
        out["ln_kt"] = torch.log((ptmin * delta).clamp_min(EPS))
        out["ln_z"] = torch.log((ptmin / (pa + pb).clamp_min(EPS)).clamp_min(EPS))
        if "ln_m2" in self.names:
            cosh_m1 = 2 * torch.sinh(dy / 2).square()  # cosh Δy - 1
            one_m_cos = 2 * torch.sin(dphi / 2).square()  # 1 - cos Δφ
            if "mass" in self.raw:
                m = self.raw["mass"](x)
                mt = torch.sqrt(pt.square() + m.square())
                ma, mb, ta, tb = m[:, :, None], m[:, None, :], mt[:, :, None], mt[:, None, :]
                m2 = ma.square() + mb.square() + 2 * (ta * tb * cosh_m1 + pa * pb * one_m_cos)
                m2 = m2 + 2 * (ta * tb - pa * pb)
            else:
                m2 = 2 * pa * pb * (cosh_m1 + one_m_cos)
            out["ln_m2"] = torch.log(m2.clamp_min(EPS))
        return [out[n] for n in self.names]

    def _points(self, x: torch.Tensor) -> list[torch.Tensor]:
        assert self.raw is not None
        c = torch.stack([f(x) for f in self.raw.values()], -1)  # [B, N, D]
        disp = c[:, None, :, :] - c[:, :, None, :]  # (a, b): x_b - x_a
        out = {"displacement": disp, "distance": disp.square().sum(-1).sqrt()}
        return [out[n] for n in self.names]

    def check_sizes(self, sizes: torch.Tensor) -> None:
        """ModelError naming the first set larger than ``max_set_size``."""
        big = (sizes > self.max_set_size).nonzero()
        if big.numel():
            i = int(big[0, 0])
            n = int(sizes[i])
            raise ModelError(
                f"set {i} of the batch has {n} elements, more than "
                f"model.encoder.pairwise.max_set_size={self.max_set_size}: pairwise attention "
                f"holds heads x n x n numbers per set (O(n^2) memory); raise max_set_size to "
                f"at least {n} if memory allows, or drop larger sets with data.batch."
                f"max_set_size: {self.max_set_size} and data.on_bad_row: skip"
            )

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        feats = self.pair_features(x, mask)
        bias = self.embed(feats)  # [B, N, N, H]
        pair = (mask[:, :, None] & mask[:, None, :])[..., None]
        bias = torch.where(pair, bias, torch.zeros_like(bias))
        return bias.permute(0, 3, 1, 2)
