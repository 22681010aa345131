"""Per-feature transforms declared in the job: the same code in training and serving.

``data.features`` builds each model input feature from one raw element feature through
a chain of ops. Element-wise ops: log, log1p, clip, abs, isin, standardize. Set-relative
ops (center, fraction) read the SetBatch offsets and reduce per set with ``index_add_``
/ ``scatter_reduce``: no Python loop over sets. Arithmetic runs in float64 and the
result is cast to float32.

standardize is fitted in one streaming pass over the training data: the values just
before it in its chain are reduced per batch to (count, mean, M2) and merged with
Chan's parallel update, so the result equals the whole-data mean and (population)
standard deviation. One standardize per feature: a second one would need a second pass.

Periodic center (angles such as phi): the reference of a set is its element of largest
weight (the first element without a weight); each x becomes d = wrap(x - ref), and the
output is wrap(d - weighted mean of d), with wrap into (-pi, pi]. For a set narrower
than pi around its leading element (a jet) this is the weighted mean of x taken on the
unrolled circle, so a jet across the +-pi seam is not torn in two. It was chosen over
the weighted circular mean (atan2 of weighted sin/cos) because it reduces exactly to
the linear weighted mean away from the seam, which is what the non-periodic center
computes.

A set whose weights sum to zero is centred on its plain mean; fraction of a set whose
sum is zero is 0.

A value that an op turns non-finite (log of 0 or of a negative number) makes its set a bad
row: ``nonfinite_rows`` finds those sets and words which feature, op, element and value,
and the data layer drops them or stops under ``data.on_bad_row``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from pydantic import TypeAdapter

from setpipe.data.bad_rows import Problem
from setpipe.data.batch import SetBatch
from setpipe.data.weights import SetWeights
from setpipe.errors import DataError
from setpipe.spec.models import (
    AbsOp,
    CenterOp,
    ClipOp,
    DataSpec,
    FeatureSpec,
    FractionOp,
    IsInOp,
    LogOp,
    StandardizeOp,
)

FORMAT_VERSION = 1
_FEATURES = TypeAdapter(list[FeatureSpec])
LOG_FIX = "filter these rows, add an offset (eps), or set data.on_bad_row: skip"
FLOAT32_MAX = float(np.finfo(np.float32).max)


def wrap_angle(x: torch.Tensor) -> torch.Tensor:
    """Angles into (-pi, pi]."""
    return x - 2 * math.pi * torch.ceil((x - math.pi) / (2 * math.pi))


class _Sets:
    """Segment reductions over the sets of a batch."""

    def __init__(self, batch: SetBatch) -> None:
        self.num_sets = batch.num_sets
        self.index = batch.set_index()
        self.num_elements = batch.num_elements

    def sum(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(self.num_sets).index_add_(0, self.index, x)

    def weights(self, w: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
        if w is None:
            return torch.ones_like(like)
        total = self.sum(w)
        # A set of zero total weight falls back to the plain mean.
        return torch.where(total[self.index] == 0, torch.ones_like(w), w)

    def mean(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return self.sum(w * x) / self.sum(w)

    def leading(self, x: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
        """[B]: x of each set's element of largest weight (first one on ties / no weight)."""
        position = torch.arange(self.num_elements, device=x.device)
        if w is None:
            candidate = position
        else:
            wmax = w.new_full((self.num_sets,), -math.inf).scatter_reduce(
                0, self.index, w, "amax", include_self=True
            )
            candidate = torch.where(w == wmax[self.index], position, self.num_elements)
        first = torch.full((self.num_sets,), self.num_elements, device=x.device).scatter_reduce(
            0, self.index, candidate, "amin", include_self=True
        )
        return x[first]


def _apply_op(
    op: Any,
    x: torch.Tensor,
    raw: torch.Tensor,
    raw_names: list[str],
    sets: _Sets,
    stat: dict[str, float] | None,
) -> torch.Tensor:
    if isinstance(op, LogOp):
        return torch.log(x + op.eps) if op.op == "log" else torch.log1p(x + op.eps)
    if isinstance(op, ClipOp):
        return torch.clamp(x, min=op.min, max=op.max)
    if isinstance(op, AbsOp):
        return x.abs()
    if isinstance(op, IsInOp):
        return torch.isin(x, torch.tensor(op.values, dtype=x.dtype)).to(x.dtype)
    if isinstance(op, StandardizeOp):
        assert stat is not None
        return (x - stat["mean"]) / stat["std"]
    if isinstance(op, FractionOp):
        total = sets.sum(x)[sets.index]
        return torch.where(total == 0, torch.zeros_like(x), x / total)
    if isinstance(op, CenterOp):
        w_raw = None if op.weight is None else raw[:, raw_names.index(op.weight)]
        w = sets.weights(w_raw, x)
        if not op.periodic:
            return x - sets.mean(x, w)[sets.index]
        x = wrap_angle(x)
        d = wrap_angle(x - sets.leading(x, w_raw)[sets.index])
        return wrap_angle(d - sets.mean(d, w)[sets.index])
    raise AssertionError(f"unknown op {op!r}")


