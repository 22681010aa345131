"""Set weights: ``data.weight`` x class weight x reweight factor, one number per set.

Declared in the job (``data.weight``, ``model.class_weights``, ``data.reweight``), fitted
in the same streaming pass over the training data that fits the feature transforms, and
saved with them (``FittedTransforms.to_dict``), so a resumed run, the checkpoint and the
registered model all carry the same numbers.

- ``model.class_weights: balanced`` is n / (C * n_c): n training sets, C classes, n_c sets of
  class c (sklearn's ``compute_class_weight("balanced")``); counts, not sums of weights.
- ``data.reweight`` (weaver's reweight_vars / reweight_classes) fills one histogram per class
  in one or two set-level variables, each set counted with its ``data.weight`` (1 without
  one). Both histograms are normalised to unit sum, so the factor changes a class's shape, not
  its total: factor(c, bin) = p_ref(bin) / p_c(bin), with p_ref the reference class's
  histogram or flat (1 / bins). Values outside the edges count in the first or last bin.
  Empty bins: where class c has no training set, the factor is ``max_weight`` if the reference
  has some there, else 1 (neither is there: nothing to correct). Every factor is capped at
  ``max_weight``. Classes not in ``reweight.classes`` keep 1 everywhere.

The same combined weight is given to every split's sets (the validation and test figures are
the weighted ones; ``Evaluation`` logs the unweighted ones beside them). Torch for the batch
only; the histograms are numpy.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from setpipe.data.batch import SetBatch
from setpipe.errors import DataError
from setpipe.spec.models import DataSpec, ModelSpec, ReweightSpec


def bin_index(values: np.ndarray, edges: list[list[float]]) -> np.ndarray:
    """int64 [N]: each row's bin in the flattened (row-major) 1-D or 2-D histogram.

    ``values`` [N, V], one column per variable. Bins are [edge_i, edge_i+1); values below the
    first edge fall in the first bin, at or above the last edge in the last bin.
    """
    index = np.zeros(len(values), dtype=np.int64)
    for v, e in enumerate(edges):
        inner = np.asarray(e[1:-1], dtype=np.float64)
        index = index * (len(e) - 1) + np.searchsorted(inner, values[:, v], side="right")
    return index


@dataclass
class Reweight:
    """Fitted histogram reweighting: a factor per (class, bin)."""

    vars: list[str]
    edges: list[list[float]]
    factors: np.ndarray
    """float64 [C, bins]: the factor of a set of class c in bin b."""
    histograms: np.ndarray
    """float64 [C, bins]: the (data.weight-weighted) training histograms they came from."""

    def factor(self, labels: np.ndarray, values: np.ndarray) -> np.ndarray:
        return self.factors[labels, bin_index(values, self.edges)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "vars": list(self.vars),
            "edges": [list(e) for e in self.edges],
            "factors": self.factors.tolist(),
            "histograms": self.histograms.tolist(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Reweight:
        return cls(
            list(data["vars"]),
            [[float(x) for x in e] for e in data["edges"]],
            np.asarray(data["factors"], dtype=np.float64),
            np.asarray(data["histograms"], dtype=np.float64),
        )


def reweight_factors(histograms: np.ndarray, spec: ReweightSpec) -> np.ndarray:
    """float64 [C, bins]: factor = p_ref / p_c per bin, capped (module docstring)."""
    num_classes, bins = histograms.shape
    totals = histograms.sum(axis=1)
    if spec.reference == "flat":
        reference = np.full(bins, 1.0 / bins)
    else:
        if totals[spec.reference] <= 0:
            raise DataError(
                f"data.reweight.reference: class {spec.reference} has no training sets (or only "
                "zero weights) to take its histogram from; choose another class or flat"
            )
        reference = histograms[spec.reference] / totals[spec.reference]
    factors = np.ones((num_classes, bins))
    classes = range(num_classes) if spec.classes is None else spec.classes
    for c in classes:
        if totals[c] <= 0:
            continue  # no training set of this class: nothing to fit, factor 1
        own = histograms[c] / totals[c]
        ratio = np.where(reference > 0, spec.max_weight, 1.0)
        np.divide(reference, own, out=ratio, where=own > 0)
        factors[c] = np.minimum(ratio, spec.max_weight)
    return factors


@dataclass
class SetWeights:
    """The fitted class weights and reweighting of a job (``data.weight`` is read per row)."""

    class_weights: list[float] | None = None
    reweight: Reweight | None = None

    def apply(self, batch: SetBatch, values: np.ndarray | None) -> SetBatch:
        """``batch`` with ``weights`` = its ``data.weight`` (1 without) x class weight x
        reweight factor; ``values`` [B, V] are the reweight variables of its sets."""
        labels = batch.targets.long().numpy() if batch.targets is not None else None
        if labels is None:
            raise DataError("class weights and reweighting need the sets' labels (data.label)")
        w = (
            np.ones(batch.num_sets)
            if batch.weights is None
            else batch.weights.numpy().astype(np.float64)
        )
        if self.class_weights is not None:
            w = w * np.asarray(self.class_weights, dtype=np.float64)[labels]
        if self.reweight is not None:
            assert values is not None, "reweight_values(table, spec) gives the variables"
            w = w * self.reweight.factor(labels, values)
        return replace(batch, weights=torch.from_numpy(w.astype(np.float32)))

    def to_dict(self) -> dict[str, Any]:
        return {
            "class_weights": self.class_weights,
            "reweight": None if self.reweight is None else self.reweight.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SetWeights:
        reweight = data.get("reweight")
        cw = data.get("class_weights")
        return cls(
            None if cw is None else [float(x) for x in cw],
            None if reweight is None else Reweight.from_dict(reweight),
        )


class WeightFit:
    """Class counts and per-class histograms, filled batch by batch in the transforms' pass."""

    def __init__(self, spec: DataSpec, model: ModelSpec) -> None:
        self.model = model
        self.reweight = spec.reweight
        self.num_classes = model.num_classes or 0
        self.counts = np.zeros(self.num_classes, dtype=np.int64)
        self.bins = 1
        if self.reweight is not None:
            for edges in self.reweight.vars.values():
                self.bins *= len(edges) - 1
        self.histograms = np.zeros((self.num_classes, self.bins), dtype=np.float64)

    @staticmethod
    def needed(spec: DataSpec, model: ModelSpec | None) -> bool:
        """Whether anything is fitted or declared (else no SetWeights at all)."""
        return model is not None and (model.class_weights is not None or spec.reweight is not None)

    @property
    def needs_pass(self) -> bool:
        return self.model.class_weights == "balanced" or self.reweight is not None

    def add(self, batch: SetBatch, values: np.ndarray | None) -> None:
        """Count ``batch``'s sets (raw, after the bad rows are dropped); ``values`` [B, V]."""
        labels = batch.targets.long().numpy()
        self.counts += np.bincount(labels, minlength=self.num_classes)
        if self.reweight is not None:
            assert values is not None
            w = None if batch.weights is None else batch.weights.numpy().astype(np.float64)
            edges = list(self.reweight.vars.values())
            flat = labels * self.bins + bin_index(values, edges)
            self.histograms += np.bincount(
                flat, weights=w, minlength=self.num_classes * self.bins
            ).reshape(self.num_classes, self.bins)

    def result(self) -> SetWeights:
        declared = self.model.class_weights
        class_weights = None
        if declared == "balanced":
            empty = [c for c in range(self.num_classes) if self.counts[c] == 0]
            if empty:
                raise DataError(
                    f"model.class_weights: balanced: class {', '.join(map(str, empty))} has no "
                    f"sets in the training data (counts {self.counts.tolist()}); give explicit "
                    "class_weights or fix the data"
                )
            n = int(self.counts.sum())
            class_weights = [n / (self.num_classes * int(k)) for k in self.counts]
        elif declared is not None:
            class_weights = [float(x) for x in declared]
        reweight = None
        if self.reweight is not None:
            reweight = Reweight(
                list(self.reweight.vars),
                [list(e) for e in self.reweight.vars.values()],
                reweight_factors(self.histograms, self.reweight),
                self.histograms.copy(),
            )
        return SetWeights(class_weights, reweight)
