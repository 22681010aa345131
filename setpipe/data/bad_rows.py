"""Bad rows: NaN/inf/null values, empty sets, unequal parallel lists, oversized sets, and
labels that do not fit the job's task.

Every check is vectorised over the flattened values and the list offsets; a Python loop
runs over bad rows only, to word their messages (each in O(its own size)). With
``on_bad_row: error`` the message names the file, the row (its index within the file),
the column, what was found, what is expected, and the fix; with ``skip`` the rows are
dropped and counted.

Ray Data's read tasks run the checks (``RowCheck``) where the rows are read, in parallel,
and hand each row's verdict along in ``BAD_COLUMN``; ``check_rows`` then only filters or
raises. Torch-free: this module runs in the read tasks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from setpipe.data.layout import (
    BAD_COLUMN,
    PATH_COLUMN,
    ROW_COLUMN,
    element_columns,
    flat_children,
    list_sizes,
)
from setpipe.errors import DataError
from setpipe.spec.models import DataSpec, ModelSpec, ParallelLists, StructList, VectorList

FIX = "set data.on_bad_row: skip to drop such rows"


@dataclass(frozen=True)
class LabelRule:
    """What a valid label is for the job's task (``model.task``, ``model.num_classes``)."""

    task: Literal["classify", "regress", "rank"] | None
    """None: several heads (model.heads), each with its own rule in ``classes``."""
    num_classes: int | None = None
    """For classify: a label is a whole number in [0, num_classes)."""
    classes: tuple[tuple[str, int, str], ...] = ()
    """Several heads: (target column, num_classes, where it is declared) of each classify head."""

    @classmethod
    def of(cls, model: ModelSpec) -> LabelRule:
        if model.heads is not None:
            classes = tuple(
                (h.target, h.num_classes, f"model.heads[{i}].num_classes")
                for i, h in enumerate(model.heads)
                if h.task == "classify" and h.num_classes is not None
            )
            return cls(None, classes=classes)
        return cls(model.task, model.num_classes)

    def class_columns(self, spec: DataSpec) -> list[tuple[str, int, str]]:
        """(column, num_classes, where declared) of every class-id column to check."""
        if self.task == "classify" and self.num_classes is not None and spec.label is not None:
            return [(spec.label, self.num_classes, "model.num_classes")]
        return list(self.classes)


@dataclass(frozen=True)
class Problem:
    """One kind of bad row: which rows, and how to word any of them."""

    kind: str
    """nonfinite | null | empty | unequal | oversize | vector_dim | label | transform (for
    counts in inspect)."""
    rows: np.ndarray
    """bool [rows]: the rows that have it."""
    describe: Callable[[int], str]
    """Row index in the table -> 'part_pt has NaN at element 2; expected finite values'."""


def _row_of(offsets: np.ndarray, positions: np.ndarray) -> np.ndarray:
    return np.searchsorted(offsets, positions, side="right") - 1


