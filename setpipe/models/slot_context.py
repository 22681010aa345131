"""Elements that read the rest of their set: cross-attention from each element to its set's
finalized slots (Set-Encoder-style list interaction in constant memory).

A listwise re-ranker has to compare each passage with the others in its list (Schlatt et
al., "Set-Encoder: Permutation-Invariant Inter-Passage Attention for Listwise Passage
Re-Ranking with Cross-Encoders"). The paper lets passages attend to each other, which
needs the whole list at once. Here each element attends instead to its set's S
finalized slot vectors: the list summarised by an MBC encoder (UMBC's K slots after
their self-attention, plus its pooled outputs), so it still takes two passes over the
chunks (encode, then score) and memory stays constant in the list length::

    slots    = encoder.slot_states(state)          # [B, S, D], after the encode pass
    attended = SlotAttention(F, D, D', H)(x, set_index, slots)   # [e, D'], any chunk

``SlotAttention`` is the reusable part: any element-level head (ranking here; masked
element prediction for pretraining) takes its output beside the element's own features.
It is row-wise in the elements given the slots, so chunked and whole passes agree.

What stands in for the slots (``slot_layout``):
- umbc: the K slot vectors after the slot head's SAB blocks, then the head's pooled
  outputs (its pma_seeds PMA outputs, or the mlp head's one output): S = K + seeds;
- set_transformer: its pma_seeds PMA outputs (not MBC: it sees whole sets anyway);
- deepsets: its pooled embedding as a single slot. Attention over one slot always gives
  it weight 1, so the read-out is a learned linear map of the embedding: nothing the
  pooled head lacks. It is allowed so that every encoder has slots.
Set-level context features are appended to every slot vector.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from setpipe.models.deepsets import DeepSets
from setpipe.models.protocol import MBCEncoder, MBCState, require_context
from setpipe.models.set_transformer import SetTransformerEncoder
from setpipe.models.umbc import UMBC


class SlotAttention(nn.Module):
    """Multi-head cross-attention from elements (queries) to their set's slots (keys, values).

    ``forward(elements [e, F], set_index [e], slots [B, S, D]) -> [e, dim]``: element i
    attends over the S slots of set ``set_index[i]`` only (softmax over those S), so no
    other set and no padding can reach it. Row-wise in the elements: scoring a chunk gives
    the rows the whole set would.
    """

    def __init__(self, num_features: int, slot_dim: int, dim: int, heads: int = 4) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"SlotAttention: dim {dim} is not a multiple of heads {heads}")
        self.heads, self.head_dim, self.dim = heads, dim // heads, dim
        self.q = nn.Linear(num_features, dim)
        self.k = nn.Linear(slot_dim, dim)
        self.v = nn.Linear(slot_dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(
        self, elements: torch.Tensor, set_index: torch.Tensor, slots: torch.Tensor
    ) -> torch.Tensor:
        """elements [e, F], set_index [e] (any order), slots [B, S, D] -> read-outs [e, dim]."""
        b, s, _ = slots.shape
        e, h, d = elements.shape[0], self.heads, self.head_dim
        slots = slots.to(elements.dtype)
        keys = self.k(slots).view(b, s, h, d)[set_index]  # [e, S, H, d]
        vals = self.v(slots).view(b, s, h, d)[set_index]
        query = self.q(elements).view(e, h, d)
        weights = torch.einsum("ehd,eshd->ehs", query, keys).mul(1.0 / math.sqrt(d)).softmax(-1)
        return self.out(torch.einsum("ehs,eshd->ehd", weights, vals).reshape(e, self.dim))


@dataclass(frozen=True)
class SlotLayout:
    """How a rank head reads slots out of the flat embedding [B, S * D + C] it is given."""

    num_slots: int
    """S: slots per set."""
    slot_dim: int
    """D: width of one slot vector."""
    num_context: int = 0
    """C: set-level context features after the slots (appended to every slot)."""

    @property
    def width(self) -> int:
        """Width of one slot as the attention sees it: D + C."""
        return self.slot_dim + self.num_context

    def unflatten(self, embedding: torch.Tensor) -> torch.Tensor:
        """[B, S * D + C] -> [B, S, D + C]: the slots, each with the set's context appended."""
        b, s, d = embedding.shape[0], self.num_slots, self.slot_dim
        slots = embedding[:, : s * d].reshape(b, s, d)
        if not self.num_context:
            return slots
        context = embedding[:, s * d :, None].transpose(1, 2).expand(b, s, self.num_context)
        return torch.cat([slots, context], 2)


class SlotStates(MBCEncoder):
    """UMBC whose ``finalize`` gives its finalized slots, flattened: [B, S * D + C].

    The protocol (init_state, update, merge, partial keys) is UMBC's own, so chunking, the
    streamed passes and the gradient estimator apply unchanged; only what a rank head
    receives instead of the set embedding differs. Every parameter of the UMBC is used
    (its slot head's pooled outputs are slots too), as DDP requires.
    """

    def __init__(self, encoder: UMBC) -> None:
        super().__init__()
        self.inner = encoder
        self.partial_keys = encoder.partial_keys
        self.num_context = encoder.num_context
        s, d = encoder.slot_states_shape
        self.layout = SlotLayout(s, d, encoder.num_context)
        self.out_dim = s * d + encoder.num_context

    def init_state(
        self,
        num_sets: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        generator: torch.Generator | None = None,
    ) -> MBCState:
        return self.inner.init_state(num_sets, device, dtype, generator)

    def update(self, state: MBCState, values: torch.Tensor, set_index: torch.Tensor) -> MBCState:
        return self.inner.update(state, values, set_index)

    def merge(self, a: MBCState, b: MBCState) -> MBCState:
        return self.inner.merge(a, b)

    def finalize(self, state: MBCState, context: torch.Tensor | None = None) -> torch.Tensor:
        flat = self.inner.slot_states(state).flatten(1)
        if self.num_context:
            flat = torch.cat([flat, require_context(context, self.num_context, flat)], 1)
        return flat


def slot_layout(encoder: nn.Module) -> SlotLayout:
    """The slots an encoder's output holds when a rank head reads it with ``context: slots``
    (``encoder`` is the one the model runs: ``SlotStates`` for UMBC)."""
    if isinstance(encoder, SlotStates):
        return encoder.layout
    if isinstance(encoder, SetTransformerEncoder):
        seeds = encoder.net.pma.seeds.shape[1]
        return SlotLayout(seeds, encoder.net.out_dim // seeds, encoder.num_context)
    if isinstance(encoder, DeepSets):
        return SlotLayout(1, encoder.out_dim)  # the context is inside rho already
    raise TypeError(f"no slot layout for {type(encoder).__name__}; wrap a UMBC in SlotStates")
