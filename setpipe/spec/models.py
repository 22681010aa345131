"""The job: pydantic models for a complete setpipe training job, validated once at load.

Every model forbids unknown keys and every field carries a description (it becomes
the JSON Schema in ``schemas/job.schema.json`` that editors complete against).
Cross-field rules live beside the fields they join.
"""

from __future__ import annotations

import functools
import itertools
import re
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveInt,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from setpipe.spec._fields import suggest

NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
DEFAULT_ELEMENT_BUDGET = 16384
"""Elements in one batch, training's and serving's: ~150 jets of ~100 particles."""
DEFAULT_CHUNK_SIZE = 4096
"""Elements per MBC encoder update: constant memory whatever the set's size."""


def _accepts(annotation: Any, kind: type) -> bool:
    """Whether ``annotation`` (maybe ``X | None``) admits ``kind`` and not bool."""
    members = get_args(annotation) if get_origin(annotation) in (Union, UnionType) else ()
    options = members or (annotation,)
    return kind in options and bool not in options


@functools.cache
def _number_fields(model: type[BaseModel]) -> dict[str, type]:
    """{field: int or float} for the fields that take a number and not a boolean."""
    out: dict[str, type] = {}
    for name, info in model.model_fields.items():
        for kind in (float, int):
            if _accepts(info.annotation, kind):
                out[name] = kind
                break
    return out


def _distinct(names: list[str], what: str) -> list[str]:
    repeated = [n for n in dict.fromkeys(names) if names.count(n) > 1]
    if repeated:
        listed = ", ".join(f"{n} ({names.count(n)} times)" for n in repeated)
        raise ValueError(f"each {what} may appear once; duplicated: {listed}; remove the repeats")
    return names


class StrictModel(BaseModel):
    """Base of every job model: unknown keys are errors, values are validated on assignment,
    and no number may be NaN or infinite (``lr: .inf`` would train to NaN weights)."""

    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, frozen=False, allow_inf_nan=False
    )

    @model_validator(mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, data: Any) -> Any:
        # YAML reads yes/no/on/off/true as booleans, and lax pydantic takes True as 1:
        # "epochs: yes" must be an error, not one epoch.
        if not isinstance(data, dict):
            return data
        numbers = _number_fields(cls)
        errors = [
            InitErrorDetails(
                type="float_type" if numbers[key] is float else "int_type", loc=(key,), input=value
            )
            for key, value in data.items()
            if isinstance(value, bool) and key in numbers
        ]
        if errors:
            raise ValidationError.from_exception_data(cls.__name__, errors)
        return data


# --------------------------------------------------------------------------- data

Source = Annotated[
    str | list[str],
    Field(description="A Parquet file, a glob, a directory, or an s3:// / gs:// URI; or a list."),
]


class ParallelLists(StrictModel):
    """One list column per element feature, equal lengths within a row (awkward/HEP style)."""

    layout: Literal["parallel"] = Field(description="Parallel list columns, one per feature.")
    columns: list[str] = Field(
        min_length=1, description="The list<float|int> columns, one per element feature."
    )

    @field_validator("columns")
    @classmethod
    def _distinct_columns(cls, columns: list[str]) -> list[str]:
        return _distinct(columns, "column")

    @property
    def feature_names(self) -> list[str]:
        return list(self.columns)


class StructList(StrictModel):
    """One list<struct<...>> column whose struct fields are the element features."""

    layout: Literal["struct"] = Field(description="One list<struct> column with named fields.")
    column: str = Field(description="The list<struct<...>> column.")
    fields: list[str] = Field(min_length=1, description="The struct fields used as features.")

    @field_validator("fields")
    @classmethod
    def _distinct_fields(cls, fields: list[str]) -> list[str]:
        return _distinct(fields, "field")

    @property
    def feature_names(self) -> list[str]:
        return list(self.fields)


class VectorList(StrictModel):
    """One list<list<float>> or list<fixed_size_list<float, D>> column (points, embeddings)."""

    layout: Literal["vectors"] = Field(description="One list-of-vectors column.")
    column: str = Field(description="The list<list<float>> or list<fixed_size_list> column.")
    dim: PositiveInt = Field(description="The length D of every element vector.")
    names: list[str] | None = Field(
        default=None,
        description="Optional names for the D components (default: <column>_0 ... <column>_{D-1}).",
    )

    @model_validator(mode="after")
    def _names_match_dim(self) -> VectorList:
        if self.names is not None and len(self.names) != self.dim:
            raise ValueError(
                f"names has {len(self.names)} entries but dim is {self.dim}; give one name per "
                "component or leave names out"
            )
        return self

    @property
    def feature_names(self) -> list[str]:
        return list(self.names) if self.names else [f"{self.column}_{i}" for i in range(self.dim)]


ElementLayout = Annotated[
    ParallelLists | StructList | VectorList,
    Field(discriminator="layout", description="How the elements of a set are stored in a row."),
]


class LogOp(StrictModel):
    op: Literal["log", "log1p"] = Field(description="Natural log, or log(1 + x).")
    eps: float = Field(default=0.0, ge=0.0, description="Added before the log (guards log(0)).")


