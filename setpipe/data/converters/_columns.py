"""An awkward array of records as setpipe's columns: one Arrow column per numeric leaf.

A record field that is a number becomes a set-level column; a list of numbers becomes a
``list<number>`` element column; a list of records (``part: var * {pt, eta}``) becomes one
list column per field (``part_pt``, ``part_eta``), the parallel lists setpipe reads. A top
level that is itself a list of records (``N * var * {pt, eta}``) gives columns ``pt``, ``eta``.
"""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING

import pyarrow as pa

from setpipe.errors import DataError

if TYPE_CHECKING:
    import awkward as ak


def _import_awkward() -> ModuleType:
    try:
        import awkward
    except ModuleNotFoundError:
        raise DataError(
            "setpipe convert needs awkward: pip install 'setpipe[convert]' (or pip install awkward)"
        ) from None
    return awkward


def columns_table(array: ak.Array, source: str) -> pa.Table:
    """``array`` (N sets) as a table of N rows; DataError naming ``source`` and the field
    for anything that is not a number, a string or one list level of numbers."""
    ak = _import_awkward()
    columns: dict[str, pa.Array] = {}

    def visit(name: str, part: ak.Array) -> None:
        fields = ak.fields(part)
        if fields:
            for field in fields:
                visit(f"{name}_{field}" if name else field, part[field])
            return
        if not name:
            raise DataError(
                f"{source}: the sets are {part.type}, not records with named fields; write them "
                "with named fields (ak.zip({'pt': ..., 'eta': ...})) so each becomes a column"
            )
        is_string = part.layout.purelist_parameter("__array__") in ("string", "bytestring")
        depth = part.layout.purelist_depth
        if not is_string and depth > 2:
            raise DataError(
                f"{source}: field {name!r} is {part.type}: {depth - 1} list levels, expected a "
                "number or one list of numbers per set; leave it out (--columns) or flatten it"
            )
        if name in columns:
            raise DataError(
                f"{source}: two fields both become column {name!r}; rename one of them in the "
                "input or leave one out with --columns"
            )
        columns[name] = ak.to_arrow(part, extensionarray=False, list_to32=True, string_to32=True)

    visit("", array)
    return pa.table(columns)
