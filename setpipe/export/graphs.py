"""Export-ready graphs of a SetModel: whole sets from packed input, and MBC update/finalize.

The training modules branch on data (``segment_sum`` picks plain or tiled sums from the
largest set, ``segment_pool`` sorts only when it must, the random-slot gather loops over
blocks): fine eagerly, but an exported graph must be one dataflow for every input. The
modules here run the same parameters through straight-line code with the same
arithmetic, and differ from the eager path in one deliberate way: every sum over
elements is accumulated in float64 (``index_add`` into float64 zeros), then cast back to
float32 where the eager model has its float32 state. A runtime's scatter-add is a
recursive sum whose float32 error grows with the set's size (~n·u); in float64 the
graph's sums are exact to float32 precision for any n, so what parity measures is the
eager model's own rounding (tiled sums, ``segment_sum``), not the runtime's.

Graphs (B sets, E elements, F features, C context features; names as exported):

- ``whole``: values [E, F] f32, offsets [B+1] i64 (, context [B, C] f32) -> output
- ``update``: values [e, F] f32, set_index [e] i64, state... -> state... (MBC encoders)
- ``finalize``: state... (, context [B, C]) -> output (rank: embedding [B, H])
- ``score`` (rank only): values [e, F], set_index [e], embedding [B, H] -> scores [e]

output: classify logits [B, classes]; regress values [B]; rank scores [E].
Several heads (``model.heads``): ``whole`` gives one output per head, in the heads' order;
``finalize`` gives the outputs of the classify and regress heads, in order, then the set
embedding [B, H] when a head ranks (at most one does), which ``score`` scores with it.
The state is a tuple of tensors whose first axis is the set; ``state_spec`` lists each
with its dtype, shape and the value it starts from (``init_state``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from setpipe.errors import ModelError
from setpipe.models.deepsets import DeepSets
from setpipe.models.set_model import SetModel
from setpipe.models.set_transformer import SetTransformerEncoder
from setpipe.models.slot_context import SlotStates
from setpipe.models.umbc import UMBC, attention_weights

ACC = torch.float64
"""Accumulation dtype of every sum over elements inside the graphs (see the module doc)."""


@dataclass(frozen=True)
class StateTensor:
    """One tensor of an exported MBC state: ``[B, *shape]`` of ``dtype`` filled with ``fill``."""

    name: str
    shape: tuple[int, ...]
    """The shape after the set axis."""
    dtype: torch.dtype
    fill: float
    """Initial value of every entry (0, or -inf for running maxima)."""

    def init(self, num_sets: int) -> torch.Tensor:
        return torch.full((num_sets, *self.shape), self.fill, dtype=self.dtype)


def set_index_of(offsets: torch.Tensor, num_elements: int) -> torch.Tensor:
    """int64 [E]: the set of each element, from offsets [B+1] without a data-dependent shape.

    A 1 is added at every offset (several at one position for empty sets; offsets[B] = E
    lands past the end), and the running count minus one is the set index. The whole
    offsets tensor, not a slice of it: a slice's layout checks would fix B in the trace.
    """
    marks = torch.zeros(num_elements + 1, dtype=torch.int64, device=offsets.device)
    marks = marks.index_add(0, offsets, torch.ones_like(offsets))
    return torch.cumsum(marks, 0)[:num_elements] - 1


def with_spare_sets(x: torch.Tensor) -> torch.Tensor:
    """``x [B, ...]`` with two all-zero sets appended (their outputs are dropped after).

    The attention blocks' einsums ask whether B is 1 (to broadcast); traced, that question
    becomes a guard, and the exported graph would refuse a batch of one set. B + 2 is
    never 1, which the tracer knows without asking. A zero mask row is an empty set.
    """
    return torch.cat([x, x.new_zeros((2, *x.shape[1:]))], 0)


# --------------------------------------------------------------------------- encoders


class _DeepSetsOps:
    """DeepSets' update and finalize on an explicit state (max pooling without tie counts:
    they only shape the gradient)."""

    def __init__(self, enc: DeepSets) -> None:
        self.enc = enc

    def spec(self) -> list[StateTensor]:
        w = self.enc.width
        if self.enc.pooling == "max":
            return [StateTensor("max", (w,), ACC, -math.inf)]
        return [StateTensor("sum", (w,), ACC, 0.0), StateTensor("count", (1,), ACC, 0.0)]

    def update(self, state: tuple[torch.Tensor, ...], values, set_index):
        h = self.enc.phi(values).to(ACC)
        if self.enc.pooling == "max":
            (acc,) = state
            chunk = torch.full_like(acc, -math.inf).scatter_reduce(
                0, set_index[:, None].expand_as(h), h, reduce="amax", include_self=True
            )
            return (torch.maximum(acc, chunk),)
        acc, count = state
        ones = torch.ones(values.shape[0], 1, dtype=ACC, device=values.device)
        return (
            acc + torch.zeros_like(acc).index_add(0, set_index, h),
            count + torch.zeros_like(count).index_add(0, set_index, ones),
        )

    def finalize(self, state, context):
        if self.enc.pooling == "max":
            m = state[0].to(torch.float32)
            pooled = torch.where(torch.isinf(m), torch.zeros_like(m), m)
        elif self.enc.pooling == "mean":
            pooled = (state[0] / state[1].clamp_min(1)).to(torch.float32)
        else:
            pooled = state[0].to(torch.float32)
        if self.enc.num_context:
            pooled = torch.cat([pooled, context], 1)
        return self.enc.rho(pooled)


class _UMBCOps:
    """UMBC's update and finalize; the slot queries are the eval-mode ones (learned slots,
    or the mean of random slots), fixed at export and kept in the graph."""

    def __init__(self, enc: UMBC) -> None:
        self.enc = enc
        with torch.no_grad():
            query = enc.queries(1, None, torch.float32, None)  # [1, K, dim]
        self.query = query.detach()

    def spec(self) -> list[StateTensor]:
        e = self.enc
        out = [
            StateTensor("num", (e.heads, e.num_slots, e.head_dim), ACC, 0.0),
            StateTensor("den", (e.heads, e.num_slots), ACC, 0.0),
        ]
        if e.attention == "set_softmax":
            out.append(StateTensor("max", (e.heads, e.num_slots), ACC, -math.inf))
        return out

    def update(self, state, values, set_index):
        e = self.enc
        n = values.shape[0]
        x = e.embed(values)
        keys = e.k(x).view(n, e.heads, e.head_dim)
        vals = e.v(x).view(n, e.heads, e.head_dim)
        q = self.query.to(values.device).view(e.num_slots, e.heads, e.head_dim)
        # [H, e, d] @ [H, d, K] as bmm: einsum and matmul fold dims of size 1, which fixes e != 1.
        s = torch.bmm(keys.transpose(0, 1), q.permute(1, 2, 0)).transpose(0, 1)
        s = s * (1.0 / math.sqrt(e.head_dim))
        num, den = state[0], state[1]
        out_max: tuple[torch.Tensor, ...] = ()
        if e.attention == "set_softmax":
            s = s.to(ACC)
            old_max = state[2]
            chunk_max = torch.full_like(old_max, -math.inf).scatter_reduce(
                0, set_index[:, None, None].expand_as(s), s, reduce="amax", include_self=True
            )
            new_max = torch.maximum(old_max, chunk_max)
            empty = torch.isinf(old_max)
            rescale = torch.where(
                empty, torch.zeros_like(old_max), torch.exp(old_max - new_max.masked_fill(empty, 0))
            )
            num, den = num * rescale[..., None], den * rescale
            a = torch.exp(s - new_max[set_index])
            out_max = (new_max,)
        else:
            a = attention_weights(s, e.attention).to(ACC)
        pooled = a[..., None] * vals.to(ACC)[:, :, None, :]  # [e, H, K, d]
        return (
            num + torch.zeros_like(num).index_add(0, set_index, pooled),
            den + torch.zeros_like(den).index_add(0, set_index, a),
            *out_max,
        )

    def finalize(self, state, context):
        e = self.enc
        num, den = state[0].to(torch.float32), state[1].to(torch.float32)
        query = self.query.to(num.device)
        slots = e.slot_outputs({"num": num, "den": den, "query": query})
        out = e.head(with_spare_sets(slots))[: slots.shape[0]]
        if e.num_context:
            out = torch.cat([out, context], 1)
        return out


class _SlotStatesOps(_UMBCOps):
    """A UMBC read by a rank head with ``context: slots`` (``SlotStates``): UMBC's state and
    update; finalize gives the finalized slots flattened [B, S * D] (then the context), the
    embedding the head's slot attention unflattens."""

    def __init__(self, enc: SlotStates) -> None:
        super().__init__(enc.inner)
        self.num_context = enc.num_context

    def finalize(self, state, context):
        num, den = state[0].to(torch.float32), state[1].to(torch.float32)
        query = self.query.to(num.device)
        spare = {"num": with_spare_sets(num), "den": with_spare_sets(den), "query": query}
        out = self.enc.slot_states(spare)[: num.shape[0]].flatten(1)
        if self.num_context:
            out = torch.cat([out, context], 1)
        return out