class ClipOp(StrictModel):
    op: Literal["clip"] = Field(description="Clip to [min, max].")
    min: float | None = Field(default=None, description="Lower bound, or none.")
    max: float | None = Field(default=None, description="Upper bound, or none.")

    @model_validator(mode="after")
    def _ordered(self) -> ClipOp:
        if self.min is None and self.max is None:
            raise ValueError("clip needs min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"clip min {self.min} is greater than max {self.max}")
        return self


class StandardizeOp(StrictModel):
    op: Literal["standardize"] = Field(
        description="(x - mean) / std, both fitted in one streaming pass over the training data."
    )


class CenterOp(StrictModel):
    op: Literal["center"] = Field(
        description="x minus the set's (weighted) mean of x: jet centring in rapidity and phi."
    )
    weight: str | None = Field(
        default=None, description="Element column used as weight (e.g. part_pt); none = plain mean."
    )
    periodic: bool = Field(
        default=False, description="Treat x as an angle in (-pi, pi]: wrap before and after."
    )


class FractionOp(StrictModel):
    op: Literal["fraction"] = Field(description="x divided by the set's sum of x (pT fraction).")


class AbsOp(StrictModel):
    op: Literal["abs"] = Field(description="Absolute value.")


class IsInOp(StrictModel):
    op: Literal["isin"] = Field(description="1.0 where x is one of values, else 0.0 (type flags).")
    values: list[float] = Field(min_length=1, description="The values that map to 1.0.")


TransformOp = Annotated[
    LogOp | ClipOp | StandardizeOp | CenterOp | FractionOp | AbsOp | IsInOp,
    Field(discriminator="op"),
]


class FeatureSpec(StrictModel):
    """One model input feature: an element column passed through a chain of transforms."""

    name: str = Field(description="Name of the feature as the model sees it.")
    source: str = Field(description="The element feature it is computed from.")
    ops: list[TransformOp] = Field(
        default_factory=list, description="Transforms applied in order (empty: passed through)."
    )


class RotateAugment(StrictModel):
    op: Literal["rotate"] = Field(
        description="Rotate the plane of two model features by one random angle per set "
        "(training only): jets are symmetric about their axis in (y_rel, phi_rel)."
    )
    features: tuple[str, str] = Field(description="The two model features spanning the plane.")


class ReflectAugment(StrictModel):
    op: Literal["reflect"] = Field(
        description="Flip the sign of each listed model feature with probability 1/2 per set "
        "(training only)."
    )
    features: list[str] = Field(min_length=1, description="Model features, each flipped apart.")


AugmentOp = Annotated[RotateAugment | ReflectAugment, Field(discriminator="op")]


class SplitSpec(StrictModel):
    """Split one source into train/validation/test by a stable hash of a key column."""

    key: str = Field(description="Set-level column hashed to assign each row to a split.")
    validation: float = Field(default=0.1, ge=0.0, lt=1.0, description="Fraction for validation.")
    test: float = Field(default=0.0, ge=0.0, lt=1.0, description="Fraction for test.")

    @model_validator(mode="after")
    def _leaves_training(self) -> SplitSpec:
        if self.validation + self.test >= 1.0:
            raise ValueError(
                f"validation + test = {self.validation + self.test:g} leaves nothing to train on; "
                "keep the sum below 1"
            )
        return self


class BatchSpec(StrictModel):
    element_budget: PositiveInt = Field(
        default=DEFAULT_ELEMENT_BUDGET,
        description="A batch closes when the next set would exceed this many elements; a larger "
        "set passes alone and is chunked by the encoder.",
    )
    max_set_size: PositiveInt | None = Field(
        default=None, description="Sets with more elements are bad rows (see on_bad_row)."
    )
    bucket_by_size: bool = Field(
        default=False, description="Group sets of similar size (less padding for attention models)."
    )


class ShuffleSpec(StrictModel):
    files: bool = Field(default=True, description="Shuffle the order of files each epoch.")
    buffer_sets: int = Field(
        default=10000, ge=0, description="Local shuffle buffer in sets (0 = no local shuffle)."
    )
    seed: int = Field(default=0, description="Seed for file order and the buffer.")


class ReweightSpec(StrictModel):
    """Histogram reweighting of classes onto a reference distribution (weaver's
    reweight_vars / reweight_classes), fitted in the streaming pass over the training data."""

    vars: dict[str, list[float]] = Field(
        description="One or two set-level numeric columns, each with its bin edges (at least "
        "two, increasing); values outside the edges count in the first or last bin.",
        json_schema_extra={"examples": [{"jet_pt": [500, 550, 600, 700], "jet_eta": [-2, 0, 2]}]},
    )
    classes: list[int] | None = Field(
        default=None,
        description="The classes reweighted onto the reference (default: every class); the "
        "others keep a factor of 1.",
    )
    reference: int | Literal["flat"] = Field(
        default="flat",
        description="The class whose (normalised) histogram the others are reweighted onto, or "
        "flat: the same weight in every bin.",
    )
    max_weight: float = Field(
        default=10.0,
        gt=0.0,
        description="Cap on a bin's factor reference/own (an almost empty bin would otherwise "
        "dominate the loss).",
    )

    @field_validator("vars")
    @classmethod
    def _increasing_edges(cls, value: dict[str, list[float]]) -> dict[str, list[float]]:
        if not 1 <= len(value) <= 2:
            raise ValueError(
                f"{len(value)} variables given; reweighting fills 1-D or 2-D histograms: name "
                "one or two set-level columns, e.g. {jet_pt: [500, 600, 700]}"
            )
        for name, edges in value.items():
            if len(edges) < 2 or any(b <= a for a, b in itertools.pairwise(edges)):
                raise ValueError(
                    f"{name}: bin edges {edges} must be at least two strictly increasing "
                    "numbers, e.g. [500, 550, 600, 700]"
                )
        return value

    @field_validator("classes")
    @classmethod
    def _distinct_classes(cls, value: list[int] | None) -> list[int] | None:
        if value is not None:
            _distinct([str(c) for c in value], "class")
        return value


class DataSpec(StrictModel):
    """Where the sets are and how a row maps to one set."""

    train: Source
    validation: Source | None = Field(default=None, description="Validation sets (or use split).")
    test: Source | None = Field(default=None, description="Held-out test sets (or use split).")
    split: SplitSpec | None = Field(
        default=None, description="Derive validation/test from train by a stable key hash."
    )
    elements: ElementLayout
    features: list[FeatureSpec] | None = Field(
        default=None,
        description="Model input features built from the element features; default: each element "
        "feature as it is.",
    )
    context: list[str] = Field(
        default_factory=list, description="Set-level numeric columns fed to the model (jet_pt)."
    )
    label: str | None = Field(default=None, description="Set-level label column.")
    element_label: str | None = Field(
        default=None, description="Per-element label list column (relevance, for rank)."
    )
    key: str | None = Field(
        default=None, description="Row key column kept beside predictions (query id, event id)."
    )
    weight: str | None = Field(
        default=None,
        description="Set-level weight column (a finite number >= 0 per row): weights the loss "
        "and every metric; the unweighted metrics are logged beside them (<name>_unweighted).",
    )
    reweight: ReweightSpec | None = Field(
        default=None,
        description="Classify: reweight classes onto a reference distribution in one or two "
        "set-level variables (histograms fitted on the training data, saved with the model).",
    )
    batch: BatchSpec = Field(default_factory=BatchSpec, description="Batching by element budget.")
    augment: list[AugmentOp] = Field(
        default_factory=list,
        description="Random symmetries applied to training batches after the transforms, drawn "
        "per set from the run's seed; never to validation, test or serving.",
    )
    shuffle: ShuffleSpec = Field(default_factory=ShuffleSpec, description="Shuffling.")
    on_bad_row: Literal["error", "skip"] = Field(
        default="error",
        description="NaN/inf, empty sets, unequal parallel lists, oversized sets: stop with an "
        "error naming the row, or skip the row and count it.",
    )

    @model_validator(mode="after")
    def _split_or_sources(self) -> DataSpec:
        if self.split is not None and (self.validation is not None or self.test is not None):
            raise ValueError(
                "give either split or validation/test sources, not both: split derives them from "
                "train"
            )
        element_features = set(self.elements.feature_names)
        for feature in self.features or []:
            if feature.source not in element_features:
                raise ValueError(
                    f"feature {feature.name!r} has source {feature.source!r}, which is not an "
                    f"element feature; expected one of {sorted(element_features)}"
                )
            for op in feature.ops:
                if isinstance(op, CenterOp) and op.weight and op.weight not in element_features:
                    raise ValueError(
                        f"feature {feature.name!r}: center weight {op.weight!r} is not an element "
                        f"feature; expected one of {sorted(element_features)}"
                    )
        model_features = set(self.feature_names)
        for aug in self.augment:
            unknown = sorted(set(aug.features) - model_features)
            if unknown:
                raise ValueError(
                    f"augment {aug.op}: {', '.join(map(repr, unknown))} is not a model feature; "
                    f"expected names from {sorted(model_features)}"
                )
            if isinstance(aug, RotateAugment) and aug.features[0] == aug.features[1]:
                raise ValueError(f"augment rotate needs two different features, got {aug.features}")
        names = [f.name for f in self.features or []]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"feature names must be unique; repeated: {', '.join(duplicated)}")
        return self

    @property
    def feature_names(self) -> list[str]:
        """The model's input features, in order."""
        if self.features is None:
            return self.elements.feature_names
        return [f.name for f in self.features]

    # Several heads (model.heads): their target columns, set by JobSpec at validation (the
    # heads live in the model section, the columns are read here). Empty: the single-head
    # form, whose columns are data.label and data.element_label.
    _head_targets: list[tuple[str, str]] = PrivateAttr(default_factory=list)

    @property
    def set_label_columns(self) -> list[str]:
        """The set-level label columns read into ``SetBatch.targets``: data.label, or each
        classify/regress head's target in model.heads order (then targets is [B, K])."""
        if self._head_targets:
            return [column for column, task in self._head_targets if task != "rank"]
        return [self.label] if self.label is not None else []

    @property
    def element_label_column(self) -> str | None:
        """The per-element label list read into ``SetBatch.element_targets``: data.element_label,
        or the rank head's target."""
        if self._head_targets:
            return next((column for column, task in self._head_targets if task == "rank"), None)
        return self.element_label

    @property
    def has_heads(self) -> bool:
        """True when the job has several heads (``model.heads``): targets is [B, K] float32."""
        return bool(self._head_targets)

    def set_head_targets(self, targets: list[tuple[str, str]]) -> None:
        """(target column, task) per head of model.heads; [] reads data.label/element_label."""
        self._head_targets = list(targets)


# --------------------------------------------------------------------------- model


