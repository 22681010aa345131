"""Parity of an exported model with the PyTorch model it came from.

The figure is relative to the output's scale: rel = max |exported - torch| / max |torch|
over every output number of a batch (classify logits, regress values, rank scores). A
per-entry relative error would be dominated by outputs near zero, where float32
rounding of a sum is large next to the value and meaningless next to its neighbours.

Batches: seeded standard-normal features (the scale of standardized model inputs) and
context; ``size_N`` is a batch of sets of N elements (8 sets up to 1000, fewer above:
about 10^4 elements a batch); ``mixed`` holds sets of 0, 1, 2, 5 and 17 elements
(the empty set included). MBC encoders also run the update/finalize graphs: on
``mixed`` in chunks of 3 (chunks cutting through sets), and on one set of
``chunked_size`` elements (10^6 by default) in chunks of ``chunk_size`` against
PyTorch's own chunked pass (``SetModel.predict_chunked``, equal to the whole-set pass by
the MBC property tests; a whole pass over 10^6 elements would need the memory that
chunking exists to avoid).

Several heads: one figure per head and batch, keyed ``<head>_<batch>`` (head names have
no underscore). A pairwise Set Transformer is checked on sets up to its
``max_set_size`` (larger ones it refuses), the limit itself included.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from setpipe.data.batch import SetBatch
from setpipe.export.runtime import ExportedModel
from setpipe.models.set_model import SetModel

ATTENTION_MAX = 2000
"""Largest set the Set Transformer (not MBC) is checked on: its attention over a set of N
is [sets, heads, N, N] (1.6 GB per matrix at N = 10^4 with 4 heads; the graph adds two
spare sets), while the MBC encoders are checked up to 10^4 whole and 10^6 chunked."""
TOLERANCE = 1e-5
"""Largest accepted rel: float32 keeps ~7 digits; a graph that computes the same
function differs by a few units of 1e-7 at these sizes (bench/export_parity.py)."""
SIZES = (1, 10, 100, 1000, 10000)
CHUNKED_SIZE = 1_000_000


def relative(out: np.ndarray, ref: np.ndarray) -> float:
    """max |out - ref| / max |ref| (NaN anywhere in either: inf)."""
    if out.shape != ref.shape:
        return float("inf")
    if not (np.isfinite(out).all() and np.isfinite(ref).all()):
        return float("inf")
    if ref.size == 0:
        return 0.0
    scale = max(float(np.abs(ref).max()), np.finfo(np.float32).tiny)
    return float(np.abs(out.astype(np.float64) - ref.astype(np.float64)).max() / scale)


def _batch(sizes: list[int], num_features: int, num_context: int, seed: int) -> SetBatch:
    g = torch.Generator().manual_seed(seed)
    sets = [torch.randn(n, num_features, generator=g) for n in sizes]
    context = torch.randn(len(sizes), num_context, generator=g) if num_context else None
    return SetBatch.from_sets(sets, context=context)


def _np(batch: SetBatch) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    ctx = None if batch.context is None else batch.context.numpy()
    return batch.values.numpy(), batch.offsets.numpy(), ctx


def measure(
    model: SetModel,
    exported: ExportedModel,
    num_features: int,
    num_context: int,
    *,
    sizes: tuple[int, ...] = SIZES,
    chunked_size: int = CHUNKED_SIZE,
    chunk_size: int = 4096,
    seed: int = 0,
) -> dict[str, float]:
    """rel per batch (keys ``size_N``, ``mixed``, ``chunked_mixed``, ``chunked_N``; several
    heads: ``<head>_<batch>``) and their maximum (``max``)."""
    model = model.eval()
    limit = size_limit(model)
    if limit is not None:
        cut = tuple(n for n in sizes if n <= limit)
        # A pairwise model is checked at its limit too: the largest set it accepts.
        at_limit = limit < ATTENTION_MAX and limit < max(sizes, default=0) and limit not in cut
        sizes = cut + ((limit,) if at_limit else ())
    figures: dict[str, float] = {}
    cases = [(f"size_{n}", [n] * max(1, min(8, 10_000 // n))) for n in sizes]
    cases.append(("mixed", [min(n, limit or n) for n in (0, 1, 2, 5, 17)]))

    def compare(key: str, out: Any, ref: Any) -> None:
        if isinstance(ref, dict):
            for head, value in ref.items():
                figures[f"{head}_{key}"] = relative(out[head], value.numpy())
        else:
            figures[key] = relative(out, ref.numpy())

    for i, (key, set_sizes) in enumerate(cases):
        batch = _batch(set_sizes, num_features, num_context, seed + i)
        with torch.inference_mode():
            ref = model(batch)
        compare(key, exported.predict(*_np(batch)), ref)
        if key == "mixed" and exported.chunked:
            compare("chunked_mixed", exported.predict_chunked(*_np(batch), chunk_size=3), ref)
    if exported.chunked and chunked_size:
        batch = _batch([chunked_size], num_features, num_context, seed + len(cases))
        with torch.inference_mode():
            ref = model.predict_chunked(batch, chunk_size)
        out = exported.predict_chunked(*_np(batch), chunk_size=chunk_size)
        compare(f"chunked_{chunked_size}", out, ref)
    figures["max"] = max(figures.values())
    return figures


def size_limit(model: SetModel) -> int | None:
    """Largest set a parity batch holds: None for MBC encoders; the Set Transformer's
    ATTENTION_MAX, or its pairwise max_set_size when smaller (it refuses larger sets)."""
    if model.is_mbc:
        return None
    pairwise = getattr(model.encoder, "pairwise", None)
    return min(ATTENTION_MAX, pairwise.max_set_size) if pairwise is not None else ATTENTION_MAX


def failures(figures: dict[str, float], tolerance: float = TOLERANCE) -> list[str]:
    """``key rel`` of every batch above ``tolerance`` (not NaN-safe figures: inf fails)."""
    return [
        f"{key} {value:.3g}"
        for key, value in figures.items()
        if key != "max" and not value <= tolerance
    ]


def describe(figures: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v:.2g}" for k, v in figures.items() if k != "max")


__all__ = [
    "ATTENTION_MAX",
    "CHUNKED_SIZE",
    "SIZES",
    "TOLERANCE",
    "failures",
    "measure",
    "relative",
    "size_limit",
]