def _ops(model: SetModel) -> _DeepSetsOps | _UMBCOps:
    enc = model.encoder
    if isinstance(enc, DeepSets):
        return _DeepSetsOps(enc)
    if isinstance(enc, SlotStates):
        return _SlotStatesOps(enc)
    if isinstance(enc, UMBC):
        return _UMBCOps(enc)
    raise ModelError(
        f"chunked export needs a mini-batch consistent encoder (deepsets, umbc); this model's "
        f"encoder is {type(enc).__name__}: export it whole"
    )


def state_spec(model: SetModel) -> list[StateTensor]:
    """The state tensors of ``model``'s exported update/finalize graphs."""
    return _ops(model).spec()


def init_state(model: SetModel, num_sets: int) -> tuple[torch.Tensor, ...]:
    """The empty state of ``num_sets`` sets, as the update graph takes it."""
    return tuple(t.init(num_sets) for t in state_spec(model))


# --------------------------------------------------------------------------- graphs


def _score(head: nn.Module, values, set_index, embedding):
    """A rank head's scores [e]. The embedding gets two spare sets that no element indexes:
    a slot head unflattens it by slicing ``embedding[:, :S*D]``, whose layout check would
    otherwise fix B != 1 in a torch.export trace (the graph would refuse one set)."""
    return head(values, set_index, with_spare_sets(embedding))


