"""Batches by element budget, a bounded shuffle buffer, size buckets, equal batch counts.

A batch closes when the next set would take it past ``data.batch.element_budget``; a
set larger than the budget goes alone (the encoder chunks it). The shuffle buffer
holds at most ``data.shuffle.buffer_sets`` sets (plus one incoming block): when full,
a random half of it is passed on, gathered straight into batches (``SetPool``).
Every random draw comes from ``numpy.random.default_rng([seed, epoch])``, so an epoch
is reproducible given the order the blocks arrive in.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import torch

from setpipe.data.bad_rows import check_rows
from setpipe.data.batch import SetBatch
from setpipe.data.convert import table_to_batch
from setpipe.data.reading import iter_tables
from setpipe.data.transforms import FittedTransforms
from setpipe.spec.models import DataSpec

if TYPE_CHECKING:
    import ray.data

T = TypeVar("T")


@dataclass
class BatchStats:
    """What one pass delivered; the trainer logs ``skipped_rows``."""

    sets: int = 0
    elements: int = 0
    batches: int = 0
    skipped_rows: int = 0
    padded_slots: int = 0
    """Sum over batches of sets x largest set: the padded view's size."""

    def add(self, batch: SetBatch) -> None:
        self.sets += batch.num_sets
        self.elements += batch.num_elements
        self.batches += 1
        if batch.num_sets:
            self.padded_slots += batch.num_sets * int(batch.sizes().max())

    @property
    def padding_fraction(self) -> float:
        """Share of a padded view's slots that would be padding."""
        return 1.0 - self.elements / self.padded_slots if self.padded_slots else 0.0


def budget_bounds(sizes: np.ndarray, budget: int) -> np.ndarray:
    """Set indices where batches start and end: [0, b1, ..., n].

    Greedy: a batch closes when the next set would exceed ``budget``; a set larger than
    ``budget`` is a batch alone. One searchsorted per batch, none per set.
    """
    cum = np.zeros(len(sizes) + 1, dtype=np.int64)
    np.cumsum(sizes, out=cum[1:])
    bounds = [0]
    start, n = 0, len(sizes)
    while start < n:
        stop = int(np.searchsorted(cum, cum[start] + budget, side="right")) - 1
        start = max(stop, start + 1)
        bounds.append(start)
    return np.asarray(bounds, dtype=np.int64)


def budget_batches(chunks: Iterable[SetBatch], budget: int) -> Iterator[SetBatch]:
    """Re-cut a stream of batches into element-budget batches, carrying the remainder.

    Only the batch that straddles two chunks is copied (carry + the chunk's first sets);
    the others are views of their chunk, so a block is not copied again to be batched.
    """
    carry: SetBatch | None = None
    for chunk in chunks:
        if chunk.num_sets == 0:
            continue
        sizes = chunk.sizes().numpy()
        if carry is not None:
            # How many of the chunk's first sets still fit beside the carry (greedy rule).
            room = budget - carry.num_elements
            fit = int(np.searchsorted(np.cumsum(sizes), room, side="right"))
            if fit == chunk.num_sets:
                carry = SetBatch.concat([carry, chunk])
                continue
            yield SetBatch.concat([carry, chunk.slice_sets(0, fit)]) if fit else carry
            chunk, sizes = chunk.slice_sets(fit, chunk.num_sets), sizes[fit:]
        bounds = budget_bounds(sizes, budget)
        for i in range(len(bounds) - 2):
            yield chunk.slice_sets(int(bounds[i]), int(bounds[i + 1]))
        carry = chunk.slice_sets(int(bounds[-2]), int(bounds[-1]))
    if carry is not None and carry.num_sets:
        yield carry


def bucket_batches(
    chunks: Iterable[SetBatch], budget: int, rng: np.random.Generator
) -> Iterator[SetBatch]:
    """Element-budget batches of similar-size sets within each chunk, in random order.

    Sorting by size inside a chunk (a shuffle-buffer's worth of sets) keeps the padded
    view small; ties and the batch order are random, so epochs still differ.
    """
    for chunk in chunks:
        if chunk.num_sets == 0:
            continue
        jitter = rng.permutation(chunk.num_sets)
        order = jitter[np.argsort(chunk.sizes().numpy()[jitter], kind="stable")]
        pool = chunk.select(torch.from_numpy(order))
        bounds = budget_bounds(pool.sizes().numpy(), budget)
        for i in rng.permutation(len(bounds) - 1):
            yield pool.slice_sets(int(bounds[i]), int(bounds[i + 1]))


