"""The element batcher: batches close at the element budget; a bigger request runs alone."""

from __future__ import annotations

import asyncio
import threading

import torch

from setpipe.data.batch import SetBatch
from setpipe.serve._batcher import ElementBatcher, concat


def request(sizes: list[int], first_value: float) -> SetBatch:
    """Sets of the given sizes; element k of the request holds first_value + k."""
    total = sum(sizes)
    values = (first_value + torch.arange(total, dtype=torch.float32))[:, None]
    offsets = torch.tensor([0, *torch.tensor(sizes).cumsum(0).tolist()])
    return SetBatch(values=values, offsets=offsets)


def test_concat_packs_sets_and_shifts_offsets() -> None:
    packed = concat([request([2, 3], 0.0), request([1], 100.0)])
    assert packed.offsets.tolist() == [0, 2, 5, 6]
    assert packed.values[:, 0].tolist() == [0, 1, 2, 3, 4, 100]


def test_batches_close_at_the_budget_and_an_oversized_request_runs_alone() -> None:
    """Budget 512. The first request runs at once while the rest queue behind it, so the
    queued ones form the batches: 300+200 fit; 600 is over the budget and goes alone; 50."""
    ran: list[list[int]] = []  # per model call: the set sizes it ran
    running = threading.Event()  # the model thread is inside its first call
    release = threading.Event()

    def run(batch: SetBatch) -> tuple[str, list[dict]]:
        running.set()
        release.wait(timeout=30)  # holds the first call so the others queue up
        ran.append(batch.sizes().tolist())
        # One output per set: its first value, so each caller can check it got its own.
        firsts = batch.values[batch.offsets[:-1], 0].tolist()
        return f"call{len(ran)}", [{"first": f} for f in firsts]

    async def main() -> list[tuple[str, list[dict]]]:
        batcher = ElementBatcher(run, budget=512)
        try:
            first = asyncio.ensure_future(batcher.submit(request([100], 0.0)))
            # Wait (without blocking the event loop) until the model thread holds it.
            assert await asyncio.to_thread(running.wait, 30)
            rest = [
                asyncio.ensure_future(batcher.submit(request(sizes, start)))
                for sizes, start in (([300], 1000.0), ([150, 50], 2000.0), ([600], 3000.0))
            ]
            rest.append(asyncio.ensure_future(batcher.submit(request([50], 4000.0))))
            # One turn of the event loop runs every ready task's first step, and submit()
            # enqueues in its first step: after this, all four are queued, in order.
            await asyncio.sleep(0)
            release.set()
            return await asyncio.gather(first, *rest)
        finally:
            batcher.close()

    answers = asyncio.run(main())
    assert ran == [[100], [300, 150, 50], [600], [50]]
    assert answers == [
        ("call1", [{"first": 0.0}]),
        ("call2", [{"first": 1000.0}]),
        ("call2", [{"first": 2000.0}, {"first": 2150.0}]),
        ("call3", [{"first": 3000.0}]),
        ("call4", [{"first": 4000.0}]),
    ]


def test_a_failed_batch_fails_its_requests_and_the_next_batch_still_runs() -> None:
    calls = 0

    def run(batch: SetBatch) -> tuple[str, list[dict]]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("model blew up")
        return "ok", [{}] * batch.num_sets

    async def main() -> tuple[BaseException | None, tuple]:
        batcher = ElementBatcher(run, budget=512)
        try:
            failed = await asyncio.gather(batcher.submit(request([3], 0.0)), return_exceptions=True)
            return failed[0], await batcher.submit(request([2, 2], 0.0))
        finally:
            batcher.close()

    err, answer = asyncio.run(main())
    assert isinstance(err, RuntimeError) and str(err) == "model blew up"
    assert answer == ("ok", [{}, {}])