class DeepSetsSpec(StrictModel):
    """DeepSets / Particle Flow Network: rho(pool(phi(x_i)))."""

    kind: Literal["deepsets"] = Field(description="DeepSets / PFN.")
    phi: list[PositiveInt] = Field(
        default=[128, 128, 128], min_length=1, description="Widths of the per-element MLP phi."
    )
    pooling: Literal["sum", "mean", "max", "lcm"] = Field(
        default="sum",
        description="Set pooling; lcm: a learned commutative binary operator applied as a "
        "balanced tree (Ong & Velickovic 2022), MBC only as far as it is associative.",
    )
    rho: list[PositiveInt] = Field(
        default=[128, 128], description="Widths of the MLP rho after pooling."
    )
    lcm_hidden: list[PositiveInt] = Field(
        default=[128],
        min_length=1,
        description="pooling lcm: hidden widths of g in a (+) b = a + b + g(LN(a + b), LN(a * b)).",
    )
    lcm_assoc_weight: float = Field(
        default=0.0,
        ge=0.0,
        description="pooling lcm: weight of the associativity regulariser added to the training "
        "loss: |(a (+) b) (+) c - a (+) (b (+) c)|^2 / |(a (+) b) (+) c|^2 over random triples of "
        "tree nodes (0 = off).",
    )
    lcm_partition_chunks: int = Field(
        default=3,
        ge=2,
        description="pooling lcm: the logged partition error (val_/test_lcm_partition_error) "
        "splits each set into this many contiguous chunks, folds them one by one and compares "
        "with the whole set.",
    )

    @model_validator(mode="after")
    def _lcm_fields_need_lcm(self) -> DeepSetsSpec:
        if self.pooling != "lcm":
            # By value, not by the fields set: a dumped job holds the defaults and must load.
            defaults = {"lcm_hidden": [128], "lcm_assoc_weight": 0.0, "lcm_partition_chunks": 3}
            given = [name for name, value in defaults.items() if getattr(self, name) != value]
            if given:
                raise ValueError(
                    f"{', '.join(given)} only apply to pooling lcm, not {self.pooling}; set "
                    "pooling: lcm or remove them"
                )
        return self


class SetTransformerHeadSpec(StrictModel):
    kind: Literal["set_transformer"] = Field(description="SAB layers over the slots, then PMA.")
    sab_layers: int = Field(default=1, ge=0, description="Self-attention blocks over the slots.")
    pma_seeds: PositiveInt = Field(default=1, description="PMA seed vectors (outputs).")


class MLPHeadSpec(StrictModel):
    kind: Literal["mlp"] = Field(description="Flatten the K slots and apply an MLP.")


SlotHeadSpec = Annotated[MLPHeadSpec | SetTransformerHeadSpec, Field(discriminator="kind")]


def _dim_heads_message(dim: int, heads: int) -> str:
    up = -(-dim // heads) * heads
    return (
        f"dim {dim} is not a multiple of heads {heads}; each head gets dim / heads channels, "
        f"so use dim {up} or a heads that divides {dim}"
    )


class UMBCSpec(StrictModel):
    """Universal MBC slot set encoder (Willette et al., ICML 2023)."""

    kind: Literal["umbc"] = Field(description="UMBC slot set encoder.")
    embed: list[PositiveInt] = Field(
        default=[128, 128], min_length=1, description="Widths of the row-wise element MLP."
    )
    slots: PositiveInt = Field(default=32, description="K learned slots.")
    heads: PositiveInt = Field(default=4, description="Attention heads H.")
    dim: PositiveInt = Field(default=128, description="Slot dimension (a multiple of heads).")
    attention: Literal["slot_sigmoid", "sigmoid", "slot_softmax", "set_softmax"] = Field(
        default="slot_sigmoid",
        description="Per-element normalisation: slot_sigmoid, sigmoid, softmax over slots, or the "
        "exact softmax over the set (log-sum-exp state).",
    )
    random_slots: bool = Field(
        default=False, description="Draw slots from a learned Gaussian once per set."
    )
    slot_residual: bool = Field(default=True, description="Add the slot to its attended value.")
    slot_head: SlotHeadSpec = Field(
        default_factory=lambda: SetTransformerHeadSpec(kind="set_transformer"),
        description="Any function of the K slot vectors after finalize.",
    )

    @model_validator(mode="after")
    def _dim_divides(self) -> UMBCSpec:
        if self.dim % self.heads:
            raise ValueError(_dim_heads_message(self.dim, self.heads))
        return self


JET_PAIR_FEATURES = ("ln_delta", "ln_kt", "ln_z", "ln_m2")
POINT_PAIR_FEATURES = ("distance", "displacement")


class JetPairwiseSpec(StrictModel):
    """Particle Transformer interaction features of each pair of particles (Qu et al. 2022).

    pT, rapidity and phi are read back from the named MODEL features by inverting their
    ops (log, log1p, standardize; center and wrapping leave differences unchanged), so the
    pairs see the same (augmented) particles as the attention does.
    """

    kind: Literal["jet"] = Field(description="ln Delta, ln kT, ln z, ln m^2 of particle pairs.")
    pt: str = Field(description="Model feature carrying pT (ops: log, log1p, standardize).")
    rapidity: str = Field(description="Model feature carrying rapidity (ops: center, standardize).")
    phi: str = Field(description="Model feature carrying phi (ops: center, standardize).")
    mass: str | None = Field(
        default=None,
        description="Model feature carrying the particle mass; none = massless particles "
        "(m^2 = 2 pT_a pT_b (cosh dy - cos dphi)).",
    )
    features: list[Literal["ln_delta", "ln_kt", "ln_z", "ln_m2"]] = Field(
        default=list(JET_PAIR_FEATURES), min_length=1, description="The pair features used."
    )
    embed: list[PositiveInt] = Field(
        default=[64, 64], description="Hidden widths of the pointwise pair MLP (-> one per head)."
    )
    max_set_size: PositiveInt = Field(
        default=256,
        description="Largest set accepted: pair features and biases hold O(n^2) numbers per set "
        "(heads x n x n).",
    )

    @property
    def named(self) -> dict[str, str]:
        """role -> model feature name."""
        roles = {"pt": self.pt, "rapidity": self.rapidity, "phi": self.phi}
        return roles | ({"mass": self.mass} if self.mass else {})


class PointPairwiseSpec(StrictModel):
    """Geometry of each pair of points: distance and displacement x_b - x_a."""

    kind: Literal["points"] = Field(description="Distance and displacement of point pairs.")
    coordinates: list[str] = Field(
        min_length=1,
        description="Model features carrying the coordinates (ops: center, standardize).",
    )
    features: list[Literal["distance", "displacement"]] = Field(
        default=list(POINT_PAIR_FEATURES), min_length=1, description="The pair features used."
    )
    embed: list[PositiveInt] = Field(
        default=[64, 64], description="Hidden widths of the pointwise pair MLP (-> one per head)."
    )
    max_set_size: PositiveInt = Field(
        default=256,
        description="Largest set accepted: pair features and biases hold O(n^2) numbers per set.",
    )

    @property
    def named(self) -> dict[str, str]:
        """role -> model feature name."""
        return {f"coordinate{i}": name for i, name in enumerate(self.coordinates)}


PairwiseSpec = Annotated[JetPairwiseSpec | PointPairwiseSpec, Field(discriminator="kind")]


class SetTransformerSpec(StrictModel):
    """Set Transformer (Lee et al. 2019) on the padded view; not mini-batch consistent."""

    kind: Literal["set_transformer"] = Field(description="Set Transformer (SAB/ISAB + PMA).")
    dim: PositiveInt = Field(default=128, description="Model width (a multiple of heads).")
    heads: PositiveInt = Field(default=4, description="Attention heads.")
    layers: PositiveInt = Field(default=2, description="SAB or ISAB blocks in the encoder.")
    inducing_points: PositiveInt | None = Field(
        default=None, description="Use ISAB with this many inducing points (large sets)."
    )
    pma_seeds: PositiveInt = Field(default=1, description="PMA seed vectors.")
    pairwise: PairwiseSpec | None = Field(
        default=None,
        description="Pair features embedded to one bias per head and added to the attention "
        "logits of every SAB block (SAB only: ISAB has no element-to-element attention).",
    )

    @model_validator(mode="after")
    def _dim_divides(self) -> SetTransformerSpec:
        if self.dim % self.heads:
            raise ValueError(_dim_heads_message(self.dim, self.heads))
        if self.pairwise is not None and self.inducing_points is not None:
            raise ValueError(
                "pairwise biases element-to-element attention, and ISAB (inducing_points) has "
                "none: its elements attend to the inducing points only; remove inducing_points "
                "or pairwise"
            )
        return self


EncoderSpec = Annotated[
    DeepSetsSpec | UMBCSpec | SetTransformerSpec,
    Field(discriminator="kind", description="The set encoder."),
]


Task = Literal["classify", "regress", "rank"]

PRETRAIN_TASK = "pretrain_masked"
"""Masked set modeling (setpipe/models/masked.py): no label; the targets are the elements."""

TASK_METRICS: dict[str, tuple[str, ...]] = {
    "classify": ("loss", "accuracy", "auc", "rej30", "rej50"),
    "regress": ("loss", "rmse"),
    "rank": ("loss", "ndcg", "mrr"),
    "pretrain_masked": ("loss", "masked_mse"),
}
"""What each task's evaluation reports per split, as ``<split>_<name>`` (val_auc, test_rmse):
the metrics code computes exactly these, and a monitored metric must be one of them.
rej30/rej50: background rejection 1/ε_B at signal efficiency 30 %/50 % (maximize)."""


def validation_metrics(task: str) -> tuple[str, ...]:
    """The names a gate or early stopping may watch for ``task``: val_loss, val_auc, ..."""
    return tuple(f"val_{name}" for name in TASK_METRICS[task])


class HeadSpec(StrictModel):
    hidden: list[PositiveInt] = Field(default=[64], description="Hidden widths of the task head.")
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0, description="Dropout in the head.")
    context: Literal["pooled", "slots"] = Field(
        default="pooled",
        description="Rank: what each element is scored against. pooled: the set embedding; "
        "slots: its own multi-head cross-attention read-out of the set's finalized slots "
        "(umbc: the K slots and the slot head's outputs; set_transformer: its PMA outputs; "
        "deepsets: the embedding as one slot, which adds nothing). Still two passes over "
        "chunks, constant memory in the list length.",
    )
    context_heads: PositiveInt = Field(
        default=4, description="Rank with context slots: attention heads of the read-out."
    )


