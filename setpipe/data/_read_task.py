"""The per-block step fused into Ray Data's read tasks: torch-free, so workers start fast."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from setpipe.data.layout import PATH_COLUMN
from setpipe.data.split import SPLIT_CODE, assign
from setpipe.spec.models import SplitSpec


def prepare_block(
    table: pa.Table, path_prefix: str, split: str, split_key: str | None, val: float, test: float
) -> pa.Table:
    """Name the path column (with the URI scheme back on) and keep this split's rows."""
    names = [PATH_COLUMN if n == "path" else n for n in table.column_names]
    table = table.rename_columns(names)
    if path_prefix:
        paths = pc.binary_join_element_wise(path_prefix, table.column(PATH_COLUMN), "")
        table = table.set_column(table.schema.get_field_index(PATH_COLUMN), PATH_COLUMN, paths)
    if split_key is not None:
        codes = assign(table.column(split_key), SplitSpec(key=split_key, validation=val, test=test))
        table = table.filter(pa.array(codes == SPLIT_CODE[split]))
    return table
