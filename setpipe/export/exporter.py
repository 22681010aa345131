"""Write a SetModel's graphs to files: ONNX (torch.onnx, dynamo) or torch.export (.pt2).

Both formats come from one ``torch.export`` trace of the graphs in ``graphs.py`` with
symbolic sizes: ``elements`` (E, or e in a chunk) and ``sets`` (B; offsets have B+1).
The example inputs have 7 elements in 3 sets, none of size 0 or 1, so no size is
specialised to a constant (torch.export fixes sizes it sees as 0 or 1).
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.fx.experimental._config as torch_config
from torch import nn
from torch.export import Dim

from setpipe.errors import ExportError, ModelError
from setpipe.export.graphs import (
    FinalizeGraph,
    ScoreGraph,
    UpdateGraph,
    WholeGraph,
    init_state,
    state_spec,
)
from setpipe.models.set_model import SetModel

FORMATS = ("onnx", "torch-export")
SUFFIX = {"onnx": ".onnx", "torch-export": ".pt2"}


@dataclass
class GraphFile:
    """One exported graph: its file and its inputs and outputs (name, dtype, shape)."""

    name: str
    file: str
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]


def _io(name: str, dtype: str, shape: list[str | int]) -> dict[str, Any]:
    return {"name": name, "dtype": dtype, "shape": shape}


OUTPUT = {"classify": "logits", "regress": "value", "rank": "scores"}
"""A head's output name by its task; with several heads, ``<head name>.<this>``."""


@dataclass(frozen=True)
class HeadOutput:
    """One head's output: the head (None for a single-head model), its task, the output."""

    head: str | None
    task: str
    name: str
    shape: list[str | int]

    def io(self) -> dict[str, Any]:
        return _io(self.name, "float32", self.shape)


def head_outputs(model: SetModel) -> list[HeadOutput]:
    """Every head's output, in the heads' order (the whole graph's outputs)."""
    heads = (
        [(None, model.task, model.head)]
        if model.tasks is None
        else [(n, model.tasks[n], h) for n, h in model.heads.items()]
    )
    out = []
    for name, task, head in heads:
        shape: list[str | int] = ["elements"] if task == "rank" else ["sets"]
        if task == "classify":
            shape.append(int(head.net[-1].out_features))
        label = OUTPUT[str(task)] if name is None else f"{name}.{OUTPUT[str(task)]}"
        out.append(HeadOutput(name, str(task), label, shape))
    return out


def _export(
    module: nn.Module,
    args: tuple[Any, ...],
    dynamic: tuple[Any, ...],
    path: Path,
    fmt: str,
    input_names: list[str],
    output_names: list[str],
) -> None:
    # Sizes seen as 1 in the trace would otherwise be guarded (a [B, 1] context's layout
    # check fixes B != 1): treat every symbolic size as possibly anything.
    with torch_config.patch(backed_size_oblivious=True):
        _trace(module, args, dynamic, path, fmt, input_names, output_names)


SINH_SERIES_BELOW = 1e-2
"""|x| below which sinh(x) is its Taylor series to x^5 (truncation ~x^7/5040, below float64
rounding there); above, (e^x - e^-x) / 2 loses ~1e-16 / |x| <= 1e-14 relative."""


def _onnx_translations() -> dict[Any, Any]:
    """ATen ops written in other ONNX ops for onnxruntime's CPU kernels.

    ``sinh``: onnxruntime implements Sinh for float32 only, and the jet pair features
    (``pairwise: {kind: jet}``, ln m^2) take it in float64, so a model that needs it would
    export and then fail to load ("Could not find an implementation for Sinh(9)"). Here it
    is computed in float64 from Exp, with the series near 0 where e^x - e^-x cancels.
    """
    from onnxscript import opset18 as op

    def sinh(self: Any) -> Any:
        x = op.Cast(self, to=11)  # DOUBLE
        x2 = op.Mul(x, x)
        # Python floats become float32 constants: 1/6 and 1/120 are divided in float64
        # from integers float32 holds exactly (a float32 1/6 would cost ~1e-13 here).
        one, half, six, twenty = (op.CastLike(v, x) for v in (1.0, 0.5, 6.0, 20.0))
        series = op.Mul(x, op.Add(one, op.Div(op.Mul(x2, op.Add(one, op.Div(x2, twenty))), six)))
        exact = op.Mul(op.Sub(op.Exp(x), op.Exp(op.Neg(x))), half)
        small = op.Less(op.Abs(x), op.CastLike(SINH_SERIES_BELOW, x))
        return op.CastLike(op.Where(small, series, exact), self)

    return {torch.ops.aten.sinh.default: sinh}