HEAD_NAME_PATTERN = r"^[a-z][a-z0-9]{0,31}$"
"""A head's name: it becomes part of metric names (val_<head>_auc) and output keys."""


class TaskHeadSpec(StrictModel):
    """One of several heads on the shared encoder (``model.heads``), with its own target."""

    name: str = Field(
        pattern=HEAD_NAME_PATTERN,
        description="Head name: lower-case letters and digits, starting with a letter; names its "
        "metrics (val_<name>_auc) and its output in predictions.",
    )
    task: Task = Field(
        description="classify (set label), regress (set value), or rank (per-element relevance)."
    )
    target: str = Field(
        description="The column it learns: a set-level column (classify, regress) or a "
        "per-element label list column (rank)."
    )
    loss_weight: float = Field(
        default=1.0, gt=0.0, description="Weight of this head's loss in the total loss."
    )
    hidden: list[PositiveInt] = Field(default=[64], description="Hidden widths of the head.")
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0, description="Dropout in the head.")
    num_classes: int | None = Field(default=None, ge=2, description="Classes, for classify.")
    background_class: int | None = Field(
        default=None,
        ge=0,
        description="Classify: the background class of rejection (as model.background_class).",
    )
    offset: float = Field(
        default=0.0,
        description="Regress: the head predicts (target - offset) / scale and its loss is the "
        "MSE in those units; outputs and rmse are in the target's units.",
    )
    scale: float = Field(
        default=1.0, gt=0.0, description="Regress: see offset (e.g. the target's spread)."
    )

    @model_validator(mode="after")
    def _fields_fit_task(self) -> TaskHeadSpec:
        where = f"head {self.name!r}"
        if self.task == "classify" and self.num_classes is None:
            raise ValueError(f"{where}: task classify needs num_classes (2 or more)")
        if self.task != "classify":
            for name in ("num_classes", "background_class"):
                if getattr(self, name) is not None:
                    raise ValueError(
                        f"{where}: {name} is only for task classify, not {self.task}; remove it"
                    )
        if self.task != "regress" and (self.offset != 0.0 or self.scale != 1.0):
            raise ValueError(
                f"{where}: offset and scale are only for task regress, not {self.task}; remove them"
            )
        if (
            self.background_class is not None
            and self.num_classes is not None
            and self.background_class >= self.num_classes
        ):
            raise ValueError(
                f"{where}: background_class {self.background_class} is not a class of "
                f"num_classes {self.num_classes}; expected 0 to {self.num_classes - 1}"
            )
        return self

    def metric_names(self) -> tuple[str, ...]:
        """``val_<name>_<metric>`` for each metric of the head's task."""
        return tuple(f"val_{self.name}_{m}" for m in TASK_METRICS[self.task])


PART_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*$"
"""A part of the model: a parameter-name prefix at a module boundary (encoder, head,
encoder.embed.0)."""

Part = Annotated[str, Field(pattern=PART_PATTERN)]


