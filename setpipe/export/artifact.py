"""``setpipe export``: a registered model version as ONNX or torch.export graphs in a directory,
checked against PyTorch, and logged to MLflow beside the version.

The directory holds the graphs (``whole``; ``update``/``finalize`` for MBC encoders;
``score`` for rank), ``export.json`` (inputs, outputs, dtypes, shapes, the chunked
state, parity figures), ``README.md`` (the same for people), ``transforms.json`` and
``job.yaml``.

The job's feature transforms are NOT inside the graphs: they travel as metadata
(``transforms.json``, the FittedTransforms the pyfunc applies, with the fitted
standardize statistics), and the graphs take the model's features. Two of the ops are
set-relative (center, fraction need the whole set's weighted mean or sum before any
element's feature exists), which the chunked graphs, streaming a set in constant
memory, cannot compute; one convention for both graphs, and one definition of the
transforms (the JSON the pyfunc reads), rather than a second implementation per format.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient

from setpipe.errors import ExportError, SetpipeError
from setpipe.export.exporter import FORMATS, export_graphs, head_outputs
from setpipe.export.graphs import state_spec
from setpipe.export.parity import CHUNKED_SIZE, SIZES, TOLERANCE, describe, failures, measure
from setpipe.export.runtime import EXPORT_JSON, ExportedModel
from setpipe.models.set_model import SetModel
from setpipe.models.set_transformer import SetTransformerEncoder
from setpipe.spec import dump_job
from setpipe.tracking.pyfunc import load_set_model

TAG = "setpipe.export.{fmt}"
"""Model-version tag: the artifact URI of the export of that format."""


@dataclass
class ExportSummary:
    name: str | None
    version: str | None
    format: str
    directory: Path
    graphs: list[str]
    parity: dict[str, float]
    artifact_uri: str | None


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out}: exists and is not a directory; give a directory path")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ExportError(
            f"--out {out}: the directory is not empty; pass --overwrite to replace it, or "
            "give a new directory"
        )


def write_directory(
    model: SetModel,
    fmt: str,
    directory: Path,
    *,
    features: list[str],
    context: list[str],
    chunk_size: int,
    model_info: dict[str, Any],
) -> dict[str, Any]:
    """The graphs of ``model`` and their ``export.json`` in ``directory``; returns the JSON."""
    model = model.eval()
    try:
        files = export_graphs(model, len(features), len(context), fmt, directory)
    except SetpipeError:
        raise
    except Exception as err:  # torch.export / onnx report unsupported code this way
        first = str(err).splitlines()[0] if str(err) else ""
        raise ExportError(
            f"{model_info.get('uri')}: the {fmt} export failed: {type(err).__name__}: {first}"
        ) from err
    meta: dict[str, Any] = {
        "format": fmt,
        "model": model_info,
        "task": model.task,
        "encoder": type(model.encoder).__name__,
        "features": features,
        "num_context": len(context),
        "context": context,
        "transforms": "transforms.json: apply to the raw element features first "
        "(setpipe.data.transforms.FittedTransforms); the graphs take model features",
        "graphs": {f.name: asdict(f) for f in files},
        "chunk_size": chunk_size,
    }
    if model.tasks is not None:
        # Several heads: which output of the graphs is whose (whole: all, in this order;
        # finalize: the classify and regress heads' in this order, then the embedding).
        meta["heads"] = [
            {"name": o.head, "task": o.task, "output": o.name, "shape": o.shape}
            for o in head_outputs(model)
        ]
    pairwise = getattr(model.encoder, "pairwise", None)
    if isinstance(model.encoder, SetTransformerEncoder) and pairwise is not None:
        # The graph holds heads x n x n pair biases per set, like the PyTorch model: the
        # runtime refuses larger sets as model.encoder.pairwise.max_set_size does.
        meta["max_set_size"] = int(pairwise.max_set_size)
    if model.is_mbc:
        meta["state"] = [
            {
                "name": t.name,
                "dtype": str(t.dtype).removeprefix("torch."),
                "shape": list(t.shape),
                "fill": "-inf" if t.fill == float("-inf") else t.fill,
            }
            for t in state_spec(model)
        ]
    (directory / EXPORT_JSON).write_text(json.dumps(meta, indent=2))
    return meta


def export_model(
    model_uri: str,
    fmt: str,
    out: str | Path,
    *,
    overwrite: bool = False,
    tracking_uri: str | None = None,
    sizes: tuple[int, ...] = SIZES,
    chunked_size: int = CHUNKED_SIZE,
    tolerance: float = TOLERANCE,
    log: bool = True,
) -> ExportSummary:
    """Export ``model_uri`` (``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``) to ``out``.

    Nothing is written to ``out`` unless parity holds: the graphs are made in a temporary
    directory beside it and moved in at the end. The figures are logged either way.
    """
    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}")
    out = Path(out)
    _check_out(out, overwrite)
    loaded = load_set_model(model_uri, tracking_uri)
    job, model = loaded.job, loaded.model.eval()
    num_features, num_context = len(job.data.feature_names), len(job.data.context)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}-", dir=out.parent) as tmp:
        work = Path(tmp) / "export"
        work.mkdir()
        started = time.perf_counter()
        meta = write_directory(
            model,
            fmt,
            work,
            features=list(job.data.feature_names),
            context=list(job.data.context),
            chunk_size=job.train.chunk_size,
            model_info={"uri": model_uri, "name": loaded.name, "version": loaded.version},
        )
        (work / "transforms.json").write_text(json.dumps(loaded.transforms.to_dict(), indent=2))
        (work / "job.yaml").write_text(dump_job(job))
        figures = measure(
            model,
            ExportedModel(work),
            num_features,
            num_context,
            sizes=sizes,
            chunked_size=chunked_size if model.is_mbc else 0,
            chunk_size=job.train.chunk_size,
        )
        seconds = time.perf_counter() - started
        bad = failures(figures, tolerance)
        meta["parity"] = {
            "measure": "max |exported - torch| / max |torch| per batch",
            "tolerance": tolerance,
            "figures": figures,
            "passed": not bad,
        }
        (work / EXPORT_JSON).write_text(json.dumps(meta, indent=2))
        (work / "README.md").write_text(readme(meta))
        artifact_uri = None
        if log and loaded.name is not None:
            artifact_uri = _log(loaded.name, loaded.version, fmt, work, figures, not bad,
                                seconds, tracking_uri, upload=not bad)  # fmt: skip
        if bad:
            raise ExportError(
                f"{model_uri}: the {fmt} export differs from PyTorch above {tolerance:g} "
                f"(max |Δ| / max |ref|): {'; '.join(bad)}; nothing was written to {out}. "
                "All figures: " + describe(figures)
            )
        if out.exists():
            shutil.rmtree(out)
        work.rename(out)
    return ExportSummary(
        loaded.name, loaded.version, fmt, out, list(meta["graphs"]), figures, artifact_uri
    )


def _log(
    name: str,
    version: str | None,
    fmt: str,
    directory: Path,
    figures: dict[str, float],
    passed: bool,
    seconds: float,
    tracking_uri: str | None,
    *,
    upload: bool,
) -> str | None:
    """Figures as metrics on the version's run, the files as its artifacts, a version tag."""
    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    mv = client.get_model_version(name, str(version))
    if not mv.run_id:
        return None
    key = fmt.replace("-", "_")
    for k, v in figures.items():
        if v != float("inf"):
            client.log_metric(mv.run_id, f"export.{key}.rel_{k}", v)
    client.log_metric(mv.run_id, f"export.{key}.seconds", seconds)
    client.set_tag(mv.run_id, f"export.{key}.parity", "passed" if passed else "failed")
    if not upload:
        return None
    path = f"export/{fmt}/v{version}"
    client.log_artifacts(mv.run_id, str(directory), path)
    uri = f"{client.get_run(mv.run_id).info.artifact_uri}/{path}"
    client.set_model_version_tag(name, str(version), TAG.format(fmt=fmt), uri)
    client.set_model_version_tag(
        name, str(version), f"{TAG.format(fmt=fmt)}.rel_max", f"{figures['max']:.3g}"
    )
    return uri