@dataclass
class FittedTransforms:
    """The job's feature transforms with fitted statistics; saved with the model as JSON."""

    raw_features: list[str]
    """Raw element features, in SetBatch column order (``spec.elements.feature_names``)."""
    features: list[FeatureSpec] | None
    """``data.features``; None passes the raw features through unchanged."""
    stats: dict[str, dict[str, float]] = field(default_factory=dict)
    """feature name -> {"mean", "std", "count"} of its standardize op."""
    weights: SetWeights | None = None
    """Class weights and reweighting (``setpipe.data.weights``), fitted in the same pass;
    None when the job declares neither."""

    @classmethod
    def from_spec(cls, spec: DataSpec) -> FittedTransforms:
        """Unfitted: standardize statistics still to be filled by ``fit_transforms``."""
        features = None if spec.features is None else [f.model_copy() for f in spec.features]
        for f in features or []:
            if sum(isinstance(op, StandardizeOp) for op in f.ops) > 1:
                raise DataError(
                    f"data.features {f.name!r}: standardize appears more than once; it is fitted "
                    "in one pass over the data, so keep one standardize per feature"
                )
        return cls(list(spec.elements.feature_names), features)

    @property
    def feature_names(self) -> list[str]:
        if self.features is None:
            return list(self.raw_features)
        return [f.name for f in self.features]

    @property
    def to_fit(self) -> list[FeatureSpec]:
        """Features with a standardize op."""
        return [
            f for f in self.features or [] if any(isinstance(op, StandardizeOp) for op in f.ops)
        ]

    def _chain(
        self, f: FeatureSpec, raw: torch.Tensor, sets: _Sets, stop_at_standardize: bool
    ) -> torch.Tensor:
        x = raw[:, self.raw_features.index(f.source)]
        for op in f.ops:
            if isinstance(op, StandardizeOp):
                if stop_at_standardize:
                    return x
                if f.name not in self.stats:
                    raise DataError(
                        f"feature {f.name!r} has a standardize op that was never fitted; call "
                        "fit_transforms on the training data first"
                    )
            x = _apply_op(op, x, raw, self.raw_features, sets, self.stats.get(f.name))
        return x

    def apply(self, batch: SetBatch) -> SetBatch:
        """Raw element features -> the model's input features (``feature_names`` order)."""
        if self.features is None:
            return batch
        if batch.num_features != len(self.raw_features):
            raise DataError(
                f"the batch has {batch.num_features} element features, the transforms expect "
                f"{len(self.raw_features)} ({', '.join(self.raw_features)})"
            )
        raw = batch.values.to(torch.float64)
        sets = _Sets(batch)
        # Each feature is computed in float64 and written straight into the float32 output:
        # one float64 column alive at a time, not all of them plus a stacked copy.
        shape = (batch.num_elements, len(self.features))
        values = batch.values.new_empty(shape, dtype=torch.float32)
        for j, feature in enumerate(self.features):
            values[:, j] = self._chain(feature, raw, sets, stop_at_standardize=False)
        return replace(batch, values=values)

    def weigh(self, batch: SetBatch, values: np.ndarray | None) -> SetBatch:
        """Raw ``batch`` with its set weights: ``data.weight`` x class weight x reweight
        factor (``values``: the reweight variables, ``convert.reweight_values``)."""
        return batch if self.weights is None else self.weights.apply(batch, values)

    def nonfinite_rows(self, batch: SetBatch) -> Problem | None:
        """The sets of raw ``batch`` that some op turns non-finite, or None if there are none.

        Each feature's chain runs once (an unfitted standardize counts as the identity: it
        cannot make a finite value non-finite); only a feature with a non-finite or
        float32-overflowing output runs again op by op, charging each element to the first
        op whose output is not finite while its input was (or to the float32 output). A
        set's message names its first such feature, its earliest op, the element and the
        op's input.
        """
        if self.features is None:
            return None
        raw = batch.values.to(torch.float64)
        sets = _Sets(batch)
        index = sets.index.numpy()
        rows = np.zeros(batch.num_sets, dtype=bool)
        charged: list[tuple[FeatureSpec, np.ndarray, np.ndarray]] = []
        for f in self.features:
            steps = [
                (i, op)
                for i, op in enumerate(f.ops)
                if not (isinstance(op, StandardizeOp) and f.name not in self.stats)
            ]
            x = raw[:, self.raw_features.index(f.source)]
            for _, op in steps:
                x = _apply_op(op, x, raw, self.raw_features, sets, self.stats.get(f.name))
            if bool((x.abs() <= FLOAT32_MAX).all()):  # False for NaN and inf
                continue
            x = raw[:, self.raw_features.index(f.source)]
            op_of = np.full(batch.num_elements, -1, dtype=np.int64)
            inputs = np.zeros(batch.num_elements, dtype=np.float64)
            for i, op in [*steps, (len(f.ops), None)]:
                if op is None:  # the float32 output
                    y = torch.where(x.abs() > FLOAT32_MAX, math.inf, x)
                else:
                    y = _apply_op(op, x, raw, self.raw_features, sets, self.stats.get(f.name))
                newly = (~torch.isfinite(y) & torch.isfinite(x)).numpy() & (op_of < 0)
                op_of[newly] = i
                inputs[newly] = x.numpy()[newly]
                x = y
            if (op_of >= 0).any():
                rows[index[op_of >= 0]] = True
                charged.append((f, op_of, inputs))
        if not charged:
            return None
        offsets = batch.offsets.numpy()

        def describe(r: int) -> str:
            for f, op_of, inputs in charged:
                ops = op_of[offsets[r] : offsets[r + 1]]
                hit = ops >= 0
                if hit.any():
                    i = int(ops[hit].min())
                    k = int(np.argmax(ops == i))
                    return _describe_nonfinite(f, i, k, float(inputs[offsets[r] + k]))
            raise AssertionError(f"set {r} has no non-finite feature")

        return Problem("transform", rows, describe)

    def pre_standardize(self, batch: SetBatch) -> dict[str, torch.Tensor]:
        """feature name -> float64 [E]: its values just before its standardize op."""
        raw = batch.values.to(torch.float64)
        sets = _Sets(batch)
        return {f.name: self._chain(f, raw, sets, stop_at_standardize=True) for f in self.to_fit}

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT_VERSION,
            "raw_features": list(self.raw_features),
            "features": None
            if self.features is None
            else _FEATURES.dump_python(self.features, mode="json"),
            "stats": {k: dict(v) for k, v in self.stats.items()},
            "weights": None if self.weights is None else self.weights.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FittedTransforms:
        if data.get("format") != FORMAT_VERSION:
            raise DataError(
                f"transforms format {data.get('format')!r} is not {FORMAT_VERSION}; the model was "
                "saved by another setpipe version"
            )
        features = None if data["features"] is None else _FEATURES.validate_python(data["features"])
        stats = {k: {s: float(v) for s, v in d.items()} for k, d in data["stats"].items()}
        weights = data.get("weights")  # absent from models saved before weights existed
        return cls(
            list(data["raw_features"]),
            features,
            stats,
            None if weights is None else SetWeights.from_dict(weights),
        )