class InitFromSpec(StrictModel):
    """Start from another model's weights (fine-tuning, warm start, a pretrained encoder)."""

    uri: str = Field(
        min_length=1,
        description="models:/NAME@ALIAS, models:/NAME/VERSION (in the job's MLflow store), or a "
        "setpipe checkpoint: its directory (weights.pt) or a weights file.",
        json_schema_extra={"examples": ["models:/qg_jets@champion", "models:/qg_jets/3"]},
    )
    parts: list[Part] | None = Field(
        default=None,
        min_length=1,
        description="Load only these parts (encoder, head, or a parameter-name prefix such as "
        "encoder.embed); every parameter under them must exist in both models with the same "
        "shape. None: every parameter.",
    )

    @field_validator("parts")
    @classmethod
    def _distinct_parts(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else _distinct(value, "part")


class PretrainSpec(StrictModel):
    """``model.pretrain``: masked set modeling (Golling et al., "Masked Particle Modeling on
    Sets"). A random fraction of each set's elements is replaced by a learned mask token and
    the model predicts their (transformed, model) features from the rest; no label is read."""

    mask_fraction: float = Field(
        default=0.3,  # MPM masks 30% of a jet's particles
        gt=0.0,
        lt=1.0,
        description="Fraction of each set's elements masked, drawn afresh per set and step: "
        "round(fraction * n) elements, at least 1 and at most n - 1 (a set of one element is "
        "left unmasked and adds nothing to the loss).",
    )
    visible_features: list[str] = Field(
        default=[],
        description="Model features a masked element keeps (the others are replaced by the mask "
        "token and predicted), e.g. a pT fraction that tells masked elements apart. Empty: every "
        "feature is masked, the masked elements of a set look alike and the best prediction is "
        "the mean of what was masked.",
    )
    decoder: list[PositiveInt] = Field(
        default=[64], description="Hidden widths of the MLP that predicts a masked element."
    )


class ModelSpec(StrictModel):
    encoder: EncoderSpec
    head: HeadSpec = Field(default_factory=HeadSpec, description="The task head.")
    task: Task | Literal["pretrain_masked"] | None = Field(
        default=None,
        description="classify (set label, num_classes), regress (set value), or rank elements. "
        "One head; for several, use heads instead.",
    )
    heads: list[TaskHeadSpec] | None = Field(
        default=None,
        min_length=1,
        description="Several heads on one encoder, each with its own task, target column and "
        "loss weight (instead of task/head/num_classes and data.label). The loss is the "
        "weighted sum; metrics are val_<head>_<metric> beside the total val_loss.",
    )
    pretrain: PretrainSpec | None = Field(
        default=None,
        description="Task pretrain_masked: the masking (default mask_fraction 0.3) and the "
        "decoder.",
    )
    init_from: InitFromSpec | str | None = Field(
        default=None,
        description="Start from another model's weights: a URI or path (every parameter), or "
        "{uri, parts} to load some parts, e.g. an encoder trained under another head. "
        "Resolved once when the run starts; a resumed run continues from its own checkpoint.",
    )

    @field_validator("init_from")
    @classmethod
    def _init_from_form(cls, value: InitFromSpec | str | None) -> InitFromSpec | None:
        # One form downstream: a bare URI is {uri: URI} (every parameter).
        return InitFromSpec(uri=value) if isinstance(value, str) else value

    num_classes: int | None = Field(default=None, ge=2, description="Classes, for classify.")
    background_class: int | None = Field(
        default=None,
        ge=0,
        description="Classify: the background class id that rejection (val_rej30, val_rej50) is "
        "measured against, each other class being a signal (default: 0 when binary; needed "
        "for rejection with 3 or more classes).",
    )
    class_weights: Literal["balanced"] | list[Annotated[float, Field(ge=0.0)]] | None = Field(
        default=None,
        description="Classify: a weight per class multiplying each set's weight in the loss and "
        "metrics; balanced: n / (num_classes * n_c), counted in the pass over the training data "
        "that fits the transforms and saved with them.",
        json_schema_extra={"examples": ["balanced", [1.0, 2.5]]},
    )

    @model_validator(mode="after")
    def _class_weights_fit(self) -> ModelSpec:
        weights = self.class_weights
        if weights is None:
            return self
        if self.task != "classify":
            raise ValueError(
                "model.class_weights is only for one classify head (model.task: classify), not "
                f"{self.task or 'model.heads'}; remove it"
            )
        if isinstance(weights, list):
            if self.num_classes is not None and len(weights) != self.num_classes:
                raise ValueError(
                    f"model.class_weights has {len(weights)} entries but num_classes is "
                    f"{self.num_classes}; give one weight per class or write balanced"
                )
            if not any(w > 0 for w in weights):
                raise ValueError(
                    "model.class_weights are all 0: no set would count; give positive weights"
                )
        return self

    @model_validator(mode="after")
    def _one_head_or_heads(self) -> ModelSpec:
        if self.heads is None:
            if self.task is None:
                raise ValueError(
                    "model needs task (one head: classify, regress or rank) or heads (several "
                    "heads on one encoder, each with name, task and target)"
                )
            return self
        # By value, not by the fields set: a dumped job (checkpoints, job.yaml) holds the
        # single-head defaults and must load again.
        single = {
            "model.task": self.task is not None,
            "model.head": self.head != HeadSpec(),
            "model.num_classes": self.num_classes is not None,
            "model.background_class": self.background_class is not None,
        }
        given = [name for name, present in single.items() if present]
        if given:
            raise ValueError(
                f"model.heads replaces {', '.join(given)}: remove {', '.join(given)} and give each "
                "head's task, hidden, dropout and num_classes inside model.heads"
            )
        _distinct([h.name for h in self.heads], "head name")
        ranks = [h.name for h in self.heads if h.task == "rank"]
        if len(ranks) > 1:
            raise ValueError(
                f"model.heads has {len(ranks)} rank heads ({', '.join(ranks)}); at most one head "
                "may score elements: keep one"
            )
        return self

    @property
    def task_names(self) -> str:
        """The task, or each head's name=task (tags, logs)."""
        if self.heads is None:
            return str(self.task)
        return ",".join(f"{h.name}={h.task}" for h in self.heads)

    def metric_names(self) -> tuple[str, ...]:
        """The validation metrics a gate or early stopping may watch: val_loss, val_auc, ...;
        with heads, val_loss (the weighted total) and val_<head>_<metric> for each head."""
        if self.heads is None:
            return validation_metrics(str(self.task))
        return ("val_loss", *(name for h in self.heads for name in h.metric_names()))

    @model_validator(mode="after")
    def _slots_for_rank(self) -> ModelSpec:
        if self.head.context == "slots" and self.task != "rank":
            raise ValueError(
                f"model.head.context: slots is for task rank (elements read their set's "
                f"slots), not {self.task}; remove it or use task rank"
            )
        return self

    @model_validator(mode="after")
    def _classes_for_classify(self) -> ModelSpec:
        if self.task == "classify" and self.num_classes is None:
            raise ValueError("task classify needs num_classes (2 or more)")
        if self.task != "classify" and self.num_classes is not None:
            raise ValueError(f"num_classes is only for task classify, not {self.task}")
        if self.background_class is not None:
            if self.task != "classify":
                raise ValueError(
                    f"model.background_class is only for task classify, not {self.task}; remove it"
                )
            if self.num_classes is not None and self.background_class >= self.num_classes:
                raise ValueError(
                    f"model.background_class {self.background_class} is not a class of "
                    f"num_classes {self.num_classes}; expected 0 to {self.num_classes - 1}"
                )
        return self


# --------------------------------------------------------------------------- train


class OptimizerSpec(StrictModel):
    name: Literal["adamw", "adam", "sgd"] = Field(default="adamw", description="Optimizer.")
    lr: float = Field(default=1e-3, gt=0.0, description="Peak learning rate.")
    weight_decay: float = Field(default=0.0, ge=0.0, description="Decoupled weight decay.")
    momentum: float = Field(default=0.9, ge=0.0, lt=1.0, description="Momentum, for sgd.")


class LRScheduleSpec(StrictModel):
    kind: Literal["constant", "cosine", "linear"] = Field(
        default="cosine", description="Decay after warmup."
    )
    warmup_steps: int = Field(default=0, ge=0, description="Linear warmup from 0, in steps.")
    min_lr_ratio: float = Field(
        default=0.0, ge=0.0, le=1.0, description="Final lr as a fraction of the peak."
    )


class CheckpointSpec(StrictModel):
    every_epochs: PositiveInt = Field(default=1, description="Checkpoint every N epochs.")
    keep: PositiveInt = Field(default=2, description="Checkpoints kept (the best is kept too).")


class EMASpec(StrictModel):
    decay: float = Field(
        default=0.999,
        gt=0.0,
        lt=1.0,
        description="Weight of the old average per optimizer step: ema <- decay * ema + "
        "(1 - decay) * weights (0.999 averages over ~1000 steps).",
    )
    start_step: int = Field(
        default=0,
        ge=0,
        description="Optimizer steps during which the EMA just copies the weights before it "
        "starts averaging.",
    )
    warmup: bool = Field(
        default=False,
        description="Decay min(decay, (1 + k) / (10 + k)) at the k-th averaged step, so an "
        "early average does not remember the initial weights.",
    )


class EarlyStoppingSpec(StrictModel):
    metric: str = Field(default="val_loss", description="Validation metric watched.")
    direction: Literal["minimize", "maximize"] = Field(default="minimize", description="Better.")
    patience: PositiveInt = Field(default=3, description="Epochs without improvement.")
    min_delta: float = Field(default=0.0, ge=0.0, description="Smallest change that counts.")


class TrainSpec(StrictModel):
    epochs: PositiveInt = Field(default=10, description="Passes over the training data.")
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec, description="Optimizer.")
    lr_schedule: LRScheduleSpec = Field(default_factory=LRScheduleSpec, description="LR schedule.")
    grad_clip: float | None = Field(
        default=1.0, gt=0.0, description="Clip the global gradient norm (none = off)."
    )
    grad_element_budget: PositiveInt | None = Field(
        default=None,
        description="Backpropagate through at most this many elements per set, the rest under "
        "no_grad, with an unbiased n/M-scaled gradient (none = full backprop).",
    )
    chunk_size: PositiveInt = Field(
        default=DEFAULT_CHUNK_SIZE,
        description="Elements per encoder update (constant memory on huge sets).",
    )
    workers: int = Field(
        default=1, ge=0, description="Ray Train workers (0 = in the driver process)."
    )
    use_gpu: bool = Field(default=False, description="One GPU per worker, NCCL, AMP.")
    amp: bool = Field(default=True, description="bf16/fp16 autocast on GPU (state stays fp32).")
    resources_per_worker: dict[str, float] = Field(
        default_factory=dict, description="Ray resources per worker, e.g. {CPU: 4}."
    )
    max_failures: int = Field(default=0, ge=-1, description="Restarts on worker failure (-1 = ∞).")
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec, description="Checkpoints.")
    early_stopping: EarlyStoppingSpec | None = Field(
        default=None, description="Stop when validation stops improving."
    )
    seed: int = Field(default=0, description="Seed for weights, sampling and data order.")
    freeze: list[Part] = Field(
        default_factory=list,
        description="Parts not trained (fine-tuning): encoder, head or a parameter-name prefix; "
        "their weights stay as loaded and the optimizer never sees them.",
    )
    lr_multipliers: dict[str, Annotated[float, Field(gt=0.0)]] = Field(
        default_factory=dict,
        description="Per-part learning rates as multiples of optimizer.lr, e.g. {encoder: 0.1}; "
        "the longest matching prefix wins, the rest run at 1. The LR schedule scales each alike.",
        json_schema_extra={"examples": [{"encoder": 0.1, "head": 1.0}]},
    )
    ema: EMASpec | None = Field(
        default=None,
        description="Keep an exponential moving average of the weights and use it for "
        "validation, the best epoch, test scoring and the registered model (none = off).",
    )
    accumulate: PositiveInt = Field(
        default=1,
        description="Batches per optimizer step (gradient accumulation): the step equals one "
        "step on the combined batches; the LR schedule counts optimizer steps.",
    )

    @field_validator("freeze")
    @classmethod
    def _distinct_freeze(cls, value: list[str]) -> list[str]:
        return _distinct(value, "part")

    @field_validator("lr_multipliers")
    @classmethod
    def _part_names(cls, value: dict[str, float]) -> dict[str, float]:
        bad = [name for name in value if not re.match(PART_PATTERN, name)]
        if bad:
            raise ValueError(
                f"{', '.join(map(repr, bad))}: expected a part (encoder, head) or a "
                "parameter-name prefix such as encoder.embed.0"
            )
        return value

    @model_validator(mode="after")
    def _budget_fits_chunk(self) -> TrainSpec:
        if self.grad_element_budget is not None and self.grad_element_budget > self.chunk_size:
            raise ValueError(
                f"grad_element_budget {self.grad_element_budget} exceeds chunk_size "
                f"{self.chunk_size}; the gradient subset must fit in one chunk"
            )
        return self