BLOCK, SET, START, SIZE = range(4)
"""Columns of a pool reference: a held set is a row (block, set in block, first element, size)."""


class SetPool:
    """Sets held by reference to the blocks they arrived in, copied once: when a batch leaves.

    References are int64 rows (block, set, start, size), so a batch's element rows come
    from one vectorised repeat. ``take`` gathers the referenced sets grouped by block
    (their order within a block kept): one ``index_select`` per block straight into the
    batch's buffer. Blocks no reference points to any more are dropped (``retain``).
    """

    def __init__(self) -> None:
        self.blocks: list[SetBatch] = []

    def add(self, block: SetBatch) -> np.ndarray:
        """Hold ``block``; references to its sets."""
        offsets = block.offsets.numpy()
        refs = np.empty((block.num_sets, 4), dtype=np.int64)
        refs[:, BLOCK] = len(self.blocks)
        refs[:, SET] = np.arange(block.num_sets)
        refs[:, START] = offsets[:-1]
        refs[:, SIZE] = np.diff(offsets)
        self.blocks.append(block)
        return refs

    def take(self, refs: np.ndarray) -> SetBatch:
        """One new batch holding the referenced sets, grouped by block."""
        refs = refs[np.argsort(refs[:, BLOCK], kind="stable")]
        sizes = refs[:, SIZE]
        offsets = np.zeros(len(refs) + 1, dtype=np.int64)
        np.cumsum(sizes, out=offsets[1:])
        total = int(offsets[-1])
        rows = torch.from_numpy(np.repeat(refs[:, START] - offsets[:-1], sizes) + np.arange(total))
        first = self.blocks[int(refs[0, BLOCK])]
        values = first.values.new_empty((total, first.num_features))
        et = None if first.element_targets is None else first.element_targets.new_empty(total)
        ctx = (
            None
            if first.context is None
            else first.context.new_empty(len(refs), *first.context.shape[1:])
        )
        tg = None if first.targets is None else first.targets.new_empty(len(refs))
        cuts = np.flatnonzero(np.diff(refs[:, BLOCK])) + 1
        for lo, hi in itertools.pairwise([0, *cuts.tolist(), len(refs)]):
            block = self.blocks[int(refs[lo, BLOCK])]
            a, b = int(offsets[lo]), int(offsets[hi])
            torch.index_select(block.values, 0, rows[a:b], out=values[a:b])
            if et is not None:
                torch.index_select(block.element_targets, 0, rows[a:b], out=et[a:b])  # type: ignore[arg-type]
            if ctx is not None or tg is not None:
                sets = torch.from_numpy(refs[lo:hi, SET])
                if ctx is not None:
                    torch.index_select(block.context, 0, sets, out=ctx[lo:hi])  # type: ignore[arg-type]
                if tg is not None:
                    torch.index_select(block.targets, 0, sets, out=tg[lo:hi])  # type: ignore[arg-type]
        return SetBatch(
            values=values,
            offsets=torch.from_numpy(offsets),
            context=ctx,
            targets=tg,
            element_targets=et,
        )

    def retain(self, *refs: np.ndarray) -> None:
        """Drop the blocks none of ``refs`` points to; renumber ``refs`` (in place) to match."""
        live = np.unique(np.concatenate([r[:, BLOCK] for r in refs]))
        self.blocks = [self.blocks[i] for i in live]
        for r in refs:
            r[:, BLOCK] = np.searchsorted(live, r[:, BLOCK])


def shuffle_batches(
    chunks: Iterable[SetBatch],
    buffer_sets: int,
    budget: int,
    rng: np.random.Generator,
    *,
    bucket: bool = False,
) -> Iterator[SetBatch]:
    """Element-budget batches of sets shuffled through a buffer of about ``buffer_sets``.

    When the buffer holds ``buffer_sets`` sets, a random half of them leaves, cut into
    batches by the greedy budget rule (the last, partial batch waits for the next half,
    as ``budget_batches`` carries its remainder). With ``bucket`` each half is instead
    sorted by size (ties random) and its batches leave in random order, as
    ``bucket_batches`` does per chunk. Sets stay in the blocks they came in until their
    batch is gathered, so each element is copied once (a buffer that concatenates and
    re-selects copies the sets it keeps again every round: about 4 copies per element).
    """
    pool = SetPool()
    held = carry = np.empty((0, 4), dtype=np.int64)

    def leave(out: np.ndarray, last: bool) -> Iterator[SetBatch]:
        nonlocal carry
        if bucket:
            jitter = rng.permutation(len(out))
            out = out[jitter[np.argsort(out[jitter, SIZE], kind="stable")]]
            bounds = budget_bounds(out[:, SIZE], budget)
            for i in rng.permutation(len(bounds) - 1):
                yield pool.take(out[bounds[i] : bounds[i + 1]])
            return
        out = np.concatenate([carry, out])
        bounds = budget_bounds(out[:, SIZE], budget)
        whole = len(bounds) - 1 if last else len(bounds) - 2
        for lo, hi in itertools.pairwise(bounds[: whole + 1]):
            yield pool.take(out[lo:hi])
        carry = out[bounds[whole] :]

    for chunk in chunks:
        if chunk.num_sets == 0:
            continue
        held = np.concatenate([held, pool.add(chunk)])
        if len(held) < buffer_sets:
            continue
        perm = rng.permutation(len(held))
        keep = buffer_sets // 2
        yield from leave(held[perm[keep:]], last=False)
        held = held[perm[:keep]]
        pool.retain(held, carry)
    if len(held) or len(carry):
        yield from leave(held[rng.permutation(len(held))], last=True)


