"""setpipe's Parquet reader for Ray Data: torch-free, since it runs in Ray's read tasks.

Ray 2.60's ``read_parquet`` starts every execution (each epoch's pass over a split) with
a ``ListFiles`` task that lists and re-reads footers in fresh worker processes: 4-8 s of
wall time per pass on a 2-core machine, whatever the data size (84 ms of CPU). setpipe
has already listed the files and read every footer to check the schemas, so its own
``Datasource`` hands Ray one read task per unit of row groups and pays none of that.

A unit is one file's consecutive row groups up to about ``UNIT_BYTES`` uncompressed
(a file's row groups are never split further). A task reads only the job's columns, one
row group at a time, adds the file each row came from and the row's index in it, keeps its
split's rows, and runs the bad-row check on them (``BAD_COLUMN``). A packed read also
converts them (``packing.pack``): the task hands over one contiguous float32 ``[E, F]``
block with int64 offsets (and context, targets, weights), which the consumer only views,
shuffles and slices. With ``shuffle_seed``
the units come in an order drawn per execution from the seed and Ray's execution index,
so epochs differ and runs repeat.

A task never raises for bad data: a Ray task that fails prints a traceback of a hundred
lines or more. A row group that cannot be read (a corrupt page) becomes one row whose
``ROW_COLUMN`` is null and whose ``BAD_COLUMN`` is the one-line error, and the task stops
there; the consumer (``bad_rows.check_rows``) raises it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from ray.data import Datasource

from setpipe._compat import BlockMetadata, ReadTask
from setpipe.data.bad_rows import RowCheck
from setpipe.data.layout import BAD_COLUMN, PATH_COLUMN, ROW_COLUMN
from setpipe.data.packing import pack
from setpipe.data.sources import remote_problem
from setpipe.data.split import SPLIT_CODE, assign
from setpipe.spec.models import SplitSpec

UNIT_BYTES = 64 << 20
"""Uncompressed bytes of row groups one read task takes at most (one group may pass it)."""


@dataclass(frozen=True)
class ReadUnit:
    """Consecutive row groups of one file."""

    path: str
    """The path as the filesystem names it."""
    display: str
    """The file as the user wrote it (with its s3:// or gs:// scheme)."""
    row_groups: tuple[int, ...]
    first_rows: tuple[int, ...]
    """The index in the file of each row group's first row."""
    num_rows: int
    size_bytes: int


def units_of(path: str, display: str, metadata: pq.FileMetaData) -> list[ReadUnit]:
    """One file's row groups cut into units of about ``UNIT_BYTES``."""
    units: list[ReadUnit] = []
    groups: list[int] = []
    firsts: list[int] = []
    rows = size = file_row = 0
    for g in range(metadata.num_row_groups):
        group = metadata.row_group(g)
        if groups and size + group.total_byte_size > UNIT_BYTES:
            units.append(ReadUnit(path, display, tuple(groups), tuple(firsts), rows, size))
            groups, firsts, rows, size = [], [], 0, 0
        groups.append(g)
        firsts.append(file_row)
        rows += group.num_rows
        size += group.total_byte_size
        file_row += group.num_rows
    if groups:
        units.append(ReadUnit(path, display, tuple(groups), tuple(firsts), rows, size))
    return units


@dataclass(frozen=True)
class SplitFilter:
    """Keep the rows the job's stable key hash (``spec``) assigns to ``split``."""

    split: str
    spec: SplitSpec

    def mask(self, table: pa.Table) -> np.ndarray:
        """bool [rows]: the rows of ``split``."""
        return assign(table.column(self.spec.key), self.spec) == SPLIT_CODE[self.split]

    def keep(self, table: pa.Table) -> pa.Table:
        return table.filter(pa.array(self.mask(table)))


def unreadable(
    unit: ReadUnit, schema: pa.Schema | None, columns: list[str], i: int, err: Exception
) -> pa.Table:
    """The one row standing for the unit's ``i``-th row group (or, without ``schema``, its
    file) that could not be read: the error in one line, and nulls for the job's columns."""
    detail = " ".join(str(err).split()) or type(err).__name__
    where = unit.display
    if schema is not None:
        first = unit.first_rows[i]
        end = unit.first_rows[i + 1] if i + 1 < len(unit.first_rows) else None
        end = end if end is not None else unit.first_rows[0] + unit.num_rows
        where += f" row group {unit.row_groups[i]} (rows {first}-{end - 1})"
    if isinstance(err, FileNotFoundError):
        message = (
            f"{where} no longer exists: it was deleted or moved after the run listed the data "
            "and checked its footers; rerun once the data is no longer being changed"
        )
    else:
        message = remote_problem(where, err) or (
            f"{where} cannot be read ({detail}); the file is damaged: write it again, or move "
            "it out of the job's data"
        )
    fields = [] if schema is None else [schema.field(c) for c in columns if c in schema.names]
    return pa.table(
        {
            **{f.name: pa.nulls(1, f.type) for f in fields},
            PATH_COLUMN: pa.array([unit.display], pa.string()),
            ROW_COLUMN: pa.nulls(1, pa.int64()),
            BAD_COLUMN: pa.array([message], pa.string()),
        }
    )


def read_unit(
    filesystem: pafs.FileSystem,
    unit: ReadUnit,
    columns: list[str],
    split_filter: SplitFilter | None,
    check: RowCheck | None = None,
    only_bad: bool = False,
    packed: bool = False,
) -> Iterator[pa.Table]:
    """The unit's rows, one row group at a time: the job's columns, the file, the row's index
    in it and, with ``check``, what is wrong with each row (``only_bad``: the first bad row
    of each row group alone, for a pass that only looks for bad rows; ``packed``: the
    checked rows converted, ``packing.pack``)."""
    try:
        handle = filesystem.open_input_file(unit.path)
    except (OSError, pa.ArrowException) as err:
        yield unreadable(unit, None, columns, 0, err)
        return
    with handle:
        try:
            parquet = pq.ParquetFile(handle)
        except (OSError, pa.ArrowException) as err:
            yield unreadable(unit, None, columns, 0, err)
            return
        for i, (g, first) in enumerate(zip(unit.row_groups, unit.first_rows, strict=True)):
            try:
                table = parquet.read_row_group(g, columns=columns)
            except (OSError, pa.ArrowException) as err:
                table = unreadable(unit, parquet.schema_arrow, columns, i, err)
                yield pack(table, check.spec) if packed and check is not None else table
                return
            rows = np.arange(first, first + table.num_rows, dtype=np.int64)
            if split_filter is not None:
                keep = split_filter.mask(table)
                table, rows = table.filter(pa.array(keep)), rows[keep]
            paths = pa.repeat(pa.scalar(unit.display, pa.string()), table.num_rows)
            table = table.append_column(PATH_COLUMN, paths)
            table = table.append_column(ROW_COLUMN, pa.array(rows))
            if check is None:
                yield table
                continue
            table = table.append_column(BAD_COLUMN, check.describe(table))
            if only_bad:
                bad = table.filter(pc.is_valid(table.column(BAD_COLUMN)))
                table = bad.slice(0, 1).select([PATH_COLUMN, ROW_COLUMN, BAD_COLUMN])
            elif packed:
                table = pack(table, check.spec)
            yield table


class SetParquetDatasource(Datasource):
    """The units of one split as Ray read tasks, optionally in a per-execution order."""

    def __init__(
        self,
        filesystem: pafs.FileSystem,
        units: list[ReadUnit],
        columns: list[str],
        split_filter: SplitFilter | None = None,
        shuffle_seed: int | None = None,
        check: RowCheck | None = None,
        only_bad: bool = False,
        packed: bool = False,
    ) -> None:
        self._filesystem = filesystem
        self._units = units
        self._columns = columns
        self._split_filter = split_filter
        self._shuffle_seed = shuffle_seed
        self._check = check
        self._only_bad = only_bad
        self._packed = packed
        self._calls = 0

    def get_name(self) -> str:
        return "ReadSetParquet"

    def estimate_inmemory_data_size(self) -> int | None:
        return sum(u.size_bytes for u in self._units)

    def unit_order(self, execution: int) -> list[int]:
        """Unit indices in file order, or permuted by the seed and the execution index."""
        if self._shuffle_seed is None:
            return list(range(len(self._units)))
        rng = np.random.default_rng([self._shuffle_seed, execution])
        return [int(i) for i in rng.permutation(len(self._units))]

    def get_read_tasks(
        self,
        parallelism: int,
        per_task_row_limit: int | None = None,
        data_context: object | None = None,
    ) -> list[ReadTask]:
        # Ray counts the executions of a Dataset in its DataContext (the epoch's pass);
        # a context without it (a planning call) falls back to a call counter.
        execution = getattr(data_context, "_execution_idx", None)
        if execution is None:
            execution, self._calls = self._calls, self._calls + 1
        tasks = []
        for i in self.unit_order(int(execution)):
            unit = self._units[i]
            metadata = BlockMetadata(
                num_rows=unit.num_rows
                if self._split_filter is None and not self._only_bad
                else None,
                size_bytes=unit.size_bytes,
                exec_stats=None,
                input_files=(unit.display,),
            )
            read = partial(
                read_unit,
                self._filesystem,
                unit,
                self._columns,
                self._split_filter,
                self._check,
                self._only_bad,
                self._packed,
            )
            tasks.append(ReadTask(read, metadata, per_task_row_limit=per_task_row_limit))
        return tasks