# --------------------------------------------------------------------------- tracking


class TrackingSpec(StrictModel):
    tracking_uri: str | None = Field(
        default=None,
        description="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite in workdir).",
    )
    experiment: str | None = Field(default=None, description="Experiment (default: job name).")
    model_name: str | None = Field(
        default=None, description="Registered model name (default: job name)."
    )
    alias: str = Field(
        default="champion", pattern=r"^[a-z][a-z0-9_-]*$", description="Alias moved by the gate."
    )
    metric: str | None = Field(
        default=None,
        description="Validation metric the gate compares (default by task: val_auc, val_rmse, "
        "val_ndcg).",
    )
    direction: Literal["maximize", "minimize"] | None = Field(
        default=None, description="Whether a larger metric is better (default by task)."
    )
    min_improvement: float | str | None = Field(
        default=None,
        description="How much the challenger must beat the champion by on the same validation "
        "data: 'Nsigma' (N times the paired-bootstrap σ of the difference, e.g. 1sigma) or an "
        "absolute delta (e.g. 0.002). None: any strict improvement.",
        json_schema_extra={"examples": ["1sigma", "2sigma", 0.002]},
    )

    @field_validator("min_improvement")
    @classmethod
    def _min_improvement_form(cls, value: float | str | None) -> float | str | None:
        if value is not None:
            parse_min_improvement(value)
        return value

    @property
    def improvement_rule(self) -> tuple[Literal["sigma", "delta"], float] | None:
        """("sigma", N) or ("delta", d) from ``min_improvement``; None: strict improvement."""
        return None if self.min_improvement is None else parse_min_improvement(self.min_improvement)


_SIGMA_RULE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*sigma\s*$")


def parse_min_improvement(value: float | str) -> tuple[Literal["sigma", "delta"], float]:
    """'1sigma' -> ("sigma", 1.0); 0.002 or '0.002' -> ("delta", 0.002)."""
    if isinstance(value, str):
        match = _SIGMA_RULE.match(value)
        if match:
            return "sigma", float(match.group(1))
        try:
            value = float(value)
        except ValueError:
            raise ValueError(
                "expected 'Nsigma' (e.g. 1sigma: beat the champion by one paired-bootstrap σ) "
                "or an absolute delta (e.g. 0.002)"
            ) from None
    if not (value >= 0.0 and value < float("inf")):
        raise ValueError("expected a finite number >= 0 (e.g. 0.002) or 'Nsigma' (e.g. 1sigma)")
    return "delta", float(value)


# --------------------------------------------------------------------------- schedule

_CRON_FIELD = re.compile(r"^[\d*/,\-A-Za-z?LW#]+$")


class ScheduleSpec(StrictModel):
    cron: str = Field(description="Five-field cron expression, e.g. '0 3 * * *'.")
    timezone: str = Field(default="UTC", description="IANA timezone the cron is read in.")
    on_new_data: bool = Field(
        default=False, description="Retrain only if the training files changed since last run."
    )
    concurrency: Literal["forbid", "replace", "allow"] = Field(
        default="forbid",
        description="A due run while the last one is still going: skip it, stop the old, or both.",
    )
    catchup: Literal["none", "latest", "all"] = Field(
        default="latest", description="Missed times after downtime: none, the latest one, or all."
    )

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, value: str) -> str:
        from croniter import croniter

        fields = value.split()
        if len(fields) != 5 or not all(_CRON_FIELD.match(f) for f in fields):
            raise ValueError(
                "expected five fields 'minute hour day-of-month month day-of-week', "
                "e.g. '0 3 * * *'"
            )
        if not croniter.is_valid(value):
            raise ValueError("not a valid cron expression; e.g. '0 3 * * *' is 03:00 every day")
        return value

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError("not an IANA timezone; e.g. UTC or Europe/Zurich") from None
        return value


class ClusterSpec(StrictModel):
    address: str | None = Field(
        default=None,
        description="Ray address (ray://, http://head:8265 for jobs, or auto); none = local Ray.",
    )
    runtime_env: dict[str, Any] = Field(
        default_factory=dict, description="Ray runtime_env for the job (pip, env_vars, ...)."
    )


# --------------------------------------------------------------------------- search

DISTRIBUTIONS = ("uniform", "loguniform", "randint", "lograndint")
"""Sampled ranges a search space may give instead of a list of choices: [low, high]
(uniform/loguniform: floats; randint/lograndint: integers, high exclusive as in Ray Tune)."""


class AshaSpec(StrictModel):
    """ASHA early stopping: at each rung a trial goes on only in the top 1/reduction_factor."""

    kind: Literal["asha"] = Field(default="asha", description="Asynchronous successive halving.")
    grace_epochs: PositiveInt = Field(
        default=1, description="Epochs every trial runs before it may be stopped."
    )
    reduction_factor: float = Field(
        default=2.0, gt=1.0, description="Keep the top 1/reduction_factor at each rung."
    )


