"""SetBatch: the one packed batch type every layer speaks.

Packed, not padded: the sets of a batch are concatenated along the element axis,
so no compute is spent on padding. Built by the data layer from Arrow list
offsets, eaten by the encoders, and built again by serving from a request.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np
import torch

from setpipe.errors import DataError


@dataclass(frozen=True)
class SetBatch:
    """B sets holding E elements in all, each element with F features."""

    values: torch.Tensor
    """float32 [E, F]: every element of every set, set after set (data layer)."""
    offsets: torch.Tensor
    """int64 [B+1]: set b owns ``values[offsets[b]:offsets[b+1]]``; offsets[0] == 0."""
    context: torch.Tensor | None = None
    """float32 [B, C]: set-level features (``data.context`` columns), or None."""
    targets: torch.Tensor | None = None
    """[B] set-level labels: int64 class ids (classify) or float32 values (regress)."""
    element_targets: torch.Tensor | None = None
    """float32 [E] per-element labels (rank: the relevance of each element)."""
    weights: torch.Tensor | None = None
    """float32 [B] set weights >= 0 (data.weight x class weight x reweight factor, filled by
    the data layer), or None when the job declares no weights (serving never has them)."""

    @property
    def num_sets(self) -> int:
        return self.offsets.numel() - 1

    @property
    def num_elements(self) -> int:
        return self.values.shape[0]

    @property
    def num_features(self) -> int:
        return self.values.shape[1]

    def sizes(self) -> torch.Tensor:
        """int64 [B]: elements per set."""
        return self.offsets[1:] - self.offsets[:-1]

    def set_index(self) -> torch.Tensor:
        """int64 [E]: the set each element belongs to."""
        return torch.repeat_interleave(
            torch.arange(self.num_sets, device=self.offsets.device), self.sizes()
        )

    def padded(self, pad_to: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The padded view for attention layers: x [B, N, F] and mask [B, N] (True = element).

        N is the largest set, or ``pad_to`` when given (must be at least that).
        """
        sizes = self.sizes()
        n = int(sizes.max()) if self.num_sets else 0
        if pad_to is not None:
            if pad_to < n:
                raise ValueError(f"pad_to={pad_to} is smaller than the largest set ({n})")
            n = pad_to
        set_index = self.set_index()
        pos = torch.arange(self.num_elements, device=self.values.device) - self.offsets[set_index]
        x = self.values.new_zeros(self.num_sets, n, self.num_features)
        mask = torch.zeros(self.num_sets, n, dtype=torch.bool, device=self.values.device)
        x[set_index, pos] = self.values
        mask[set_index, pos] = True
        return x, mask

    def select(self, sets: torch.Tensor | list[int]) -> SetBatch:
        """A new batch holding only the given sets, in the given order."""
        idx = torch.as_tensor(sets, dtype=torch.long, device=self.offsets.device)
        if self.values.device.type == "cpu" and not self.values.requires_grad:
            return self._select_cpu(idx.numpy())
        sizes = self.sizes()[idx]
        offsets = torch.zeros(idx.numel() + 1, dtype=torch.long, device=self.offsets.device)
        offsets[1:] = torch.cumsum(sizes, 0)
        starts = self.offsets[idx]
        elem = torch.repeat_interleave(starts - offsets[:-1], sizes) + torch.arange(
            int(offsets[-1]), device=self.offsets.device
        )
        et = self.element_targets
        return SetBatch(
            values=torch.index_select(self.values, 0, elem),
            offsets=offsets,
            context=None if self.context is None else self.context[idx],
            targets=None if self.targets is None else self.targets[idx],
            element_targets=None if et is None else torch.index_select(et, 0, elem),
            weights=None if self.weights is None else self.weights[idx],
        )

    def _select_cpu(self, idx: np.ndarray) -> SetBatch:
        """``select`` in numpy: the element gather moves whole rows as one machine word
        each (a [E, 4] float32 row as one complex128), ~4x torch.index_select's speed on
        the shuffle buffer's gathers; the index runs twice as fast as torch's."""
        all_offsets = self.offsets.numpy()
        starts = all_offsets[idx]
        sizes = all_offsets[idx + 1] - starts
        offsets = np.zeros(len(idx) + 1, dtype=np.int64)
        np.cumsum(sizes, out=offsets[1:])
        elem = np.repeat(starts - offsets[:-1], sizes)
        elem += np.arange(offsets[-1], dtype=np.int64)

        def sets_of(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else torch.from_numpy(np.take(t.numpy(), idx, axis=0))

        et = self.element_targets
        return SetBatch(
            values=torch.from_numpy(take_rows(self.values.numpy(), elem)),
            offsets=torch.from_numpy(offsets),
            context=sets_of(self.context),
            targets=sets_of(self.targets),
            element_targets=None if et is None else torch.from_numpy(np.take(et.numpy(), elem)),
            weights=sets_of(self.weights),
        )

    def to(self, device: torch.device | str, non_blocking: bool = False) -> SetBatch:
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device, non_blocking=non_blocking)

        return replace(
            self,
            values=move(self.values),
            offsets=move(self.offsets),
            context=move(self.context),
            targets=move(self.targets),
            element_targets=move(self.element_targets),
            weights=move(self.weights),
        )

    @staticmethod
    def concat(batches: list[SetBatch]) -> SetBatch:
        """One batch holding the sets of ``batches`` in order (optional fields: all or none)."""
        if len(batches) == 1:
            return batches[0]

        def cat(parts: list[torch.Tensor | None]) -> torch.Tensor | None:
            return None if parts[0] is None else torch.cat(parts, 0)  # type: ignore[arg-type]

        sizes = torch.cat([b.sizes() for b in batches])
        offsets = torch.zeros(sizes.numel() + 1, dtype=torch.long)
        offsets[1:] = torch.cumsum(sizes, 0)
        return SetBatch(
            values=torch.cat([b.values for b in batches], 0),
            offsets=offsets,
            context=cat([b.context for b in batches]),
            targets=cat([b.targets for b in batches]),
            element_targets=cat([b.element_targets for b in batches]),
            weights=cat([b.weights for b in batches]),
        )

    @staticmethod
    def gather(sources: list[SetBatch], source: np.ndarray, sets: np.ndarray) -> SetBatch:
        """Set ``sets[i]`` of ``sources[source[i]]`` for every i, as one new CPU batch, each
        element copied once: no concatenation of the sources first. The sets come grouped by
        source (in the given order within each), which a loss over sets does not see.
        Optional fields: all sources have them or none."""
        return gather_sets([numpy_views(b) for b in sources], source, sets)

    def slice_sets(self, start: int, stop: int) -> SetBatch:
        """Sets ``start:stop`` as a new batch; values are views, no copy."""
        lo, hi = int(self.offsets[start]), int(self.offsets[stop])
        return SetBatch(
            values=self.values[lo:hi],
            offsets=self.offsets[start : stop + 1] - lo,
            context=None if self.context is None else self.context[start:stop],
            targets=None if self.targets is None else self.targets[start:stop],
            element_targets=None if self.element_targets is None else self.element_targets[lo:hi],
            weights=None if self.weights is None else self.weights[start:stop],
        )

    @staticmethod
    def from_sets(
        sets: list[torch.Tensor],
        context: torch.Tensor | None = None,
        targets: torch.Tensor | None = None,
        element_targets: torch.Tensor | None = None,
        weights: torch.Tensor | None = None,
    ) -> SetBatch:
        """Pack a list of [n_i, F] tensors (tests and serving; the data layer packs from Arrow)."""
        sizes = torch.tensor([s.shape[0] for s in sets], dtype=torch.long)
        offsets = torch.zeros(len(sets) + 1, dtype=torch.long)
        offsets[1:] = torch.cumsum(sizes, 0)
        return SetBatch(
            values=torch.cat(sets, 0),
            offsets=offsets,
            context=context,
            targets=targets,
            element_targets=element_targets,
            weights=weights,
        )