def _trace(
    module: nn.Module,
    args: tuple[Any, ...],
    dynamic: tuple[Any, ...],
    path: Path,
    fmt: str,
    input_names: list[str],
    output_names: list[str],
) -> None:
    if fmt == "torch-export":
        program = torch.export.export(module, args, dynamic_shapes=dynamic, strict=False)
        torch.export.save(program, str(path))
        return
    # The exporter prints its progress to stdout and logs warnings about optional
    # torchvision ops; an export is one line of setpipe's, not forty of torch's.
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "onnxscript", "onnx_ir")]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(logging.ERROR)
    try:
        with (
            contextlib.redirect_stdout(io.StringIO()),
            warnings.catch_warnings(),
        ):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                args,
                str(path),
                dynamo=True,
                custom_translation_table=_onnx_translations(),
                dynamic_shapes=dynamic,
                input_names=input_names,
                output_names=output_names,
                external_data=False,
                verbose=False,
            )
    finally:
        for log, level in zip(loggers, levels, strict=True):
            log.setLevel(level)


def export_graphs(
    model: SetModel, num_features: int, num_context: int, fmt: str, directory: Path
) -> list[GraphFile]:
    """Write ``model``'s graphs into ``directory``; MBC encoders get update/finalize too."""
    if fmt not in FORMATS:
        raise ModelError(f"export format {fmt!r} is not one of {', '.join(FORMATS)}")
    if model.task not in (None, *OUTPUT):
        raise ExportError(
            f"a model of task {model.task} has no exported graphs: export a classify, "
            "regress or rank model"
        )
    model = model.eval()
    suffix = SUFFIX[fmt]
    outputs = head_outputs(model)
    sets, elements = Dim("sets"), Dim("elements")
    values = torch.randn(7, num_features, generator=torch.Generator().manual_seed(0))
    offsets = torch.tensor([0, 2, 5, 7], dtype=torch.int64)
    set_index = torch.tensor([0, 0, 1, 1, 1, 2, 2], dtype=torch.int64)
    context = torch.randn(3, num_context) if num_context else None
    ctx_args: tuple[Any, ...] = (context,) if num_context else ()
    ctx_dyn: tuple[Any, ...] = ({0: sets},) if num_context else ()
    ctx_io = [_io("context", "float32", ["sets", num_context])] if num_context else []
    values_io = _io("values", "float32", ["elements", num_features])
    files: list[GraphFile] = []

    def add(name, module, args, dynamic, inputs, outputs) -> None:
        path = directory / f"{name}{suffix}"
        with torch.no_grad():
            _export(
                module,
                args,
                dynamic,
                path,
                fmt,
                [i["name"] for i in inputs],
                [o["name"] for o in outputs],
            )
        files.append(GraphFile(name, path.name, inputs, outputs))

    add(
        "whole",
        WholeGraph(model),
        (values, offsets, *ctx_args),
        ({0: elements}, {0: sets + 1}, *ctx_dyn),
        [values_io, _io("offsets", "int64", ["sets+1"]), *ctx_io],
        [o.io() for o in outputs],
    )
    if not model.is_mbc:
        return files
    spec = state_spec(model)
    state = init_state(model, 3)
    state_in = [
        _io(f"state.{t.name}", str(t.dtype).removeprefix("torch."), ["sets", *t.shape])
        for t in spec
    ]
    state_out = [dict(s, name=f"{s['name']}.next") for s in state_in]
    state_dyn = tuple({0: sets} for _ in spec)
    index_io = _io("set_index", "int64", ["elements"])
    add(
        "update",
        UpdateGraph(model),
        (values, set_index, state),
        ({0: elements}, {0: elements}, state_dyn),
        [values_io, index_io, *state_in],
        state_out,
    )
    embed_dim = int(model.encoder.out_dim)  # type: ignore[arg-type]
    embedding_io = _io("embedding", "float32", ["sets", embed_dim])
    final_out = [o.io() for o in outputs if o.task != "rank"]
    final_out += [embedding_io] if model.ranks else []
    # A state that has seen the example chunk: finalize is traced on real values.
    with torch.no_grad():
        seen = UpdateGraph(model)(values, set_index, state)
    add(
        "finalize",
        FinalizeGraph(model),
        (seen, *ctx_args),
        (state_dyn, *ctx_dyn),
        [*state_in, *ctx_io],
        final_out,
    )
    if model.ranks:
        embedding = torch.randn(3, embed_dim)
        add(
            "score",
            ScoreGraph(model),
            (values, set_index, embedding),
            ({0: elements}, {0: elements}, {0: sets}),
            [values_io, index_io, embedding_io],
            [o.io() for o in outputs if o.task == "rank"],
        )
    return files


__all__ = ["FORMATS", "OUTPUT", "GraphFile", "HeadOutput", "export_graphs", "head_outputs"]