def _nonfinite_elements(
    name: str, children: list[pa.Array], offsets: np.ndarray, num_rows: int, width: int = 1
) -> list[Problem]:
    """Problems for null or non-finite element values; ``width`` > 1 for vector components."""
    problems: list[Problem] = []
    # Arrow counts nulls per array: the common case (none) builds no mask at all.
    has_nulls = any(c.null_count for c in children)
    null_mask = None
    if has_nulls:
        null_mask = np.concatenate(
            [np.asarray(pc.is_null(c).to_numpy(zero_copy_only=False)) for c in children]
        )
    values_parts = [
        np.asarray(c.to_numpy(zero_copy_only=False)) if pa.types.is_floating(c.type) else None
        for c in children
    ]
    if null_mask is not None and null_mask.any():
        pos = np.flatnonzero(null_mask) // width
        rows = np.zeros(num_rows, dtype=bool)
        rows[_row_of(offsets, pos)] = True

        def null_at(r: int, mask: np.ndarray = null_mask) -> str:
            k = int(np.argmax(mask[offsets[r] * width : offsets[r + 1] * width])) // width
            return f"{name} has a null at element {k}; expected a number"

        problems.append(Problem("null", rows, null_at))
    if all(v is not None for v in values_parts) and values_parts:
        values = np.concatenate(values_parts) if len(values_parts) > 1 else values_parts[0]
        bad = ~np.isfinite(values)
        if null_mask is not None:
            bad &= ~null_mask
        if bad.any():
            flat_pos = np.flatnonzero(bad)
            pos = flat_pos // width
            rows = np.zeros(num_rows, dtype=bool)
            rows[_row_of(offsets, pos)] = True

            def nonfinite_at(r: int, bad: np.ndarray = bad) -> str:
                start = offsets[r] * width
                first = start + int(np.argmax(bad[start : offsets[r + 1] * width]))
                k = int(first // width - offsets[r])
                found = "NaN" if np.isnan(values[first]) else str(values[first])
                return f"{name} has {found} at element {k}; expected finite values"

            problems.append(Problem("nonfinite", rows, nonfinite_at))
    return problems


def _scalar_problems(table: pa.Table, name: str) -> list[Problem]:
    col = table.column(name)
    problems: list[Problem] = []
    nulls = np.asarray(pc.is_null(col).to_numpy(zero_copy_only=False))
    if nulls.any():
        problems.append(Problem("null", nulls, lambda r: f"{name} is null; expected a number"))
    if pa.types.is_floating(col.type):
        values = np.asarray(col.to_numpy())
        bad = ~np.isfinite(values) & ~nulls
        if bad.any():

            def nonfinite(r: int) -> str:
                found = "NaN" if np.isnan(values[r]) else str(values[r])
                return f"{name} is {found}; expected a finite number"

            problems.append(Problem("nonfinite", bad, nonfinite))
    return problems


def _class_problems(
    table: pa.Table, name: str, num_classes: int, where: str = "model.num_classes"
) -> list[Problem]:
    """Class ids that are fractional or outside [0, num_classes) (nulls, NaN: reported above)."""
    col = table.column(name)
    if pa.types.is_boolean(col.type):
        return []  # 0 or 1, and num_classes is at least 2
    values = np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.float64)
    with np.errstate(invalid="ignore"):
        bad = np.isfinite(values) & (
            (values != np.floor(values)) | (values < 0) | (values >= num_classes)
        )
    if not bad.any():
        return []

    def not_a_class(r: int) -> str:
        return (
            f"{name} is {col[r].as_py()}; expected a class id, a whole number from 0 to "
            f"{num_classes - 1} ({where}: {num_classes})"
        )

    return [Problem("label", bad, not_a_class)]


def _set_label_problems(table: pa.Table, spec: DataSpec, labels: LabelRule | None) -> list[Problem]:
    problems = [p for name in spec.set_label_columns for p in _scalar_problems(table, name)]
    if labels is not None:
        for name, num_classes, where in labels.class_columns(spec):
            problems += _class_problems(table, name, num_classes, where)
    return problems


def _element_label_problems(table: pa.Table, spec: DataSpec, sizes: np.ndarray) -> list[Problem]:
    """A relevance list of another length than its set, or with null / non-finite values."""
    el, first = spec.element_label_column, element_columns(spec)[0]
    if el is None:
        return []
    lab = list_sizes(table.column(el))
    unequal = lab != sizes
    if unequal.any():

        def uneq_labels(r: int) -> str:
            return (
                f"{el} has {lab[r]} labels, {first} has {sizes[r]} elements; expected one "
                "label per element"
            )

        return [Problem("unequal", unequal, uneq_labels)]
    offsets = np.zeros(len(sizes) + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])
    return _nonfinite_elements(el, flat_children(table.column(el)), offsets, len(sizes))


def label_columns(spec: DataSpec) -> list[str]:
    """What ``label_problems`` reads: the labels, and the set sizes' column for a relevance list."""
    sizes = [element_columns(spec)[0]] if spec.element_label_column is not None else []
    columns = [*sizes, *spec.set_label_columns, spec.element_label_column]
    return list(dict.fromkeys(c for c in columns if c is not None))


def label_problems(table: pa.Table, spec: DataSpec, labels: LabelRule | None) -> list[Problem]:
    """The label checks alone, on a table of ``label_columns`` (a cheap pass before training)."""
    first = element_columns(spec)[0]
    sizes = list_sizes(table.column(first)) if spec.element_label_column else None
    problems = _set_label_problems(table, spec, labels)
    if sizes is not None:
        problems += _element_label_problems(table, spec, sizes)
    return [p for p in problems if p.rows.any()]


