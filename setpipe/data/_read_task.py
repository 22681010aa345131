"""setpipe's Parquet reader for Ray Data: torch-free, since it runs in Ray's read tasks.

Ray 2.60's ``read_parquet`` starts every execution (each epoch's pass over a split) with
a ``ListFiles`` task that lists and re-reads footers in fresh worker processes: 4-8 s of
wall time per pass on a 2-core machine, whatever the data size (84 ms of CPU). setpipe
has already listed the files and read every footer to check the schemas, so its own
``Datasource`` hands Ray one read task per unit of row groups and pays none of that.

A unit is one file's consecutive row groups up to about ``UNIT_BYTES`` uncompressed
(a file's row groups are never split further). A task reads only the job's columns, one
row group at a time, adds the file each row came from, and keeps its split's rows. With
``shuffle_seed`` the units come in an order drawn per execution from the seed and Ray's
execution index, so epochs differ and runs repeat.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from ray.data import Datasource

from setpipe._compat import BlockMetadata, ReadTask
from setpipe.data.layout import PATH_COLUMN
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
    num_rows: int
    size_bytes: int


def units_of(path: str, display: str, metadata: pq.FileMetaData) -> list[ReadUnit]:
    """One file's row groups cut into units of about ``UNIT_BYTES``."""
    units: list[ReadUnit] = []
    groups: list[int] = []
    rows = size = 0
    for g in range(metadata.num_row_groups):
        group = metadata.row_group(g)
        if groups and size + group.total_byte_size > UNIT_BYTES:
            units.append(ReadUnit(path, display, tuple(groups), rows, size))
            groups, rows, size = [], 0, 0
        groups.append(g)
        rows += group.num_rows
        size += group.total_byte_size
    if groups:
        units.append(ReadUnit(path, display, tuple(groups), rows, size))
    return units


@dataclass(frozen=True)
class SplitFilter:
    """Keep the rows the job's stable key hash (``spec``) assigns to ``split``."""

    split: str
    spec: SplitSpec

    def keep(self, table: pa.Table) -> pa.Table:
        codes = assign(table.column(self.spec.key), self.spec)
        return table.filter(pa.array(codes == SPLIT_CODE[self.split]))


def read_unit(
    filesystem: pafs.FileSystem,
    unit: ReadUnit,
    columns: list[str],
    split_filter: SplitFilter | None,
) -> Iterator[pa.Table]:
    """The unit's rows, one row group at a time: the job's columns plus the file."""
    with filesystem.open_input_file(unit.path) as handle:
        parquet = pq.ParquetFile(handle)
        for g in unit.row_groups:
            table = parquet.read_row_group(g, columns=columns)
            if split_filter is not None:
                table = split_filter.keep(table)
            paths = pa.repeat(pa.scalar(unit.display, pa.string()), table.num_rows)
            yield table.append_column(PATH_COLUMN, paths)


class SetParquetDatasource(Datasource):
    """The units of one split as Ray read tasks, optionally in a per-execution order."""

    def __init__(
        self,
        filesystem: pafs.FileSystem,
        units: list[ReadUnit],
        columns: list[str],
        split_filter: SplitFilter | None = None,
        shuffle_seed: int | None = None,
    ) -> None:
        self._filesystem = filesystem
        self._units = units
        self._columns = columns
        self._split_filter = split_filter
        self._shuffle_seed = shuffle_seed
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
                num_rows=unit.num_rows if self._split_filter is None else None,
                size_bytes=unit.size_bytes,
                exec_stats=None,
                input_files=(unit.display,),
            )
            read = partial(read_unit, self._filesystem, unit, self._columns, self._split_filter)
            tasks.append(ReadTask(read, metadata, per_task_row_limit=per_task_row_limit))
        return tasks