def set_of(offsets: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """The set index of the elements at ``positions`` (any int64 tensor), from ``offsets``."""
    return torch.searchsorted(offsets[1:], positions, right=True)


def chunk_ranges(
    batch: SetBatch, chunk_size: int
) -> Iterator[tuple[int, int, torch.Tensor, torch.Tensor]]:
    """``(start, stop, values, set_index)`` of element-budget chunks of at most ``chunk_size``.

    A chunk may cut through a set; an MBC encoder's ``update`` merges the pieces. The set
    index is computed per chunk only: ``batch.set_index()`` would hold 8 bytes an element
    for the whole batch (80 MB for a 1e7-element set).
    """
    if chunk_size < 1:
        raise DataError(f"chunk_size must be at least 1, got {chunk_size}: set train.chunk_size")
    device = batch.values.device
    for start in range(0, batch.num_elements, chunk_size):
        stop = min(start + chunk_size, batch.num_elements)
        positions = torch.arange(start, stop, device=device)
        yield start, stop, batch.values[start:stop], set_of(batch.offsets, positions)


_ROW_WORDS = {4: np.dtype(np.int32), 8: np.dtype(np.int64), 16: np.dtype(np.complex128)}


def take_rows(a: np.ndarray, rows: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``a[rows]`` for a 2-D array (into ``out``, C-contiguous, if given): each row moved as
    one item (an integer or complex word of its width, else raw bytes), a plain copy loop
    instead of a strided one per feature."""
    if a.ndim != 2 or a.shape[1] == 0:
        if out is None:
            return a[rows]
        out[...] = a[rows]
        return out
    a = np.ascontiguousarray(a)
    width = a.shape[1] * a.itemsize
    word = _ROW_WORDS.get(width, np.dtype((np.void, width)))
    if out is None:
        out = np.empty((len(rows), a.shape[1]), dtype=a.dtype)
    np.take(a.view(word).reshape(-1), rows, out=out.view(word).reshape(-1))
    return out


FIELDS = ("values", "offsets", "context", "targets", "element_targets", "weights")
ELEMENT_FIELDS = ("values", "element_targets")
SET_FIELDS = ("context", "targets", "weights")


def numpy_views(batch: SetBatch) -> dict[str, np.ndarray | None]:
    """A CPU batch's fields as numpy arrays over the same memory (taken once per block:
    ``Tensor.numpy()`` costs ~15 us a call)."""
    return {name: None if (t := getattr(batch, name)) is None else t.numpy() for name in FIELDS}


def gather_sets(
    sources: list[dict[str, np.ndarray | None]], source: np.ndarray, sets: np.ndarray
) -> SetBatch:
    """``SetBatch.gather`` over the sources' ``numpy_views``."""
    order = np.argsort(source, kind="stable")
    source, sets = source[order], sets[order]
    cuts = np.searchsorted(source, np.arange(len(sources) + 1))
    groups = [(s, int(lo), int(hi)) for s, (lo, hi) in enumerate(itertools.pairwise(cuts))]
    groups = [g for g in groups if g[2] > g[1]]
    starts = np.empty(len(sets), dtype=np.int64)
    sizes = np.empty(len(sets), dtype=np.int64)
    for s, lo, hi in groups:
        bounds = sources[s]["offsets"]
        assert bounds is not None
        starts[lo:hi] = bounds[sets[lo:hi]]
        sizes[lo:hi] = bounds[sets[lo:hi] + 1] - starts[lo:hi]
    offsets = np.zeros(len(sets) + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])
    like = sources[groups[0][0] if groups else 0]
    out: dict[str, np.ndarray | None] = {}
    for name in (*ELEMENT_FIELDS, *SET_FIELDS):
        a = like[name]
        rows = int(offsets[-1]) if name in ELEMENT_FIELDS else len(sets)
        out[name] = None if a is None else np.empty((rows, *a.shape[1:]), a.dtype)
    for s, lo, hi in groups:
        src, a, b = sources[s], int(offsets[lo]), int(offsets[hi])
        elem = np.repeat(starts[lo:hi] - offsets[lo:hi], sizes[lo:hi])
        elem += np.arange(a, b, dtype=np.int64)
        take_rows(src["values"], elem, out=out["values"][a:b])  # type: ignore[arg-type,index]
        if (et := out["element_targets"]) is not None:
            np.take(src["element_targets"], elem, out=et[a:b])  # type: ignore[arg-type]
        for name in SET_FIELDS:
            if (o := out[name]) is not None:
                np.take(src[name], sets[lo:hi], axis=0, out=o[lo:hi])  # type: ignore[arg-type]

    def tensor(a: np.ndarray | None) -> torch.Tensor | None:
        return None if a is None else torch.from_numpy(a)

    return SetBatch(
        values=torch.from_numpy(out["values"]),  # type: ignore[arg-type]
        offsets=torch.from_numpy(offsets),
        context=tensor(out["context"]),
        targets=tensor(out["targets"]),
        element_targets=tensor(out["element_targets"]),
        weights=tensor(out["weights"]),
    )