class SearchSpec(StrictModel):
    """Hyperparameter search (``setpipe tune``): each trial is the job with the space's values."""

    space: dict[str, list[Any] | dict[str, list[float]]] = Field(
        min_length=1,
        description="Dotted override paths (model.encoder.slots) to a list of choices, or to "
        "one of {uniform, loguniform, randint, lograndint: [low, high]}.",
    )
    trials: int = Field(ge=1, description="Trials sampled from the space.")
    scheduler: AshaSpec | None = Field(
        default_factory=AshaSpec, description="Early stopping of poor trials (null: none)."
    )
    concurrency: PositiveInt = Field(default=1, description="Trials running at once.")
    metric: str | None = Field(
        default=None,
        description="Validation metric compared (default: early stopping's, else tracking's).",
    )
    direction: Literal["maximize", "minimize"] | None = Field(
        default=None, description="Whether larger is better (default: the metric's own)."
    )
    seed: int = Field(default=0, description="Seed of the sampler.")

    @field_validator("space")
    @classmethod
    def _space_shapes(cls, space: dict[str, Any]) -> dict[str, Any]:
        for path, value in space.items():
            if isinstance(value, list):
                if not value:
                    raise ValueError(f"{path}: an empty list of choices; give at least one value")
                continue
            kinds = list(value)
            if len(kinds) != 1 or kinds[0] not in DISTRIBUTIONS:
                raise ValueError(
                    f"{path}: {kinds} is not a distribution; expected a list of choices or one "
                    f"of {', '.join(DISTRIBUTIONS)}, e.g. {{loguniform: [1.0e-4, 3.0e-3]}}"
                )
            kind, bounds = kinds[0], value[kinds[0]]
            if len(bounds) != 2 or not bounds[0] < bounds[1]:
                raise ValueError(f"{path}: {kind} {bounds}: expected [low, high] with low < high")
            if kind.startswith("log") and bounds[0] <= 0:
                raise ValueError(f"{path}: {kind} {bounds}: low must be > 0 for a log scale")
            if kind.endswith("randint") and not all(float(b).is_integer() for b in bounds):
                raise ValueError(f"{path}: {kind} {bounds}: expected integer bounds")
        return space

    @property
    def paths(self) -> list[str]:
        return list(self.space)


# --------------------------------------------------------------------------- job

TASK_DEFAULT_METRIC = {
    "classify": ("val_auc", "maximize"),
    "regress": ("val_rmse", "minimize"),
    "rank": ("val_ndcg", "maximize"),
    "pretrain_masked": ("val_loss", "minimize"),
}


class JobSpec(StrictModel):
    """A complete setpipe training job."""

    name: str = Field(
        pattern=NAME_PATTERN,
        description="Job name: lower-case letters, digits, '-' and '_'; names runs and models.",
    )
    workdir: str = Field(default=".setpipe", description="Where everything a run writes lives.")
    data: DataSpec = Field(description="Data sources and layout.")
    model: ModelSpec = Field(description="Encoder, head and task.")
    train: TrainSpec = Field(default_factory=TrainSpec, description="Training.")
    tracking: TrackingSpec = Field(default_factory=TrackingSpec, description="MLflow.")
    schedule: ScheduleSpec | None = Field(default=None, description="Retraining schedule.")
    cluster: ClusterSpec = Field(default_factory=ClusterSpec, description="Ray cluster.")
    search: SearchSpec | None = Field(
        default=None, description="Hyperparameter search run by setpipe tune."
    )

    @model_validator(mode="after")
    def _pretrain_fits_job(self) -> JobSpec:
        """Task pretrain_masked: no labels, an encoder with per-element context, no estimator."""
        model, data = self.model, self.data
        if model.task != PRETRAIN_TASK:
            if model.pretrain is not None:
                raise ValueError(
                    f"model.pretrain is only for task {PRETRAIN_TASK}, not {model.task}; remove it"
                )
            return self
        for field in ("label", "element_label"):
            if getattr(data, field) is not None:
                raise ValueError(
                    f"task {PRETRAIN_TASK} reads no labels (its targets are the masked "
                    f"elements' own features): remove data.{field}"
                )
        if model.encoder.kind == "deepsets":
            raise ValueError(
                f"task {PRETRAIN_TASK} needs an encoder that gives each element a context: umbc "
                "(slots) or set_transformer (attention); deepsets pools the set to one vector"
            )
        if self.train.grad_element_budget is not None:
            raise ValueError(
                f"train.grad_element_budget is not available for task {PRETRAIN_TASK}; remove it"
            )
        names = data.feature_names
        visible = (model.pretrain or PretrainSpec()).visible_features
        unknown = [f for f in visible if f not in names]
        if unknown:
            raise ValueError(
                f"model.pretrain.visible_features: {', '.join(unknown)} is not a model feature; "
                f"expected some of {', '.join(names)}"
            )
        if set(names) <= set(visible):
            raise ValueError(
                "model.pretrain.visible_features keeps every feature visible, so nothing is "
                "predicted: keep at most all but one"
            )
        return self

    @model_validator(mode="after")
    def _labels_fit_task(self) -> JobSpec:
        task, data = self.model.task, self.data
        if self.model.heads is not None:
            self._heads_fit_data()
        elif task == "rank":
            if data.element_label is None:
                raise ValueError(
                    "task rank needs data.element_label (a per-element relevance list column)"
                )
            if data.label is not None:
                raise ValueError(
                    "task rank scores elements: remove data.label (a set-level label) and keep "
                    "data.element_label"
                )
        else:
            if data.label is None and task != PRETRAIN_TASK:
                raise ValueError(f"task {task} needs data.label (a set-level label column)")
            if data.element_label is not None:
                raise ValueError(f"data.element_label is only for task rank, not {task}; remove it")
        if (
            self.model.encoder.kind == "set_transformer"
            and self.train.grad_element_budget is not None
        ):
            raise ValueError(
                "train.grad_element_budget needs a mini-batch consistent encoder (deepsets, umbc); "
                "set_transformer sees whole sets"
            )
        reweight = data.reweight
        if reweight is not None:
            if task != "classify":
                raise ValueError(
                    "data.reweight reweights classes: it needs one classify head (model.task: "
                    f"classify), not {task or 'model.heads'}"
                )
            classes = self.model.num_classes or 0
            listed = [*(reweight.classes or [])]
            if isinstance(reweight.reference, int):
                listed.append(reweight.reference)
            outside = sorted({c for c in listed if not 0 <= c < classes})
            if outside:
                raise ValueError(
                    f"data.reweight names class {', '.join(map(str, outside))}, not a class of "
                    f"num_classes {classes}; expected 0 to {classes - 1}"
                )
        if self.train.use_gpu is False and self.train.resources_per_worker.get("GPU", 0) > 0:
            raise ValueError("train.resources_per_worker asks for GPU but train.use_gpu is false")
        return self

    @model_validator(mode="after")
    def _encoder_fits_data(self) -> JobSpec:
        enc = self.model.encoder
        lcm = isinstance(enc, DeepSetsSpec) and enc.pooling == "lcm"
        if lcm and self.train.grad_element_budget is not None:
            raise ValueError(
                "train.grad_element_budget: the n/M gradient estimator is unbiased for pooled "
                "sums, and pooling lcm is a learned, non-linear tree; remove "
                "train.grad_element_budget or use pooling sum/mean/max"
            )
        if isinstance(enc, SetTransformerSpec) and enc.pairwise is not None:
            _pairwise_fits_features(enc.pairwise, self.data)
        return self

    def _heads_fit_data(self) -> None:
        """model.heads: the targets are the heads' own (data.label and data.element_label
        are not used), each a column that is not an element column, the key or an input."""
        data, heads = self.data, self.model.heads or []
        for field in ("label", "element_label"):
            if getattr(data, field) is not None:
                raise ValueError(
                    f"data.{field}: with model.heads each head names its target column; remove "
                    f"data.{field} and set it as a head's target (model.heads[i].target)"
                )
        from_elements = set(
            data.elements.columns
            if isinstance(data.elements, ParallelLists)
            else [data.elements.column]
        )
        inputs = {"data.context": set(data.context), "data.key": {data.key} - {None}}
        for i, head in enumerate(heads):
            where = f"model.heads[{i}] ({head.name}): target {head.target!r}"
            if head.task != "rank" and head.target in from_elements:
                raise ValueError(
                    f"{where} is an element column; a {head.task} head needs a set-level column "
                    "(one number per row)"
                )
            for field, columns in inputs.items():
                if head.target in columns:
                    raise ValueError(
                        f"{where} is in {field}: the model would see what it must predict; "
                        f"remove it from {field} or choose another target"
                    )
        # A private attribute: not a job field, not validated on assignment, not dumped.
        data.set_head_targets([(h.target, h.task) for h in heads])

    @model_validator(mode="after")
    def _metrics_reported_by_task(self) -> JobSpec:
        # Checked here, not when training picks the metric: a typo must fail `setpipe
        # validate`, not a run after a data pass with an MLflow run already open.
        stop = self.train.early_stopping
        watched = [
            (("train", "early_stopping", "metric"), stop.metric if stop else None),
            (("tracking", "metric"), self.tracking.metric),
            (("search", "metric"), self.search.metric if self.search else None),
        ]
        model = self.model
        known = model.metric_names()
        errors = [
            _not_reported(where, metric, model.task, known)
            if model.heads is None
            else _not_a_head_metric(where, metric, known)
            for where, metric in watched
            if metric is not None and metric not in known
        ]
        if model.task == "classify" and (model.num_classes or 0) > 2:
            errors += [
                _no_background(where, metric, model.num_classes or 0)
                for where, metric in watched
                if metric in ("val_rej30", "val_rej50") and model.background_class is None
            ]
        for head in model.heads or []:
            if head.task == "classify" and (head.num_classes or 0) > 2:
                rejections = (f"val_{head.name}_rej30", f"val_{head.name}_rej50")
                errors += [
                    _no_background(
                        where, metric, head.num_classes or 0, f"head {head.name}'s background_class"
                    )
                    for where, metric in watched
                    if metric in rejections and head.background_class is None
                ]
        # Rejection is better when larger; early stopping's default direction is minimize.
        directions = [
            (("train", "early_stopping", "direction"), stop.metric, stop.direction)
            if stop
            else None,
            (("tracking", "direction"), self.tracking.metric, self.tracking.direction),
        ]
        errors += [
            _minimized_rejection(where, metric)
            for where, metric, direction in filter(None, directions)
            if str(metric).endswith(("_rej30", "_rej50")) and direction == "minimize"
        ]
        if errors:
            # A ValidationError raised here keeps each error's own location (the metric
            # field, so the message names its line), where a ValueError would name the job.
            raise ValidationError.from_exception_data(type(self).__name__, errors)
        return self

    @model_validator(mode="after")
    def _search_space_fits_job(self) -> JobSpec:
        # Every value of the space must give a valid job: a typo in a path or a width that
        # breaks dim % heads fails `setpipe validate`, not trial 7 an hour into a search.
        if self.search is not None:
            from setpipe.spec.space import space_errors

            errors = space_errors(self)
            if errors:
                raise ValidationError.from_exception_data(type(self).__name__, errors)
        return self

    @property
    def search_objective(self) -> tuple[str, Literal["maximize", "minimize"]]:
        """(metric, direction) a search compares trials on: search.metric, else early
        stopping's, else the gate's."""
        stop = self.train.early_stopping
        metric, direction = self.promotion
        if stop is not None:
            metric, direction = stop.metric, stop.direction
        search = self.search
        if search is not None and search.metric is not None:
            if search.metric != metric:
                direction = "minimize" if search.metric.endswith(("_loss", "_rmse")) else "maximize"
            metric = search.metric
        if search is not None and search.direction is not None:
            direction = search.direction
        return metric, direction

    @property
    def experiment_name(self) -> str:
        return self.tracking.experiment or self.name

    @property
    def model_name(self) -> str:
        return self.tracking.model_name or self.name

    @property
    def promotion(self) -> tuple[str, Literal["maximize", "minimize"]]:
        """(metric, direction) the registry gate compares."""
        if self.model.heads is not None:
            # Default: the first head's task metric (val_<head>_auc, _rmse or _ndcg).
            first = self.model.heads[0]
            metric, direction = TASK_DEFAULT_METRIC[first.task]
            metric = f"val_{first.name}_{metric.removeprefix('val_')}"
            if self.tracking.metric is not None and self.tracking.direction is None:
                # A named head metric takes its own task's direction (val_mass_rmse: minimize).
                direction = _head_metric_direction(self.tracking.metric, self.model.heads)
        else:
            metric, direction = TASK_DEFAULT_METRIC[str(self.model.task)]
        return self.tracking.metric or metric, self.tracking.direction or direction  # type: ignore[return-value]