def find_problems(
    table: pa.Table, spec: DataSpec, labels: LabelRule | None = None
) -> list[Problem]:
    """Every kind of bad row in ``table``, in the order they are reported.

    ``labels`` adds the task's label rule (class ids in range); without it a label only
    has to be a finite number.
    """
    n = table.num_rows
    layout = spec.elements
    cols = element_columns(spec)
    first = cols[0]
    problems: list[Problem] = []
    for c in cols:
        null_lists = np.asarray(pc.is_null(table.column(c)).to_numpy(zero_copy_only=False))
        if null_lists.any():
            problems.append(
                Problem("null", null_lists, lambda r, c=c: f"{c} is null; expected a list")
            )
    sizes = list_sizes(table.column(first))
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])
    problems.append(
        Problem(
            "empty",
            sizes == 0,
            lambda r: f"{first} is an empty set; expected at least one element",
        )
    )
    if isinstance(layout, ParallelLists):
        for c in cols[1:]:
            other = list_sizes(table.column(c))
            unequal = other != sizes
            if unequal.any():

                def uneq(r: int, c: str = c, other: np.ndarray = other) -> str:
                    return (
                        f"{c} has {other[r]} elements, {first} has {sizes[r]}; expected equal "
                        "lengths"
                    )

                problems.append(Problem("unequal", unequal, uneq))
    element_label = _element_label_problems(table, spec, sizes)
    problems += [p for p in element_label if p.kind == "unequal"]
    if spec.batch.max_set_size is not None:
        limit = spec.batch.max_set_size
        problems.append(
            Problem(
                "oversize",
                sizes > limit,
                lambda r: (
                    f"{first} has {sizes[r]} elements; expected at most {limit} "
                    "(data.batch.max_set_size)"
                ),
            )
        )
    problems = [p for p in problems if p.rows.any()]
    # Unequal lists make element positions meaningless: value checks only when lengths agree.
    if any(p.kind in ("unequal", "null") for p in problems):
        return problems
    if isinstance(layout, ParallelLists):
        for c in cols:
            problems += _nonfinite_elements(c, flat_children(table.column(c)), offsets, n)
    elif isinstance(layout, StructList):
        flat = flat_children(table.column(layout.column))
        for f in layout.fields:
            name = f"{layout.column}.{f}"
            problems += _nonfinite_elements(name, [s.field(f) for s in flat], offsets, n)
    else:
        assert isinstance(layout, VectorList)
        flat = flat_children(table.column(layout.column))
        if any(not pa.types.is_fixed_size_list(f.type) for f in flat):
            inner = np.concatenate([list_sizes(f) for f in flat]) if flat else np.zeros(0)
            wrong = inner != layout.dim
            if wrong.any():
                pos = np.flatnonzero(wrong)
                rows = np.zeros(n, dtype=bool)
                rows[_row_of(offsets, pos)] = True
                col, dim = layout.column, layout.dim

                def wrong_dim(r: int, wrong: np.ndarray = wrong, inner: np.ndarray = inner) -> str:
                    k = int(np.argmax(wrong[offsets[r] : offsets[r + 1]]))
                    return (
                        f"{col} element {k} has {inner[offsets[r] + k]} components; expected "
                        f"{dim} (elements.dim)"
                    )

                return [*problems, Problem("vector_dim", rows, wrong_dim)]
        problems += _nonfinite_elements(
            layout.column, [f.flatten() for f in flat], offsets, n, layout.dim
        )
    problems += [p for p in element_label if p.kind != "unequal"]
    for c in spec.context:
        problems += _scalar_problems(table, c)
    return problems + _set_label_problems(table, spec, labels) + _weight_problems(table, spec)


def _weight_problems(table: pa.Table, spec: DataSpec) -> list[Problem]:
    """data.weight null, non-finite or negative; data.reweight's variables null or non-finite."""
    names = [spec.weight] if spec.weight is not None else []
    names += [v for v in (spec.reweight.vars if spec.reweight else {}) if v not in spec.context]
    problems = [p for name in dict.fromkeys(names) for p in _scalar_problems(table, name)]
    if spec.weight is None:
        return problems
    name, col = spec.weight, table.column(spec.weight)
    values = np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.float64)
    with np.errstate(invalid="ignore"):
        negative = values < 0
    if negative.any():

        def negative_at(r: int) -> str:
            return f"{name} is {col[r].as_py()}; expected a weight >= 0 (data.weight)"

        problems.append(Problem("weight", negative, negative_at))
    return problems


def bad_row_mask(problems: list[Problem], num_rows: int) -> np.ndarray:
    mask = np.zeros(num_rows, dtype=bool)
    for p in problems:
        mask |= p.rows
    return mask


def first_bad_row(problems: list[Problem]) -> tuple[int, str]:
    """(row, description) of the earliest bad row, worded by the first problem it has."""
    best_row, best = None, None
    for p in problems:
        r = int(np.argmax(p.rows))
        if best_row is None or r < best_row:
            best_row, best = r, p
    assert best_row is not None and best is not None
    return best_row, best.describe(best_row)