def _table(rows: list[dict[str, Any]]) -> str:
    lines = ["| name | dtype | shape |", "| --- | --- | --- |"]
    lines += [
        f"| `{r['name']}` | {r['dtype']} | [{', '.join(map(str, r['shape']))}] |" for r in rows
    ]
    return "\n".join(lines)


def readme(meta: dict[str, Any]) -> str:
    """The export directory's README: what each graph takes and gives, and how to drive them."""
    m = meta["model"]
    parts = [
        f"# {m['name']} version {m['version']} ({meta['format']})",
        "",
        f"Task {meta['task'] or 'several heads'}, encoder {meta['encoder']}. Sizes are "
        "symbolic: `elements` (E, or e in one chunk), `sets` (B; offsets have B+1 entries).",
        "",
        "Inputs are the model's features, float32, in this order: "
        + ", ".join(f"`{f}`" for f in meta["features"])
        + ". Apply `transforms.json` to the raw element features first (the graphs do not:"
        " set-relative transforms need the whole set, which the chunked graphs never hold).",
        "",
        "Packed sets: `values` holds every element of every set, set after set; set b owns "
        "rows `offsets[b]:offsets[b+1]` (`set_index[i]` = the set of row i in a chunk).",
    ]
    if "heads" in meta:
        parts += [
            "",
            "Several heads: `whole` gives one output per head, in this order; `finalize` the "
            "classify and regress heads' outputs in this order, then `embedding` when a head "
            "ranks (`score` scores the elements with it).",
            "",
            "| head | task | output | shape |",
            "| --- | --- | --- | --- |",
        ]
        parts += [
            f"| {h['name']} | {h['task']} | `{h['output']}` | [{', '.join(map(str, h['shape']))}] |"
            for h in meta["heads"]
        ]
    if "max_set_size" in meta:
        parts += [
            "",
            f"Sets of at most {meta['max_set_size']} elements (model.encoder.pairwise."
            "max_set_size): the pairwise biases hold heads x n x n numbers per set.",
        ]
    for name, graph in meta["graphs"].items():
        parts += ["", f"## {name} (`{graph['file']}`)", "", "Inputs:", "", _table(graph["inputs"])]
        parts += ["", "Outputs:", "", _table(graph["outputs"])]
    if "state" in meta:
        parts += [
            "",
            "## Streaming a set in constant memory",
            "",
            "Start every state tensor at `fill` (shape [B, *shape]); for each chunk of at most "
            f"{meta['chunk_size']} elements (a chunk may cut through sets) run `update` on "
            "(values, set_index, *state) and keep its outputs as the next state; then "
            "`finalize` (*state[, context]). Rank: `finalize` gives the set embeddings and "
            "`score` scores each chunk in a second pass.",
            "",
            "| state | dtype | shape | fill |",
            "| --- | --- | --- | --- |",
        ]
        parts += [
            f"| `state.{t['name']}` | {t['dtype']} | [sets, {', '.join(map(str, t['shape']))}] "
            f"| {t['fill']} |"
            for t in meta["state"]
        ]
    if "parity" in meta:
        p = meta["parity"]
        parts += [
            "",
            "## Parity with PyTorch",
            "",
            f"{p['measure']}, tolerance {p['tolerance']:g}:",
        ]
        parts += ["", *[f"- {k}: {v:.3g}" for k, v in p["figures"].items()]]
    return "\n".join(parts) + "\n"


__all__ = ["TAG", "ExportError", "ExportSummary", "export_model", "readme", "write_directory"]
