"""Fine-tuning: start from other weights, freeze parts, give parts their own learning rates.

A *part* is a parameter-name prefix at a module boundary: ``encoder`` covers
``encoder.embed.0.weight`` but not ``encoder_x.weight``; ``encoder.embed.0`` is one layer.
Three job fields speak in parts:

- ``model.init_from``: resolved once on the driver (``setpipe.pipeline``) into a local
  state-dict file; every worker loads it after ``build_model`` and before DDP wraps the model
  (``load_initial_weights``), so all ranks start identical. Only the named parts are loaded
  (default: all) and they must match by name and shape, or the run stops naming the
  parameter and both shapes. A resumed run loads its own checkpoint over them.
- ``train.freeze``: those parameters get ``requires_grad=False`` before DDP wraps the model,
  so DDP neither reduces nor waits for their gradients, and the optimizer never holds them:
  their values stay bit-exact.
- ``train.lr_multipliers``: one optimizer param group per distinct multiplier (the longest
  matching prefix decides); the LR schedule multiplies every group's own base lr alike and
  weight decay applies to each group as to the one before.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from setpipe.errors import TrainError
from setpipe.models import build_model
from setpipe.spec._fields import suggest
from setpipe.spec.models import InitFromSpec, JobSpec

CHECKPOINT_WEIGHTS = "weights.pt"
"""The model weights inside a setpipe checkpoint directory (``train/checkpoint.py``)."""


def under(name: str, part: str) -> bool:
    """Whether parameter ``name`` belongs to ``part`` (the name itself or below it)."""
    return name == part or name.startswith(part + ".")


def _prefixes(names: Iterable[str]) -> list[str]:
    """Every module-boundary prefix of ``names`` (encoder, encoder.embed, ...), for hints."""
    out: dict[str, None] = {}
    for name in names:
        pieces = name.split(".")
        for i in range(1, len(pieces) + 1):
            out[".".join(pieces[:i])] = None
    return list(out)


def check_parts(names: Iterable[str], parts: Iterable[str], field: str) -> None:
    """TrainError naming each part of ``field`` that matches no parameter in ``names``."""
    names = list(names)
    unknown = [p for p in parts if not any(under(n, p) for n in names)]
    if not unknown:
        return
    prefixes = _prefixes(names)
    tops = sorted({n.split(".")[0] for n in names})
    example = next((p for p in prefixes if "." in p), prefixes[0] if prefixes else "encoder")
    hints = []
    for part in unknown:
        near = suggest(part, prefixes)
        hints.append(f"{part!r}" + (f" (did you mean {near!r}?)" if near else ""))
    raise TrainError(
        f"{field}: {', '.join(hints)} matches no parameter of the model; expected a part "
        f"({', '.join(tops)}) or a parameter-name prefix such as {example!r}"
    )


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a weights file or a setpipe checkpoint directory (its weights.pt)."""
    path = Path(path).expanduser()
    if path.is_dir():
        inside = path / CHECKPOINT_WEIGHTS
        if not inside.is_file():
            raise TrainError(
                f"model.init_from: {path} is a directory without {CHECKPOINT_WEIGHTS}; expected "
                "a setpipe checkpoint directory (epoch_NNNNNN or checkpoint_NNNNNN), a weights "
                "file, or models:/NAME@ALIAS"
            )
        path = inside
    if not path.is_file():
        raise TrainError(
            f"model.init_from: {path} does not exist; expected a setpipe checkpoint directory, "
            "its weights.pt, models:/NAME@ALIAS or models:/NAME/VERSION"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several kinds for a file that is not weights
        raise TrainError(
            f"model.init_from: {path} is not a state dict saved by torch.save "
            f"({type(err).__name__}: {err}); expected a setpipe checkpoint's weights.pt"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise TrainError(
            f"model.init_from: {path} holds a {type(state).__name__}, not a state dict of "
            "tensors; expected a setpipe checkpoint's weights.pt"
        )
    return state


def load_initial_weights(
    model: nn.Module,
    state: dict[str, torch.Tensor],
    parts: list[str] | None,
    source: str,
) -> list[str]:
    """Copy ``parts`` of ``state`` (None: all of it) into ``model``; returns the names loaded.

    Every model entry under the parts must be in ``state`` with the same shape, and (when
    every part is loaded) every ``state`` entry must be in the model: else a TrainError names
    the parameter, both shapes and the fix. ``source`` names where ``state`` came from.
    """
    target = model.state_dict()
    if parts is not None:
        check_parts(target, parts, "model.init_from.parts")
    wanted = [n for n in target if parts is None or any(under(n, p) for p in parts)]
    missing = [n for n in wanted if n not in state]
    mismatched = [n for n in wanted if n in state and state[n].shape != target[n].shape]
    extra = [n for n in state if n not in target] if parts is None else []
    if mismatched:
        lines = "; ".join(
            f"{n}: {tuple(state[n].shape)} in {source}, {tuple(target[n].shape)} in this model"
            for n in mismatched[:5]
        )
        more = f"; and {len(mismatched) - 5} more" if len(mismatched) > 5 else ""
        raise TrainError(
            f"model.init_from: the shapes differ ({lines}{more}). Give this job the source "
            "model's sizes (model.encoder, model.head, data.features, data.context), or load "
            "only the parts that match with model.init_from.parts (e.g. [encoder])"
        )
    if missing or extra:
        named = [f"{n} is not in {source}" for n in missing[:5]]
        named += [f"{n} (in {source}) is not in this model" for n in extra[:5]]
        count = len(missing) + len(extra)
        more = f"; {count} in all" if count > 5 else ""
        raise TrainError(
            f"model.init_from: the parameters differ: {'; '.join(named)}{more}. The source was "
            "built with another model shape; load only the parts both share with "
            "model.init_from.parts (e.g. [encoder]) or match the model spec"
        )
    with torch.no_grad():
        for name in wanted:
            target[name].copy_(state[name])
    return wanted


def apply_freeze(model: nn.Module, freeze: list[str]) -> list[str]:
    """``requires_grad=False`` on every parameter under ``freeze``; returns their names.

    Call before DDP wraps the model (DDP only reduces the gradients of trainable ones).
    """
    names = [n for n, _ in model.named_parameters()]
    check_parts(names, freeze, "train.freeze")
    frozen = []
    for name, param in model.named_parameters():
        if any(under(name, p) for p in freeze):
            param.requires_grad_(False)
            frozen.append(name)
    if len(frozen) == len(names):
        raise TrainError(
            f"train.freeze {freeze} freezes every parameter of the model: nothing would train; "
            "leave at least one part trainable (e.g. freeze: [encoder])"
        )
    return frozen


def param_groups(model: nn.Module, multipliers: dict[str, float]) -> list[dict[str, Any]]:
    """The trainable parameters in groups of equal lr multiplier (longest matching prefix;
    1 where none matches), each group as ``{"params": [...], "lr_multiplier": m}``.

    A multiplier whose part holds only frozen parameters is an error: it would do nothing.
    """
    named = list(model.named_parameters())
    check_parts([n for n, _ in named], multipliers, "train.lr_multipliers")
    idle = [
        part
        for part in multipliers
        if not any(under(n, part) and p.requires_grad for n, p in named)
    ]
    if idle:
        raise TrainError(
            f"train.lr_multipliers: {', '.join(map(repr, idle))} holds only frozen parameters "
            "(train.freeze); remove it from lr_multipliers or from freeze"
        )
    groups: dict[float, list[nn.Parameter]] = {}
    for name, param in named:
        if not param.requires_grad:
            continue
        matches = [p for p in multipliers if under(name, p)]
        factor = multipliers[max(matches, key=len)] if matches else 1.0
        groups.setdefault(factor, []).append(param)
    return [{"params": params, "lr_multiplier": m} for m, params in groups.items()]


def prepare(
    model: nn.Module, job: JobSpec, weights: str | None, source: str | None = None
) -> list[dict[str, Any]]:
    """Ready ``model`` for fine-tuning before DDP wraps it: load the resolved init_from
    ``weights`` file (``source``: what it was resolved from, for messages), freeze
    train.freeze; return the trainable param groups for ``build_optimizer``."""
    init = job.model.init_from
    if weights is not None and isinstance(init, InitFromSpec):
        load_initial_weights(model, read_weights(weights), init.parts, source or init.uri)
    if job.train.freeze:
        apply_freeze(model, job.train.freeze)
    return param_groups(model, job.train.lr_multipliers)


def check(job: JobSpec, weights: str | None, source: str | None = None) -> None:
    """``prepare`` on a CPU model built as the workers build theirs, on the driver: a shape
    mismatch or an unknown part stops the run before any worker starts."""
    if weights is None and not job.train.freeze and not job.train.lr_multipliers:
        return
    model = build_model(
        job.model,
        num_features=len(job.data.feature_names),
        num_context=len(job.data.context),
        feature_names=job.data.feature_names,
    )
    prepare(model, job, weights, source)


__all__ = [
    "apply_freeze",
    "check",
    "check_parts",
    "load_initial_weights",
    "param_groups",
    "prepare",
    "read_weights",
    "under",
]