def bad_row_error(source: str, row: int, what: str) -> DataError:
    return DataError(f"{source} row {row}: {what} ({FIX})")


def describe_rows(problems: list[Problem], num_rows: int) -> pa.Array:
    """string [rows]: null for a good row, else its first problem (in report order), worded."""
    if not problems:
        return pa.nulls(num_rows, pa.string())
    text: list[str | None] = [None] * num_rows
    for p in problems:
        for r in np.flatnonzero(p.rows).tolist():
            if text[r] is None:
                text[r] = p.describe(r)
    return pa.array(text, pa.string())


@dataclass(frozen=True)
class RowCheck:
    """The bad-row check a read task runs on each table it reads (picklable)."""

    spec: DataSpec
    labels: LabelRule | None = None
    labels_only: bool = False
    """True for a table of ``label_columns`` only (the label pass before training)."""

    def describe(self, table: pa.Table) -> pa.Array:
        """``BAD_COLUMN`` of ``table``: null for a good row, else what is wrong with it."""
        if self.labels_only:
            problems = label_problems(table, self.spec, self.labels)
        else:
            problems = find_problems(table, self.spec, self.labels)
        return describe_rows(problems, table.num_rows)


def unreadable_error(table: pa.Table) -> DataError | None:
    """The error of a reader row standing for a row group that could not be read, if any."""
    if ROW_COLUMN not in table.column_names or not table.column(ROW_COLUMN).null_count:
        return None
    unreadable = np.asarray(pc.is_null(table.column(ROW_COLUMN)).to_numpy(zero_copy_only=False))
    return DataError(str(table.column(BAD_COLUMN)[int(np.argmax(unreadable))]))


def first_reader_error(table: pa.Table, mask: np.ndarray) -> DataError:
    """The error for the first row of ``mask`` in a table the reader checked."""
    unreadable = unreadable_error(table)
    if unreadable is not None:
        return unreadable
    r = int(np.argmax(mask))
    return bad_row_error(
        str(table.column(PATH_COLUMN)[r]),
        table.column(ROW_COLUMN)[r].as_py(),
        str(table.column(BAD_COLUMN)[r]),
    )


def check_rows(
    table: pa.Table,
    spec: DataSpec,
    source: str,
    *,
    first_row: int = 0,
    labels: LabelRule | None = None,
) -> tuple[pa.Table, int]:
    """Apply ``spec.on_bad_row``: (the table without bad rows, how many were dropped).

    A table from ``read_dataset`` was checked in its read task (with the label rule given
    there) and names each row's file and index in it. Any other table is checked here:
    ``source`` names where its rows came from, ``first_row`` is the index of its first row
    there, and ``labels`` adds the task's label rule. A row group that could not be read is
    an error whatever ``on_bad_row`` says.
    """
    if BAD_COLUMN in table.column_names:
        bad = table.column(BAD_COLUMN)
        if bad.null_count == table.num_rows:
            return table, 0
        mask = np.asarray(pc.is_valid(bad).to_numpy(zero_copy_only=False))
        unreadable = unreadable_error(table)
        if unreadable is not None:
            raise unreadable
        if spec.on_bad_row == "error":
            raise first_reader_error(table, mask)
        return table.filter(pa.array(~mask)), int(mask.sum())
    problems = find_problems(table, spec, labels)
    if not problems:
        return table, 0
    if spec.on_bad_row == "error":
        row, what = first_bad_row(problems)
        raise bad_row_error(source, first_row + row, what)
    mask = bad_row_mask(problems, table.num_rows)
    return table.filter(pa.array(~mask)), int(mask.sum())


def drop_problem_rows(
    table: pa.Table, problem: Problem, spec: DataSpec, source: str, *, first_row: int = 0
) -> np.ndarray:
    """bool [rows]: the rows of ``table`` without ``problem`` (a problem found after the
    reader's checks, e.g. by the feature transforms); under ``on_bad_row: error`` the
    DataError for its first row instead, named as ``check_rows`` names rows. The problem's
    words carry their own fix."""
    if spec.on_bad_row == "skip":
        return ~problem.rows
    r = int(np.argmax(problem.rows))
    if ROW_COLUMN in table.column_names:
        source, row = str(table.column(PATH_COLUMN)[r]), table.column(ROW_COLUMN)[r].as_py()
    else:
        row = first_row + r
    raise DataError(f"{source} row {row}: {problem.describe(r)}")