class _Graph(nn.Module):
    def __init__(self, model: SetModel) -> None:
        super().__init__()
        if model.training:
            raise ModelError("export needs the model in eval mode (model.eval())")
        self.model = model
        self.task = model.task
        self.has_context = bool(getattr(model.encoder, "num_context", 0))

    def _head(self, embedding, values=None, set_index=None):
        """The task output; several heads: a tuple, one output per head in order."""
        tasks = self.model.tasks
        if tasks is not None:
            return tuple(
                _score(head, values, set_index, embedding)
                if tasks[name] == "rank"
                else head(embedding)
                for name, head in self.model.heads.items()
            )
        if self.task == "rank":
            return _score(self.model.head, values, set_index, embedding)
        return self.model.head(embedding)

    def _rank_head(self) -> nn.Module:
        """The head that scores elements (the one head, or the rank head of several)."""
        tasks = self.model.tasks
        if tasks is None:
            return self.model.head
        return self.model.heads[next(n for n, t in tasks.items() if t == "rank")]


class WholeGraph(_Graph):
    """values [E, F], offsets [B+1] (, context [B, C]) -> the task output of every set."""

    def __init__(self, model: SetModel) -> None:
        super().__init__(model)
        self.ops = None if isinstance(model.encoder, SetTransformerEncoder) else _ops(model)

    def forward(self, values, offsets, context=None):
        num_sets = offsets.shape[0] - 1
        set_index = set_index_of(offsets, values.shape[0])
        if self.ops is None:
            embedding = self._set_transformer(values, offsets, set_index, context)
        else:
            zeros = tuple(
                torch.full((num_sets, *t.shape), t.fill, dtype=t.dtype, device=values.device)
                for t in self.ops.spec()
            )
            embedding = self.ops.finalize(self.ops.update(zeros, values, set_index), context)
        return self._head(embedding, values, set_index)

    def _set_transformer(self, values, offsets, set_index, context):
        """The padded view (as SetBatch.padded) with N = the largest set, found in the graph."""
        enc: SetTransformerEncoder = self.model.encoder  # type: ignore[assignment]
        sizes = offsets[1:] - offsets[:-1]
        # At least 1 wide: an all-empty batch gets one masked column, as a batch of one
        # element would (the exporter must know the width is not 0 to reshape by it).
        n = sizes.max().clamp_min(1).item()
        torch._check(n >= 1)
        pos = torch.arange(values.shape[0], device=values.device) - offsets[set_index]
        num_sets, width = offsets.shape[0] - 1, values.shape[1]
        row = set_index * n + pos  # flat [B * N] rows: no empty-set reshape of the values
        x = values.new_zeros(num_sets * n, width).index_copy(0, row, values)
        mask = torch.zeros(num_sets * n, dtype=torch.bool, device=values.device)
        mask = mask.index_copy(0, row, torch.ones_like(row, dtype=torch.bool))
        x, mask = x.view(num_sets, n, width), mask.view(num_sets, n)
        x_spare, mask_spare = with_spare_sets(x), with_spare_sets(mask)
        # ParT-style pair biases (model.encoder.pairwise) come from the same padded view.
        bias = enc.pairwise(x_spare, mask_spare) if enc.pairwise is not None else None
        out = enc.net(x_spare, mask_spare, bias)[: x.shape[0]]
        if enc.num_context:
            out = torch.cat([out, context], 1)
        return out


class UpdateGraph(_Graph):
    """values [e, F], set_index [e], state -> state: one chunk folded in."""

    def __init__(self, model: SetModel) -> None:
        super().__init__(model)
        self.ops = _ops(model)

    def forward(self, values, set_index, state):
        return self.ops.update(tuple(state), values, set_index)


class FinalizeGraph(_Graph):
    """state (, context) -> classify logits / regress values / rank set embedding [B, H];
    several heads: the classify and regress heads' outputs (, the embedding when one ranks)."""

    def __init__(self, model: SetModel) -> None:
        super().__init__(model)
        self.ops = _ops(model)

    def forward(self, state, context=None):
        embedding = self.ops.finalize(tuple(state), context)
        tasks = self.model.tasks
        if tasks is not None:
            outs = [h(embedding) for n, h in self.model.heads.items() if tasks[n] != "rank"]
            return (*outs, embedding) if self.model.ranks else tuple(outs)
        return embedding if self.task == "rank" else self.model.head(embedding)


class ScoreGraph(_Graph):
    """Rank's second pass: values [e, F], set_index [e], embedding [B, H] -> scores [e]."""

    def forward(self, values, set_index, embedding):
        return _score(self._rank_head(), values, set_index, embedding)


__all__ = [
    "FinalizeGraph",
    "ScoreGraph",
    "StateTensor",
    "UpdateGraph",
    "WholeGraph",
    "init_state",
    "set_index_of",
    "state_spec",
]
