"""The mini-batch consistent (MBC) encoder protocol: a commutative monoid over chunks of sets.

::

    state = encoder.init_state(num_sets, device, dtype)          # the identity
    state = encoder.update(state, values [e, F], set_index [e])  # any chunks, any order
    state = encoder.merge(state_a, state_b)                       # associative, commutative
    emb   = encoder.finalize(state, context)                      # [B, out_dim]

For every partition of every set into chunks, in any order, ``finalize`` returns the
whole-set result (up to floating-point re-association). A state is a plain dict of
tensors. Its ``partial_keys`` are the floating-point sums over elements, what the
gradient estimator scales (setpipe/models/estimator.py); other keys are either exact
integer counts (DeepSets' ``count`` and ``max_count``, int64) or fixed at
``init_state`` (the per-set random slots), identical in every partial state of one
pass, so ``merge`` keeps the first argument's copy.

Float32: the error of a chunked result against the whole-set one grows with the number
of chunks, not with the set's size. Each ``update`` sums its chunk into fresh zeros,
in tiles of at most 256 terms whose sums are summed in tiles again
(setpipe/models/segment.py), and only then adds it to the state: one rounding per
chunk, plus at most levels·255·u of the chunk's own sum (levels = 3 up to 1.7e7
elements); counts are int64. Measured on one set in float32 against float64
(bench/float32_sums.py, n = 1e7): 1e-7 (DeepSets Σφ) and 2e-8 (UMBC Σa) whole, 8e-7
and 6e-7 in 2442 chunks of 4096, where running sums gave 2e-3 (DeepSets, whole and
chunked) and 2e-2 (UMBC Σa, whole). Partial sums are kept in float32 even under
autocast (float64 when the values are float64): a bf16 running sum over 1e6 elements
would lose every digit.
"""

from __future__ import annotations

import itertools
from abc import ABC, abstractmethod
from collections.abc import Iterable

import torch
from torch import nn

from setpipe.data.batch import SetBatch
from setpipe.errors import ModelError

MBCState = dict[str, torch.Tensor]
"""Per-set partial state; every tensor's first axis is the set (B)."""


def state_dtype(values_dtype: torch.dtype) -> torch.dtype:
    """The accumulation dtype: float64 for float64 inputs, else float32 (bf16/fp16 included)."""
    return torch.float64 if values_dtype == torch.float64 else torch.float32


def mlp(widths: list[int], *, activate_last: bool = True, dropout: float = 0.0) -> nn.Sequential:
    """Row-wise Linear+ReLU stack (no BatchNorm: an element's output may not depend on its
    chunk-mates, or chunked and whole passes differ)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(widths)):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2 or activate_last:
            layers.append(nn.ReLU())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


def require_context(
    context: torch.Tensor | None, num_context: int, like: torch.Tensor
) -> torch.Tensor:
    """The set-level context [B, C] in ``like``'s dtype, or a ModelError saying what is missing."""
    if context is None or context.shape != (like.shape[0], num_context):
        found = "none" if context is None else f"shape {tuple(context.shape)}"
        raise ModelError(
            f"the model was built with {num_context} context features per set; got {found}, "
            f"expected shape ({like.shape[0]}, {num_context}): pass SetBatch.context"
        )
    return context.to(like.dtype)


class MBCEncoder(nn.Module, ABC):
    """Base of the mini-batch consistent set encoders (DeepSets, UMBC)."""

    partial_keys: tuple[str, ...]
    """State keys that accumulate over elements (scaled by the gradient estimator)."""
    out_dim: int
    """Width of ``finalize``'s output (context included)."""

    @abstractmethod
    def init_state(
        self,
        num_sets: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        generator: torch.Generator | None = None,
    ) -> MBCState:
        """The empty state of ``num_sets`` sets; anything random per set is drawn here, once."""

    @abstractmethod
    def update(self, state: MBCState, values: torch.Tensor, set_index: torch.Tensor) -> MBCState:
        """Fold ``values [e, F]`` of sets ``set_index [e]`` into ``state`` (out of place)."""

    @abstractmethod
    def merge(self, a: MBCState, b: MBCState) -> MBCState:
        """Combine two partial states of the same sets (same init_state draw)."""

    @abstractmethod
    def finalize(self, state: MBCState, context: torch.Tensor | None = None) -> torch.Tensor:
        """The set embeddings [B, out_dim]; ``context [B, C]`` joins where the encoder says."""

    def forward(self, batch: SetBatch, generator: torch.Generator | None = None) -> torch.Tensor:
        """One ``update`` over the whole batch: [B, out_dim]."""
        state = self.init_state(
            batch.num_sets, batch.values.device, state_dtype(batch.values.dtype), generator
        )
        state = self.update(state, batch.values, batch.set_index())
        return self.finalize(state, batch.context)

    def encode_chunks(
        self,
        chunks: Iterable[tuple[torch.Tensor, torch.Tensor]],
        num_sets: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        context: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Fold ``(values, set_index)`` chunks one at a time: memory is one chunk, not the sets."""
        state = self.init_state(num_sets, device, dtype, generator)
        for values, set_index in chunks:
            state = self.update(state, values, set_index)
        return self.finalize(state, context)


class ScaleGrad(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by a per-set factor [B].

    The estimator applies it to the gradient subset's partial state, so the n/M
    correction lives in the graph: paths that bypass the pooled state (slot residual,
    context) stay unscaled, and DDP averages already-correct gradients.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(factor)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        (factor,) = ctx.saved_tensors
        shape = (-1,) + (1,) * (grad.dim() - 1)
        # In float32 at least: a bf16 factor is rounded (333.33 -> 334), a bias for the set.
        wide = torch.promote_types(grad.dtype, torch.float32)
        return (grad.to(wide) * factor.to(wide).view(shape)).to(grad.dtype), None


def scale_grad(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``x`` with its gradient multiplied by ``factor[b]`` along the first (set) axis."""
    if not x.requires_grad:
        return x
    return ScaleGrad.apply(x, factor)  # type: ignore[no-any-return]
