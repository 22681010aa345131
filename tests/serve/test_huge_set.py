"""A 10⁶-element set through the replica's code path: parsed without a Python float per
number, then encoded chunk by chunk (what the replica runs for a set over the budget).

The model is the quickstart job's, built in-process with transforms fitted on a few
sets: these properties hold for any weights, so no training, Ray or MLflow is needed.
"""

from __future__ import annotations

import json
import tracemalloc

import numpy as np
import torch
from serve_helpers import REPO

from setpipe.data.request import Limits
from setpipe.serve.schema import parse_request
from setpipe.tracking.pyfunc import LoadedSetModel

N = 1_000_000


def huge_body(n: int) -> bytes:
    rng = np.random.default_rng(7)
    features = {
        "part_pt": (0.5 + rng.exponential(5.0, n)).round(3),  # > 0: the job takes log(pt)
        "part_eta": rng.normal(0, 0.3, n).round(4),
        "part_phi": rng.normal(0, 0.3, n).round(4),
        "part_pid": rng.choice([22.0, 211.0, -211.0, 130.0], n),
    }
    sets = [
        {"features": {k: v.tolist() for k, v in features.items()}, "context": {"jet_pt": 650.0}}
    ]
    return json.dumps({"sets": sets}).encode()


def quickstart_model() -> LoadedSetModel:
    from setpipe.data.transforms import FittedTransforms, fit_on_batches
    from setpipe.models import build_model
    from setpipe.spec import load_job

    job = load_job(REPO / "jobs" / "quickstart.yaml")
    torch.manual_seed(0)
    model = build_model(job.model, len(job.data.feature_names), len(job.data.context)).eval()
    fit_on = parse_request(huge_body(2000), job, Limits()).batch
    transforms = fit_on_batches(FittedTransforms.from_spec(job.data), [fit_on])
    return LoadedSetModel(job=job, model=model, transforms=transforms)


def test_huge_set_is_parsed_into_arrays_and_encoded_in_chunks() -> None:
    loaded = quickstart_model()
    body = huge_body(N)

    tracemalloc.start()  # numpy reports its buffers to tracemalloc, torch does not
    try:
        batch = parse_request(body, loaded.job, Limits()).batch
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert batch.num_elements == N and batch.values.dtype == torch.float32
    # Decoded text (1 byte a character, ~8 characters a number), float64 columns (8 bytes a
    # number) and one column's text slice: ~2.3x the body. A Python float per number
    # (json.loads: 32 bytes each with its list slot) would be over 5x.
    assert peak < 3 * len(body), (peak / 1e6, len(body) / 1e6)

    # Rows each Linear layer of the encoder is called with: the per-element layers must
    # see every element, in chunks of at most the job's chunk size, never the whole set.
    rows: dict[str, list[int]] = {}
    hooks = [
        m.register_forward_pre_hook(
            lambda _m, args, name=name: rows.setdefault(name, []).append(args[0].shape[0])
        )
        for name, m in loaded.model.encoder.named_modules()
        if isinstance(m, torch.nn.Linear)
    ]
    try:
        chunked = loaded.predict_batch(batch)
    finally:
        for hook in hooks:
            hook.remove()
    chunk = loaded.job.train.chunk_size
    per_element = {name: calls for name, calls in rows.items() if sum(calls) == N}
    assert per_element, rows
    for calls in per_element.values():
        assert max(calls) == chunk < N
        assert len(calls) == -(-N // chunk)

    # Same answer as one whole-set pass (MBC: chunking changes only float rounding).
    with torch.inference_mode():
        whole = torch.softmax(loaded.model(loaded.transforms.apply(batch)).double(), dim=1)
    assert np.isfinite(chunked[0]["probabilities"]).all()
    np.testing.assert_allclose(chunked[0]["probabilities"], whole[0].tolist(), rtol=1e-4)