def _describe_nonfinite(f: FeatureSpec, i: int, k: int, value: float) -> str:
    """Feature ``f``'s op ``i`` (len(ops): the float32 output) at element ``k`` of ``value``."""
    where = f"feature {f.name} (from {f.source})"
    after = f" after {', '.join(op.op for op in f.ops[:i])}" if i else ""
    shown = str(np.float32(value)) if abs(value) <= FLOAT32_MAX else str(value)
    if i == len(f.ops):
        return (
            f"{where}: {shown} at element {k}{after} does not fit float32; filter these rows "
            "or set data.on_bad_row: skip"
        )
    op = f.ops[i]
    if isinstance(op, LogOp):
        bound = (0.0 if op.op == "log" else -1.0) - op.eps
        return (
            f"{where}: {op.op} of {shown} at element {k}{after} (expected > {bound:g}); {LOG_FIX}"
        )
    return (
        f"{where}: {op.op} of {shown} at element {k}{after} is not finite; filter these rows "
        "or set data.on_bad_row: skip"
    )


class RunningMoments:
    """Count, mean and M2 of a stream of values, merged batch by batch (Chan et al. 1979)."""

    def __init__(self) -> None:
        self.count = 0
        self.mean = 0.0
        self.m2 = 0.0

    def add(self, x: torch.Tensor) -> None:
        n = int(x.numel())
        if n == 0:
            return
        x = x.to(torch.float64)
        mean = float(x.mean())
        m2 = float(((x - mean) ** 2).sum())
        total = self.count + n
        delta = mean - self.mean
        self.mean += delta * n / total
        self.m2 += m2 + delta * delta * self.count * n / total
        self.count = total

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / self.count) if self.count else 0.0


def fit_on_batches(transforms: FittedTransforms, batches: Iterable[SetBatch]) -> FittedTransforms:
    """Fill the standardize statistics from one pass over raw ``batches``."""
    targets = transforms.to_fit
    if not targets:
        return transforms
    moments = {f.name: RunningMoments() for f in targets}
    for batch in batches:
        for name, x in transforms.pre_standardize(batch).items():
            moments[name].add(x)
    stats = {}
    for name, m in moments.items():
        if m.count == 0:
            raise DataError(f"cannot fit standardize for {name!r}: the training data has no sets")
        if not math.isfinite(m.mean) or not math.isfinite(m.std):
            raise DataError(
                f"standardize for {name!r} saw non-finite values after the ops before it "
                f"(mean {m.mean}, std {m.std}); e.g. log of 0 needs eps or log1p"
            )
        # A constant feature is left centred, not divided by zero.
        stats[name] = {"mean": m.mean, "std": m.std if m.std > 0 else 1.0, "count": m.count}
    return FittedTransforms(transforms.raw_features, transforms.features, stats, transforms.weights)
