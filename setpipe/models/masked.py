"""Masked set modeling (``model.task: pretrain_masked``): Golling et al., "Masked Particle
Modeling on Sets" (MPM), as continuous regression of the model's (transformed) features.

Per set, a fresh random fraction of the elements is masked: their features, all but
``visible_features``, are replaced by one learned mask token [F] before the encoder's
element layers, and a decoder predicts the replaced features from the rest of the set.
The loss is the squared error over the masked elements' predicted features. Nothing
reads a label. The encoder is the very module a classify job builds from the same
``model.encoder`` (its parameters under ``encoder.``), so a classify job can start from it;
the mask token, the decoder and the buffer of predicted features live under other names.

Backbones:

- Set Transformer: the masked set goes through the SAB/ISAB blocks (every element, mask
  tokens included, attends to the whole set); the decoder MLP reads each masked element's
  block output beside its set's PMA output (so every encoder parameter learns). Whole
  sets, as the encoder itself.
- UMBC (mini-batch consistent): pass 1 folds the masked set's chunks into the slot state
  and finalizes its slots (``UMBC.slot_states``: the K slots after the slot head's SAB
  blocks, then its PMA outputs, so the slot head learns too); pass 2 runs over the chunks
  again and predicts each masked element from its own masked input (mask token and
  visible features) and its cross-attention to its set's slots (``SlotAttention`` of
  setpipe/models/slot_context.py, the re-ranking head's). Memory is one chunk plus the
  slots whatever the set size, and the loss does not depend on the partition into chunks
  (the slots are MBC, pass 2 is row-wise).

A masked element's own replaced features reach nothing: they are overwritten before the
first layer (tests/models/test_masked.py changes them and checks the predictions are
bit-identical). With no visible feature the masked elements of a set are indistinguishable
(permutation equivariance), so all get one prediction: the best is the mean of what was
masked given the rest. MPM's answer is pT ordering; here ``visible_features`` (e.g. the pT
fraction) tells them apart without breaking permutation symmetry.

Outputs of ``forward`` (training) and ``reconstruction`` (evaluation): [B, 2] per set, the
summed squared error over its masked entries and their count (masked elements x predicted
features). ``predict_chunked`` and the serving passes return the set embedding [B, H] of
the unmasked set: what a pretrained encoder offers downstream.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from setpipe.data.batch import SetBatch, chunk_ranges
from setpipe.errors import ModelError
from setpipe.models.protocol import mlp, state_dtype
from setpipe.models.set_model import SetModel
from setpipe.models.set_transformer import SetTransformerEncoder
from setpipe.models.slot_context import SlotAttention
from setpipe.models.umbc import UMBC
from setpipe.spec.models import PretrainSpec

EVAL_SEED = 20240124
"""Seed of the evaluation masks (any fixed number: the same masks every epoch)."""


def draw_mask(
    offsets: torch.Tensor, fraction: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """bool [E]: which elements are masked. Set b of n_b elements gets
    m_b = min(max(round(fraction * n_b), 1), n_b - 1) masked elements, a uniform random
    m_b-subset (drawn on the CPU from ``generator``); a set of one element gets none.
    """
    offsets_cpu = offsets.cpu()
    sizes = offsets_cpu[1:] - offsets_cpu[:-1]
    e = int(offsets_cpu[-1]) if offsets_cpu.numel() else 0
    count = torch.round(sizes.double() * fraction).long().clamp(min=1)
    count = torch.minimum(count, sizes - 1).clamp(min=0)
    set_index = torch.repeat_interleave(torch.arange(sizes.numel()), sizes)
    keys = torch.rand(e, generator=generator, dtype=torch.float64)
    # Sort by (set, key): keys are in [0, 1), so set + key orders sets first (exact in float64).
    order = torch.argsort(set_index.double() + keys)
    rank = torch.arange(e) - offsets_cpu[:-1][set_index[order]]
    mask = torch.zeros(e, dtype=torch.bool)
    mask[order] = rank < count[set_index[order]]
    return mask.to(offsets.device)


class MaskedSetModel(SetModel):
    """An encoder (UMBC or Set Transformer) with a mask token and a masked-element decoder."""

    def __init__(
        self,
        encoder: nn.Module,
        num_features: int,
        mask_fraction: float,
        decoder: Sequence[int],
        predicted: Sequence[bool] | None = None,
    ) -> None:
        super().__init__(encoder, nn.Identity(), "pretrain_masked")  # type: ignore[arg-type]
        self.mask_fraction = mask_fraction
        keep = torch.ones(num_features, dtype=torch.bool)
        if predicted is not None:
            keep = torch.as_tensor(list(predicted), dtype=torch.bool)
        # Saved with the weights: a served pretrain model needs no feature names to load.
        self.register_buffer("predicted", keep)
        self.mask_token = nn.Parameter(torch.zeros(num_features))
        hidden = list(decoder)
        if isinstance(encoder, UMBC):
            dim = encoder.dim
            self.context_attention: nn.Module | None = SlotAttention(
                num_features, dim, dim, encoder.heads
            )
            self.query = mlp([num_features, dim])
            self.decoder = mlp([2 * dim, *hidden, num_features], activate_last=False)
        elif isinstance(encoder, SetTransformerEncoder):
            self.context_attention = None
            width = encoder.net.pma.mab.fc_q.in_features + encoder.net.out_dim
            self.decoder = mlp([width, *hidden, num_features], activate_last=False)
        else:
            raise ModelError(
                "task pretrain_masked needs a umbc or set_transformer encoder, got "
                f"{type(encoder).__name__}"
            )

    # ------------------------------------------------------------------ masking

    def masked_inputs(self, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """values [E, F] with the predicted features of masked elements set to the mask token."""
        replace = mask[:, None] & self.predicted[None, :]
        return torch.where(replace, self.mask_token.to(values.dtype), values)

    def predict_masked(
        self,
        batch: SetBatch,
        mask: torch.Tensor,
        chunk_size: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Predictions [M, F] for the masked elements (``mask`` [E], in element order).

        ``chunk_size`` (UMBC): both passes fold that many elements at a time; None: whole.
        ``generator`` draws the UMBC's random slots, if any.
        """
        inputs = self.masked_inputs(batch.values, mask)
        if self.context_attention is None:
            x, pad = SetBatch(inputs, batch.offsets).padded()
            net = self.encoder.net  # type: ignore[union-attr]
            h = net.input(x)
            for block in net.blocks:
                h = block(h, pad)
            pooled = net.pma(h, pad).flatten(1)  # [B, seeds * dim]: PMA learns too
            owner = batch.set_index()[mask]
            return self.decoder(torch.cat([h[pad][mask], pooled[owner]], 1))  # type: ignore[no-any-return]
        enc: UMBC = self.encoder  # type: ignore[assignment]
        step = chunk_size or max(batch.num_elements, 1)
        masked_batch = SetBatch(inputs, batch.offsets)
        state = enc.init_state(batch.num_sets, inputs.device, state_dtype(inputs.dtype), generator)
        for _, _, values, set_index in chunk_ranges(masked_batch, step):
            state = enc.update(state, values, set_index)
        slots = enc.slot_states(state).to(inputs.dtype)  # [B, K + seeds, D]
        parts = []
        for start, stop, values, set_index in chunk_ranges(masked_batch, step):
            keep = mask[start:stop]
            x, s = values[keep], set_index[keep]
            parts.append(
                self.decoder(torch.cat([self.query(x), self.context_attention(x, s, slots)], 1))
            )
        if not parts:
            return inputs.new_zeros(0, inputs.shape[1])
        return torch.cat(parts)

    def reconstruction(
        self,
        batch: SetBatch,
        chunk_size: int | None = None,
        generator: torch.Generator | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Per set [B, 2]: (Σ squared error over masked entries, their count).

        The mask is drawn from ``generator`` first (then the random slots, if any) unless given.
        """
        if mask is None:
            mask = draw_mask(batch.offsets, self.mask_fraction, generator)
        pred = self.predict_masked(batch, mask, chunk_size, generator)
        target = batch.values[mask]
        err = (pred.float() - target.float()) if pred.dtype != torch.float64 else pred - target
        cols = self.predicted.to(err.dtype)
        sse_elem = (err.square() * cols).sum(1)
        owner = batch.set_index()[mask]
        sse = sse_elem.new_zeros(batch.num_sets).index_add(0, owner, sse_elem)
        count = sse_elem.new_zeros(batch.num_sets).index_add(
            0, owner, cols.sum().expand_as(sse_elem)
        )
        return torch.stack([sse, count], 1)

    # ------------------------------------------------------------------ SetModel passes

    def forward(
        self,
        batch: SetBatch,
        *,
        grad_budget: int | None = None,
        chunk_size: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Training: ``reconstruction`` on a fresh mask from ``generator`` (whole sets)."""
        if grad_budget is not None:
            raise ModelError("task pretrain_masked does not use train.grad_element_budget")
        return self.reconstruction(batch, None, generator)

    def predict_chunked(self, batch: SetBatch, chunk_size: int) -> torch.Tensor:
        """Evaluation: ``reconstruction`` [B, 2] in chunks, on masks drawn from a generator
        seeded with EVAL_SEED for every batch, so each epoch's validation loss is measured on
        the same masks. (Serving uses ``embed_chunked``: the set embedding.)"""
        generator = torch.Generator().manual_seed(EVAL_SEED)
        return self.reconstruction(batch, chunk_size, generator)


def masked_loss(outputs: torch.Tensor) -> torch.Tensor:
    """Mean over sets holding a masked element of their mean squared error per masked entry
    (``outputs`` as ``MaskedSetModel.forward`` returns them, [B, 2])."""
    sse, count = outputs[:, 0], outputs[:, 1]
    has = count > 0
    if not bool(has.any()):
        return (sse * 0.0).sum()  # keeps the graph (DDP expects a gradient) at zero
    return (sse[has] / count[has]).mean()


def build_masked_model(
    encoder: nn.Module,
    num_features: int,
    spec: PretrainSpec | None,
    feature_names: Sequence[str] | None = None,
) -> MaskedSetModel:
    """The pretraining model of ``model.pretrain`` around ``encoder``.

    Without ``feature_names`` every feature counts as predicted until weights are loaded:
    the ``predicted`` buffer saved with them says which were (how a served model loads).
    """
    spec = spec or PretrainSpec()
    predicted = None
    if spec.visible_features and feature_names is not None:
        predicted = [name not in spec.visible_features for name in feature_names]
    return MaskedSetModel(encoder, num_features, spec.mask_fraction, spec.decoder, predicted)
