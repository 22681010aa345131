"""Batches by element budget, a bounded shuffle buffer, size buckets, equal batch counts.

A batch closes when the next set would take it past ``data.batch.element_budget``; a
set larger than the budget goes alone (the encoder chunks it). The shuffle buffer
holds at most ``data.shuffle.buffer_sets`` sets (plus one incoming block): when full,
a random half of it is passed on; each batch is gathered straight from the blocks the
buffer holds, so an element is copied once (``shuffled_batches``). Every random draw
comes from ``numpy.random.default_rng([seed, epoch])``, so an epoch is reproducible
given the order the blocks arrive in.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import torch

from setpipe.data.bad_rows import check_rows, drop_problem_rows
from setpipe.data.batch import SetBatch, gather_sets, numpy_views
from setpipe.data.convert import reweight_values, table_to_batch
from setpipe.data.transforms import FittedTransforms
from setpipe.spec.models import DataSpec

if TYPE_CHECKING:
    import ray.data

T = TypeVar("T")


@dataclass
class BatchStats:
    """What one pass delivered; the trainer logs ``skipped_rows`` of every split it reads."""

    sets: int = 0
    elements: int = 0
    batches: int = 0
    skipped_rows: int = 0
    """Bad rows dropped under ``on_bad_row: skip``: the reader's checks (values, sizes,
    labels) and sets that a feature transform made non-finite."""
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


def shuffle_sets(
    chunks: Iterable[SetBatch], buffer_sets: int, rng: np.random.Generator
) -> Iterator[SetBatch]:
    """A local shuffle of sets through a buffer of about ``buffer_sets`` sets."""
    pool: list[SetBatch] = []
    held = 0
    for chunk in chunks:
        pool.append(chunk)
        held += chunk.num_sets
        if held < buffer_sets:
            continue
        merged = SetBatch.concat(pool)
        perm = torch.from_numpy(rng.permutation(held))
        keep = buffer_sets // 2
        yield merged.select(perm[keep:])
        pool, held = ([merged.select(perm[:keep])], keep) if keep else ([], 0)
    if held:
        merged = SetBatch.concat(pool)
        yield merged.select(torch.from_numpy(rng.permutation(held)))


def shuffled_batches(
    chunks: Iterable[SetBatch], buffer_sets: int, budget: int, rng: np.random.Generator
) -> Iterator[SetBatch]:
    """``budget_batches(shuffle_sets(...))`` with each element copied once.

    The same buffer: when it holds ``buffer_sets`` sets, a random half stays and the rest is
    passed on, cut into element-budget batches; but each batch is gathered straight from
    the blocks the buffer holds (``SetBatch.gather``), not from a concatenation of them, and
    only the sets that stay are copied again, into one block, so the blocks they came from
    are freed (memory stays bounded by the buffer and the blocks in flight). A round's last
    batch, which may be under budget, goes back into the buffer; at the end of the data
    every set is passed on.
    """
    pool: list[SetBatch] = []
    held = 0
    for chunk in chunks:
        pool.append(chunk)
        held += chunk.num_sets
        if held < buffer_sets:
            continue
        kept = yield from _draw(pool, held, buffer_sets // 2, budget, rng, final=False)
        pool, held = ([kept], kept.num_sets) if kept.num_sets else ([], 0)
    if held:
        yield from _draw(pool, held, 0, budget, rng, final=True)


def _draw(
    pool: list[SetBatch],
    held: int,
    keep: int,
    budget: int,
    rng: np.random.Generator,
    *,
    final: bool,
) -> Generator[SetBatch, None, SetBatch]:
    """One round of ``shuffled_batches``: yields the batches, returns the sets kept."""
    perm = rng.permutation(held)
    base = np.zeros(len(pool) + 1, dtype=np.int64)
    np.cumsum([b.num_sets for b in pool], out=base[1:])
    source = np.searchsorted(base, perm, side="right") - 1
    local = perm - base[source]
    sizes = np.concatenate([b.sizes().numpy() for b in pool])[perm]
    bounds = budget_bounds(sizes[keep:], budget) + keep
    passed = max(len(bounds) - (1 if final else 2), 0)  # a round's last batch goes back
    views = [numpy_views(b) for b in pool]
    for i in range(passed):
        lo, hi = int(bounds[i]), int(bounds[i + 1])
        yield gather_sets(views, source[lo:hi], local[lo:hi])
    rest = np.r_[0:keep, int(bounds[passed]) : held]
    return gather_sets(views, source[rest], local[rest])


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

    Bad rows follow ``spec.on_bad_row`` (skips counted in ``stats.skipped_rows``), the
    sets a transform makes non-finite among them; with ``shuffle`` the sets pass through
    the local shuffle buffer (seeded by
    ``spec.shuffle.seed`` and ``epoch``). Shards of one Dataset given to Ray Train
    workers (``get_dataset_shard``: ``streaming_split(equal=True)``) hold equal row
    counts but not equal batch counts; wrap the iterator in ``equalize_batches``.
    """
    # Ray Data is reached here only: budget_bounds and the buffers above run where Ray is
    # absent (bench/gpu_check.py on a bare CUDA machine; tests/test_gpu_check.py).
    from setpipe.data.reading import iter_tables

    stats = stats if stats is not None else BatchStats()
    rng = np.random.default_rng([spec.shuffle.seed, epoch])

    def blocks() -> Iterator[SetBatch]:
        for table in iter_tables(source):
            table, skipped = check_rows(table, spec, "the data")
            stats.skipped_rows += skipped
            if not table.num_rows:
                continue
            # A packed block (read_dataset(..., packed=True)) is only viewed here: its read
            # task converted it.
            raw = transforms.weigh(table_to_batch(table, spec), reweight_values(table, spec))
            if transforms.features is None:  # raw features: no transform to make one non-finite
                yield raw
                continue
            batch = transforms.apply(raw)
            # One pass over the output; the op-by-op diagnosis only for a block that needs it.
            if not bool(torch.isfinite(batch.values).all()):
                problem = transforms.nonfinite_rows(raw)
                if problem is not None:
                    keep = drop_problem_rows(table, problem, spec, "the data")
                    stats.skipped_rows += int((~keep).sum())
                    batch = batch.select(torch.from_numpy(np.flatnonzero(keep)))
            if batch.num_sets:
                yield batch

    chunks: Iterable[SetBatch] = blocks()
    budget, buffer = spec.batch.element_budget, spec.shuffle.buffer_sets
    if shuffle and buffer > 0 and not spec.batch.bucket_by_size:
        batches = shuffled_batches(chunks, buffer, budget, rng)
    else:
        if shuffle and buffer > 0:
            chunks = shuffle_sets(chunks, buffer, rng)
        if spec.batch.bucket_by_size:
            batches = bucket_batches(chunks, budget, rng)
        else:
            batches = budget_batches(chunks, budget)
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