PAIRWISE_OPS = {
    "pt": ("log", "log1p", "standardize"),
    "mass": ("log", "log1p", "standardize"),
    "rapidity": ("center", "standardize"),
    "phi": ("center", "standardize"),
    "coordinate": ("center", "standardize"),
}
"""Ops the pair features can see through: pT and mass are read back exactly (exp, affine);
angles and coordinates up to a per-set shift (center), which differences cancel."""


def _pairwise_fits_features(pairwise: JetPairwiseSpec | PointPairwiseSpec, data: DataSpec) -> None:
    """Each named feature is a model feature whose ops the pair features can invert."""
    where = "model.encoder.pairwise"
    by_name = {f.name: f for f in data.features or []}
    names = data.feature_names
    for role, name in pairwise.named.items():
        if name not in names:
            raise ValueError(
                f"{where}: {role} {name!r} is not a model feature; expected one of {names}"
            )
        allowed = PAIRWISE_OPS[role.rstrip("0123456789")]
        feature = by_name.get(name)
        if feature is None:
            continue  # a raw element feature, passed through unchanged
        bad = [op.op for op in feature.ops if op.op not in allowed]
        if bad:
            raise ValueError(
                f"{where}: {role} {name!r} goes through {', '.join(bad)}, which the pair features "
                f"cannot undo; they need the raw {role} and can undo only {', '.join(allowed)}: "
                f"declare another model feature from {feature.source!r} with those ops and name "
                "it here"
            )


def _minimized_rejection(where: tuple[str, ...], metric: str) -> InitErrorDetails:
    reason = f"{metric} (background rejection) is better when larger; set direction: maximize"
    return InitErrorDetails(
        type=PydanticCustomError("value_error", "{error}", {"error": reason}),
        loc=where,
        input="minimize",
    )


def _head_metric_direction(metric: str, heads: list[TaskHeadSpec]) -> str:
    """maximize or minimize for val_loss or val_<head>_<name> (loss and rmse: minimize)."""
    if metric == "val_loss":
        return "minimize"
    for head in heads:
        name = metric.removeprefix(f"val_{head.name}_")
        if name != metric and name in TASK_METRICS[head.task]:
            return "minimize" if name in ("loss", "rmse") else "maximize"
    return "maximize"


def _not_a_head_metric(
    where: tuple[str, ...], metric: str, known: tuple[str, ...]
) -> InitErrorDetails:
    near = suggest(metric, list(known))
    hint = f'; did you mean "{near}"?' if near else ""
    reason = (
        f"expected one of {', '.join(known)} (val_loss is the weighted total; each head "
        f"reports val_<head>_<metric>){hint}"
    )
    return InitErrorDetails(
        type=PydanticCustomError("value_error", "{error}", {"error": reason}),
        loc=where,
        input=metric,
    )


def _no_background(
    where: tuple[str, ...], metric: str, classes: int, field: str = "model.background_class"
) -> InitErrorDetails:
    reason = (
        f"{metric} with {classes} classes needs {field} (the class rejected); "
        "set it, e.g. background_class: 0"
    )
    return InitErrorDetails(
        type=PydanticCustomError("value_error", "{error}", {"error": reason}),
        loc=where,
        input=metric,
    )


def _not_reported(
    where: tuple[str, ...], metric: str, task: str, known: tuple[str, ...]
) -> InitErrorDetails:
    # Matched without the split prefix, which every name shares: "train_loss" -> val_loss,
    # while "val_auc" for a rank task finds no near name instead of the nearest "val_*".
    bare = metric.split("_", 1)[1] if metric.startswith(("val_", "train_", "test_")) else metric
    near = suggest(bare, list(TASK_METRICS[task]))
    hint = f'; did you mean "val_{near}"?' if near else ""
    reason = f"expected one of {', '.join(known)} (the validation metrics of task {task}){hint}"
    return InitErrorDetails(
        type=PydanticCustomError("value_error", "{error}", {"error": reason}),
        loc=where,
        input=metric,
    )