def padding_fraction(sizes: np.ndarray, budget: int, bucket_window: int | None = None) -> float:
    """Padding share of element-budget batches over ``sizes`` (sorted per window if given)."""
    sizes = np.asarray(sizes, dtype=np.int64)
    if bucket_window:
        parts = [np.sort(sizes[i : i + bucket_window]) for i in range(0, len(sizes), bucket_window)]
    else:
        parts = [sizes]
    real = padded = 0
    for part in parts:
        bounds = budget_bounds(part, budget)
        counts = np.diff(bounds)
        if len(counts) == 0:
            continue
        largest = np.maximum.reduceat(part, bounds[:-1])
        padded += int((counts * largest).sum())
        real += int(part.sum())
    return 1.0 - real / padded if padded else 0.0


def iter_set_batches(
    source: ray.data.Dataset | ray.data.DataIterator,
    spec: DataSpec,
    transforms: FittedTransforms,
    *,
    epoch: int = 0,
    shuffle: bool = True,
    stats: BatchStats | None = None,
) -> Iterator[SetBatch]:
    """Element-budget SetBatches of model features from a Dataset or a Ray Train shard.

    Bad rows follow ``spec.on_bad_row`` (skips counted in ``stats.skipped_rows``); with
    ``shuffle`` the sets pass through the local shuffle buffer (seeded by
    ``spec.shuffle.seed`` and ``epoch``). Shards of one Dataset given to Ray Train
    workers (``get_dataset_shard``: ``streaming_split(equal=True)``) hold equal row
    counts but not equal batch counts; wrap the iterator in ``equalize_batches``.
    """
    stats = stats if stats is not None else BatchStats()
    rng = np.random.default_rng([spec.shuffle.seed, epoch])

    def blocks() -> Iterator[SetBatch]:
        for table in iter_tables(source):
            table, skipped = check_rows(table, spec, "the data")
            stats.skipped_rows += skipped
            if table.num_rows:
                yield transforms.apply(table_to_batch(table, spec))

    budget = spec.batch.element_budget
    batches: Iterable[SetBatch]
    if shuffle and spec.shuffle.buffer_sets > 0:
        batches = shuffle_batches(
            blocks(), spec.shuffle.buffer_sets, budget, rng, bucket=spec.batch.bucket_by_size
        )
    elif spec.batch.bucket_by_size:
        batches = bucket_batches(blocks(), budget, rng)
    else:
        batches = budget_batches(blocks(), budget)
    for batch in batches:
        stats.add(batch)
        yield batch


def equalize_batches(batches: Iterable[T], all_reduce_min: Callable[[int], int]) -> Iterator[T]:
    """Stop every rank at the same step: yield while every rank still has a batch.

    ``all_reduce_min(x)`` returns the minimum of ``x`` over the ranks (one collective per
    step). Batches left on a rank after another ran out are drained, not yielded, so the
    underlying shard's epoch ends cleanly.
    """
    it = iter(batches)
    while True:
        batch = next(it, None)
        if all_reduce_min(0 if batch is None else 1) == 0:
            for _ in it:
                pass
            return
        yield batch  # type: ignore[misc]


def torch_all_reduce_min(device: torch.device | str = "cpu") -> Callable[[int], int]:
    """``all_reduce_min`` over the default torch.distributed group (identity if none)."""
    import torch.distributed as dist

    def reduce(x: int) -> int:
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return x
        t = torch.tensor([x], dtype=torch.int64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return int(t.item())

    return reduce
