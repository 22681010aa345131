"""A registered version served through its ONNX graphs (``setpipe serve --runtime onnx``).

``load_onnx_model`` loads the version as ``load_set_model`` does (job, transforms, the
request checks), then its ONNX export: the one ``setpipe export`` logged on the version
(tag ``setpipe.export.onnx``), or, when there is none, graphs exported here at load time
into a temporary directory (no parity run: that is what ``setpipe export`` is for).
Predictions run the whole-set graph; a batch with more elements than the job's
``train.chunk_size`` runs through the chunked graphs when the encoder has them, as the
torch path folds chunks to keep memory constant. Several heads: each set's output is
``{head name: that head's output}``, the JSON the torch path gives.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from mlflow.tracking import MlflowClient

from setpipe.data.batch import SetBatch
from setpipe.export.artifact import TAG, write_directory
from setpipe.export.runtime import ExportedModel
from setpipe.tracking.pyfunc import (
    NON_FINITE_HINT,
    LoadedSetModel,
    NonFiniteOutput,
    heads_outputs,
    load_set_model,
    non_finite_sets,
)


@dataclass
class OnnxSetModel(LoadedSetModel):
    """A LoadedSetModel whose ``predict_batch`` runs onnxruntime."""

    exported: Any = None
    """The ExportedModel (ONNX) of this version."""

    def predict_batch(
        self, raw: SetBatch, *, allow_non_finite: bool = False
    ) -> list[dict[str, Any]]:
        batch = self.transforms.apply(raw)
        values, offsets = batch.values.numpy(), batch.offsets.numpy()
        context = None if batch.context is None else batch.context.numpy()
        chunk = self.job.train.chunk_size
        if self.exported.chunked and batch.num_elements > chunk:
            out = self.exported.predict_chunked(values, offsets, context, chunk_size=chunk)
        else:
            out = self.exported.predict(values, offsets, context)
        tensors = (
            {name: torch.from_numpy(o) for name, o in out.items()}
            if isinstance(out, dict)
            else torch.from_numpy(out)
        )
        # The torch path's per-set dicts: several heads give {head name: that head's output}.
        outputs = heads_outputs(self.job, tensors, batch.offsets)
        bad = [] if allow_non_finite else non_finite_sets(outputs)
        if bad:
            raise NonFiniteOutput(
                bad,
                f"the model's output is not finite (NaN or infinite) for set(s) "
                f"{', '.join(map(str, bad[:10]))} of {len(outputs)}. Likely cause: "
                f"{NON_FINITE_HINT}",
            )
        return outputs


def _logged_export(name: str, version: str, tracking_uri: str | None, into: Path) -> Path | None:
    """The directory of the version's logged ONNX export, downloaded into ``into``."""
    from mlflow.artifacts import download_artifacts

    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    uri = client.get_model_version(name, version).tags.get(TAG.format(fmt="onnx"))
    if not uri:
        return None
    return Path(download_artifacts(artifact_uri=uri, dst_path=str(into), tracking_uri=tracking_uri))


def load_onnx_model(
    model_uri: str, tracking_uri: str | None = None, threads: int | None = None
) -> OnnxSetModel:
    """``models:/NAME/VERSION`` (or @ALIAS) with its ONNX graphs loaded into onnxruntime."""
    loaded = load_set_model(model_uri, tracking_uri)
    with tempfile.TemporaryDirectory(prefix="setpipe-onnx-") as tmp:
        directory = None
        if loaded.name is not None and loaded.version is not None:
            directory = _logged_export(loaded.name, loaded.version, tracking_uri, Path(tmp))
        if directory is None:
            directory = Path(tmp) / "export"
            directory.mkdir()
            job = loaded.job
            write_directory(
                loaded.model,
                "onnx",
                directory,
                features=list(job.data.feature_names),
                context=list(job.data.context),
                chunk_size=job.train.chunk_size,
                model_info={"uri": model_uri, "name": loaded.name, "version": loaded.version},
            )
        exported = ExportedModel(directory, threads=threads)  # sessions hold the graphs
    return OnnxSetModel(
        job=loaded.job,
        model=loaded.model,
        transforms=loaded.transforms,
        name=loaded.name,
        version=loaded.version,
        exported=exported,
    )


__all__ = ["OnnxSetModel", "load_onnx_model"]
