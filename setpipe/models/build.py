"""build_model: a ModelSpec (validated at load) and the data's widths -> a SetModel."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from setpipe.data.transforms import FittedTransforms
from setpipe.errors import ModelError
from setpipe.models.deepsets import DeepSets
from setpipe.models.heads import ClassifyHead, RankHead, RegressHead
from setpipe.models.masked import build_masked_model
from setpipe.models.pairwise import PairwiseEmbedding
from setpipe.models.set_model import SetModel
from setpipe.models.set_transformer import SetTransformerEncoder
from setpipe.models.slot_context import SlotStates, slot_layout
from setpipe.models.umbc import UMBC
from setpipe.spec.models import DeepSetsSpec, ModelSpec, TaskHeadSpec, UMBCSpec


def build_model(
    spec: ModelSpec,
    num_features: int,
    num_context: int = 0,
    feature_names: Sequence[str] | None = None,
    transforms: FittedTransforms | None = None,
) -> SetModel:
    """The model a job describes, for ``num_features`` element and ``num_context`` set features.

    The context joins the encoder's output (DeepSets: before rho) so every head sees it.
    ``feature_names`` (the model features, in order) place ``model.pretrain.visible_features``
    for task pretrain_masked; without them every feature is predicted (until the saved
    weights are loaded: they carry which features were). ``transforms`` (fitted) let
    ``model.encoder.pairwise`` read raw kinematics back from the model features; a
    pairwise model built without them loads weights but refuses to run.
    """
    if num_features < 1:
        raise ModelError(
            f"the model needs at least one element feature, got num_features={num_features}: "
            "check data.elements / data.features"
        )
    if num_context < 0:
        raise ModelError(f"num_context must be >= 0, got {num_context}")
    enc = spec.encoder
    encoder: nn.Module
    if isinstance(enc, DeepSetsSpec):
        encoder = DeepSets(
            num_features,
            enc.phi,
            enc.rho,
            enc.pooling,
            num_context,
            lcm_hidden=enc.lcm_hidden,
            lcm_assoc_weight=enc.lcm_assoc_weight,
            lcm_partition_chunks=enc.lcm_partition_chunks,
        )
    elif isinstance(enc, UMBCSpec):
        head = enc.slot_head
        encoder = UMBC(
            num_features,
            enc.embed,
            enc.slots,
            enc.heads,
            enc.dim,
            attention=enc.attention,
            random_slots=enc.random_slots,
            slot_residual=enc.slot_residual,
            slot_head=head.kind,
            sab_layers=getattr(head, "sab_layers", 0),
            pma_seeds=getattr(head, "pma_seeds", 1),
            num_context=num_context,
        )
    else:
        encoder = SetTransformerEncoder(
            num_features,
            enc.dim,
            enc.heads,
            enc.layers,
            enc.pma_seeds,
            enc.inducing_points,
            num_context,
            pairwise=None
            if enc.pairwise is None
            else PairwiseEmbedding(enc.pairwise, transforms, enc.heads),
        )
    out_dim: int = encoder.out_dim  # type: ignore[assignment]
    if spec.heads is not None:
        heads = nn.ModuleDict({h.name: _head(h, out_dim, num_features) for h in spec.heads})
        return SetModel(encoder, heads, {h.name: h.task for h in spec.heads})
    if spec.task == "pretrain_masked":
        return build_masked_model(encoder, num_features, spec.pretrain, feature_names)
    hidden, dropout = spec.head.hidden, spec.head.dropout
    task_head: nn.Module
    if spec.task == "classify":
        assert spec.num_classes is not None  # ModelSpec's validator guarantees it
        task_head = ClassifyHead(out_dim, hidden, spec.num_classes, dropout)
    elif spec.task == "regress":
        task_head = RegressHead(out_dim, hidden, dropout)
    elif spec.head.context == "slots":
        # Each element attends to its set's slots: UMBC's finalize gives them (SlotStates).
        if isinstance(encoder, UMBC):
            encoder = SlotStates(encoder)
        task_head = RankHead(
            num_features,
            encoder.out_dim,  # type: ignore[arg-type]
            hidden,
            dropout,
            slots=slot_layout(encoder),
            heads=spec.head.context_heads,
        )
    else:
        task_head = RankHead(num_features, out_dim, hidden, dropout)
    assert spec.task is not None  # ModelSpec's validator: task or heads
    return SetModel(encoder, task_head, spec.task)


def _head(spec: TaskHeadSpec, out_dim: int, num_features: int) -> nn.Module:
    """One of several heads (``model.heads``) on embeddings of width ``out_dim``."""
    if spec.task == "classify":
        assert spec.num_classes is not None  # TaskHeadSpec's validator guarantees it
        return ClassifyHead(out_dim, spec.hidden, spec.num_classes, spec.dropout)
    if spec.task == "regress":
        return RegressHead(out_dim, spec.hidden, spec.dropout, spec.offset, spec.scale)
    return RankHead(num_features, out_dim, spec.hidden, spec.dropout)
