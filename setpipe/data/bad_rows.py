"""Bad rows: NaN/inf/null values, empty sets, unequal parallel lists, oversized sets.

Every check is vectorised over the flattened values and the list offsets; a Python
loop touches only the first bad row, to word its message. With ``on_bad_row: error``
the message names the file, the row (its index within the file), the column, what
was found, what is expected, and the fix; with ``skip`` the rows are dropped and
counted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from setpipe.data.convert import flat_children, list_sizes
from setpipe.data.layout import PATH_COLUMN, element_columns, needed_columns
from setpipe.errors import DataError
from setpipe.spec.models import DataSpec, ParallelLists, StructList, VectorList

FIX = "set data.on_bad_row: skip to drop such rows"


@dataclass(frozen=True)
class Problem:
    """One kind of bad row: which rows, and how to word the first of them."""

    kind: str
    """nonfinite | null | empty | unequal | oversize | vector_dim (for counts in inspect)."""
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

        def null_at(r: int, pos: np.ndarray = pos) -> str:
            k = int(pos[_row_of(offsets, pos) == r][0] - offsets[r])
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

            def nonfinite_at(r: int, flat_pos: np.ndarray = flat_pos) -> str:
                first = flat_pos[_row_of(offsets, flat_pos // width) == r][0]
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


def find_problems(table: pa.Table, spec: DataSpec) -> list[Problem]:
    """Every kind of bad row in ``table``, in the order they are reported."""
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
    if spec.element_label is not None:
        lab = list_sizes(table.column(spec.element_label))
        unequal = lab != sizes
        if unequal.any():
            el = spec.element_label

            def uneq_labels(r: int, lab: np.ndarray = lab) -> str:
                return (
                    f"{el} has {lab[r]} labels, {first} has {sizes[r]} elements; expected one "
                    "label per element"
                )

            problems.append(Problem("unequal", unequal, uneq_labels))
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

                def wrong_dim(r: int, pos: np.ndarray = pos, inner: np.ndarray = inner) -> str:
                    first_pos = pos[_row_of(offsets, pos) == r][0]
                    k = int(first_pos - offsets[r])
                    return (
                        f"{col} element {k} has {inner[first_pos]} components; expected "
                        f"{dim} (elements.dim)"
                    )

                return [*problems, Problem("vector_dim", rows, wrong_dim)]
        problems += _nonfinite_elements(
            layout.column, [f.flatten() for f in flat], offsets, n, layout.dim
        )
    if spec.element_label is not None:
        problems += _nonfinite_elements(
            spec.element_label, flat_children(table.column(spec.element_label)), offsets, n
        )
    for c in spec.context:
        problems += _scalar_problems(table, c)
    if spec.label is not None:
        problems += _scalar_problems(table, spec.label)
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


def check_rows(
    table: pa.Table, spec: DataSpec, source: str, *, first_row: int = 0
) -> tuple[pa.Table, int]:
    """Apply ``spec.on_bad_row``: (the table without bad rows, how many were dropped).

    ``source`` names where the rows came from and ``first_row`` is the index of the
    table's first row in it. A table from ``read_dataset`` carries each row's file; its
    rows may start anywhere in the file, so an error re-checks that file whole to name
    the row's index within it.
    """
    problems = find_problems(table, spec)
    if not problems:
        return table, 0
    if spec.on_bad_row == "error":
        row, what = first_bad_row(problems)
        if PATH_COLUMN in table.column_names:
            path = str(table.column(PATH_COLUMN)[row])
            raise recheck_file(path, spec) or bad_row_error(path, row, what)
        raise bad_row_error(source, first_row + row, what)
    mask = bad_row_mask(problems, table.num_rows)
    return table.filter(pa.array(~mask)), int(mask.sum())


def recheck_file(path: str, spec: DataSpec) -> DataError | None:
    """The error for the first bad row of the whole file at ``path`` (None if it has none)."""
    if "://" in path:
        fs, inner = pafs.FileSystem.from_uri(path)
    else:
        fs, inner = pafs.LocalFileSystem(), path
    table = pq.read_table(inner, columns=needed_columns(spec), filesystem=fs)
    problems = find_problems(table, spec)
    if not problems:
        return None
    row, what = first_bad_row(problems)
    return bad_row_error(path, row, what)
