"""Dynamic batching of concurrent requests by element budget (not by request count).

``@serve.batch`` closes a batch at ``max_batch_size`` calls, whatever their size: 16
requests of 10k elements and 16 of 50 elements would be one batch each, 160k vs 800
elements of work. Here a batch closes when the next request would push it past the
element budget. There is no waiting window: while the model runs on one batch (in a
worker thread, so the event loop keeps reading and validating bodies), the requests
that arrive queue up and form the next batch. A request is never split across batches,
so every request is served wholly by the one model a batch picked up; a request larger
than the budget runs alone and the model chunks it (``predict_chunked``, constant memory).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch

from setpipe.data.batch import SetBatch


def concat(batches: list[SetBatch]) -> SetBatch:
    """Pack several raw batches into one (values and context stacked, offsets shifted)."""
    if len(batches) == 1:
        return batches[0]
    sizes = torch.cat([b.sizes() for b in batches])
    offsets = torch.zeros(sizes.numel() + 1, dtype=torch.long)
    torch.cumsum(sizes, 0, out=offsets[1:])
    has_context = batches[0].context is not None
    return SetBatch(
        values=torch.cat([b.values for b in batches]),
        offsets=offsets,
        context=torch.cat([b.context for b in batches]) if has_context else None,  # type: ignore[misc]
    )


@dataclass
class _Item:
    batch: SetBatch
    future: asyncio.Future = field(repr=False)


RunFn = Callable[[SetBatch], tuple[Any, list[dict]]]
"""Runs one packed batch; returns (a tag naming the model that ran it, per-set outputs)."""


class ElementBatcher:
    """Queue requests; run them in batches of at most ``budget`` elements, one at a time."""

    def __init__(self, run: RunFn, budget: int) -> None:
        self._run = run
        self._budget = budget
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._held: _Item | None = None
        # One model thread: batches run one after another, each on all of torch's threads.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="setpipe-model")
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def submit(self, batch: SetBatch) -> tuple[Any, list[dict]]:
        """Predict one request's sets; returns (model tag, one output per set)."""
        item = _Item(batch, asyncio.get_running_loop().create_future())
        self._queue.put_nowait(item)
        return await item.future

    async def _next_batch(self) -> list[_Item]:
        first = self._held or await self._queue.get()
        self._held = None
        items, elements = [first], first.batch.num_elements
        while elements < self._budget and not self._queue.empty():
            item = self._queue.get_nowait()
            if elements + item.batch.num_elements > self._budget:
                self._held = item  # heads the next batch
                break
            items.append(item)
            elements += item.batch.num_elements
        return items

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = await self._next_batch()
            items = [i for i in items if not i.future.done()]  # client gone: skip its work
            if not items:
                continue
            try:
                tag, outputs = await loop.run_in_executor(
                    self._executor, self._run, concat([i.batch for i in items])
                )
            except Exception as err:  # one bad batch must not stop the loop
                for item in items:
                    if not item.future.done():
                        item.future.set_exception(err)
                continue
            start = 0
            for item in items:
                n = item.batch.num_sets
                if not item.future.done():
                    item.future.set_result((tag, outputs[start : start + n]))
                start += n

    def close(self) -> None:
        self._task.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)
