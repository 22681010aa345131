"""Run an exported model directory: onnxruntime for ONNX, torch.export's module for .pt2.

``ExportedModel.predict`` runs the whole-set graph; ``predict_chunked`` is the reference
driver of the chunked graphs, what C++ code streaming a huge set does::

    state = [full((B, *shape), fill, dtype) for each state tensor in export.json]
    for each chunk of at most chunk_size elements (a chunk may cut through sets):
        state = update(values[chunk], set_index[chunk], *state)
    output = finalize(*state, context)                 # rank: the set embeddings
    rank: scores[chunk] = score(values[chunk], set_index[chunk], embedding), chunk by chunk

Memory is one chunk plus the state whatever the sets' sizes. Inputs are the model's
features (after the job's transforms, ``transforms.json``), float32.

Several heads (``heads`` in export.json): both passes return head name -> that head's
output, in the heads' order. A pairwise Set Transformer (``max_set_size`` in export.json)
refuses a batch holding a larger set before running the graph, as the PyTorch model does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from setpipe.errors import ModelError

EXPORT_JSON = "export.json"
SUFFIX = {"onnx": ".onnx", "torch-export": ".pt2"}


def set_index_np(offsets: np.ndarray) -> np.ndarray:
    """int64 [E]: the set of each element, from offsets [B+1]."""
    return np.repeat(np.arange(len(offsets) - 1, dtype=np.int64), np.diff(offsets))


class ExportedModel:
    """An export directory loaded for inference (CPU)."""

    def __init__(self, directory: str | Path, *, threads: int | None = None) -> None:
        self.directory = Path(directory)
        meta_path = self.directory / EXPORT_JSON
        if not meta_path.is_file():
            raise ModelError(
                f"{self.directory}: no {EXPORT_JSON}; not a directory written by setpipe export"
            )
        self.meta: dict[str, Any] = json.loads(meta_path.read_text())
        self.format: str = self.meta["format"]
        self.task: str | None = self.meta["task"]  # None: several heads (see heads)
        self.has_context: bool = self.meta["num_context"] > 0
        self.heads: list[dict[str, Any]] | None = self.meta.get("heads")
        """Several heads: name, task, output and shape of each, in order (else None)."""
        self.max_set_size: int | None = self.meta.get("max_set_size")
        self._graphs = {
            name: self._load(self.directory / info["file"], threads)
            for name, info in self.meta["graphs"].items()
        }

    @property
    def chunked(self) -> bool:
        return "update" in self._graphs

    def _load(self, path: Path, threads: int | None) -> Any:
        if self.format == "onnx":
            import onnxruntime as ort

            options = ort.SessionOptions()
            if threads is not None:
                options.intra_op_num_threads = threads
                options.inter_op_num_threads = 1
            options.log_severity_level = 3  # errors only: no per-session warnings
            return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        import torch

        return torch.export.load(str(path)).module()

    def _run(self, name: str, *args: Any) -> list[np.ndarray]:
        """Graph ``name`` on positional inputs (a tuple stands for the state's tensors)."""
        flat: list[np.ndarray] = []
        for a in args:
            flat.extend(a if isinstance(a, tuple | list) else [a])
        if self.format == "onnx":
            session = self._graphs[name]
            names = [i.name for i in session.get_inputs()]
            return session.run(None, dict(zip(names, flat, strict=True)))
        import torch

        tensors = [
            tuple(torch.from_numpy(np.ascontiguousarray(t)) for t in a)
            if isinstance(a, tuple | list)
            else torch.from_numpy(np.ascontiguousarray(a))
            for a in args
        ]
        with torch.inference_mode():
            out = self._graphs[name](*tensors)
        out = out if isinstance(out, tuple | list) else [out]
        return [o.numpy() for o in out]

    def _context(self, context: np.ndarray | None, num_sets: int) -> tuple[np.ndarray, ...]:
        if not self.has_context:
            return ()
        if context is None or context.shape != (num_sets, self.meta["num_context"]):
            found = "none" if context is None else f"shape {context.shape}"
            raise ModelError(
                f"the exported model takes context [{num_sets}, {self.meta['num_context']}] "
                f"float32; got {found}"
            )
        return (np.ascontiguousarray(context, dtype=np.float32),)

    def _check_sizes(self, offsets: np.ndarray) -> None:
        """ModelError naming the first set above ``max_set_size`` (pairwise attention)."""
        if self.max_set_size is None or len(offsets) < 2:
            return
        sizes = np.diff(offsets)
        big = np.flatnonzero(sizes > self.max_set_size)
        if big.size:
            i = int(big[0])
            raise ModelError(
                f"{self.directory}: set {i} of the batch has {int(sizes[i])} elements, more than "
                f"the model's max_set_size {self.max_set_size} (export.json; "
                f"model.encoder.pairwise.max_set_size): pairwise attention holds heads x n x n "
                f"numbers per set (O(n^2) memory); send sets of at most {self.max_set_size} "
                "elements, or export a model trained with a larger max_set_size"
            )

    def _named(self, outputs: list[np.ndarray]) -> np.ndarray | dict[str, np.ndarray]:
        """One head: its output; several: head name -> output (``outputs`` in head order)."""
        if self.heads is None:
            return outputs[0]
        return {h["name"]: out for h, out in zip(self.heads, outputs, strict=True)}

    def predict(
        self, values: np.ndarray, offsets: np.ndarray, context: np.ndarray | None = None
    ) -> np.ndarray | dict[str, np.ndarray]:
        """The whole-set graph: classify logits [B, C], regress [B], rank scores [E];
        several heads: head name -> its output."""
        values = np.ascontiguousarray(values, dtype=np.float32)
        offsets = np.ascontiguousarray(offsets, dtype=np.int64)
        self._check_sizes(offsets)
        ctx = self._context(context, len(offsets) - 1)
        return self._named(self._run("whole", values, offsets, *ctx))

    def init_state(self, num_sets: int) -> tuple[np.ndarray, ...]:
        return tuple(
            np.full((num_sets, *t["shape"]), float(t["fill"]), dtype=np.dtype(t["dtype"]))
            for t in self.meta["state"]
        )

    def predict_chunked(
        self,
        values: np.ndarray,
        offsets: np.ndarray,
        context: np.ndarray | None = None,
        chunk_size: int = 4096,
    ) -> np.ndarray | dict[str, np.ndarray]:
        """Same outputs as ``predict`` through the update/finalize (and score) graphs."""
        if not self.chunked:
            raise ModelError(
                f"{self.directory}: no update/finalize graphs (the encoder is not mini-batch "
                "consistent): use predict"
            )
        values = np.ascontiguousarray(values, dtype=np.float32)
        offsets = np.ascontiguousarray(offsets, dtype=np.int64)
        num_sets = len(offsets) - 1
        set_index = set_index_np(offsets)
        ctx = self._context(context, num_sets)
        state = self.init_state(num_sets)
        bounds = range(0, len(values), chunk_size)
        for lo in bounds:
            chunk = slice(lo, lo + chunk_size)
            state = tuple(self._run("update", values[chunk], set_index[chunk], state))
        final = self._run("finalize", state, *ctx)
        tasks = [self.task] if self.heads is None else [h["task"] for h in self.heads]
        if "rank" not in tasks:
            return self._named(final)
        embedding = final.pop()  # finalize: the other heads' outputs, then the embedding
        parts = [
            self._run("score", values[lo : lo + chunk_size], set_index[lo : lo + chunk_size],
                      embedding)[0]
            for lo in bounds
        ]  # fmt: skip
        scores = np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)
        final.insert(tasks.index("rank"), scores)
        return self._named(final)


__all__ = ["EXPORT_JSON", "ExportedModel", "set_index_np"]
