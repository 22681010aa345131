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
        self.task: str = self.meta["task"]
        self.has_context: bool = self.meta["num_context"] > 0
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

    def predict(
        self, values: np.ndarray, offsets: np.ndarray, context: np.ndarray | None = None
    ) -> np.ndarray:
        """The whole-set graph: classify logits [B, C], regress [B], rank scores [E]."""
        values = np.ascontiguousarray(values, dtype=np.float32)
        offsets = np.ascontiguousarray(offsets, dtype=np.int64)
        return self._run("whole", values, offsets, *self._context(context, len(offsets) - 1))[0]

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
    ) -> np.ndarray:
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
        out = self._run("finalize", state, *ctx)[0]
        if self.task != "rank":
            return out
        parts = [
            self._run("score", values[lo : lo + chunk_size], set_index[lo : lo + chunk_size], out)[
                0
            ]
            for lo in bounds
        ]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)


__all__ = ["EXPORT_JSON", "ExportedModel", "set_index_np"]
