"""ROOT files (TTree or RNTuple) through uproot, chunk by chunk.

Jagged branches (``part_pt[npart]``) become ``list<number>`` columns, scalar branches
set-level columns; a branch of records (an RNTuple field ``part: {pt, eta}[]``) becomes one
list column per field. ``columns`` selects branches by name or glob (uproot's
``filter_name``); ``cut`` is uproot's Python expression over branches (``(jet_pt > 500) &
(npart >= 2)``), evaluated per chunk; it keeps or drops whole sets.
The branches a cut reads need not be among ``columns``. uproot does not apply a cut to an
RNTuple (it accepts and ignores it), so a cut on one is refused.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pyarrow as pa

from setpipe.data.converters._columns import columns_table
from setpipe.errors import DataError

TREE_CLASSES = ("TTree", "ROOT::RNTuple")


def _import_uproot() -> ModuleType:
    try:
        import uproot
    except ModuleNotFoundError:
        raise DataError(
            "setpipe convert --format root needs uproot: pip install 'setpipe[convert]' "
            "(or pip install uproot awkward)"
        ) from None
    return uproot


def _tree_name(file: object, path: str, tree: str | None) -> str:
    """The tree to read: ``tree`` if the file has it, else the file's only tree."""
    trees = sorted(
        {key.split(";")[0] for key, cls in file.classnames().items() if cls in TREE_CLASSES}  # type: ignore[attr-defined]
    )
    if tree is not None:
        if tree not in trees:
            raise DataError(
                f"{path}: no tree {tree!r}; the file's trees are {', '.join(trees) or 'none'}. "
                "Give one of them with --tree"
            )
        return tree
    if len(trees) != 1:
        raise DataError(
            f"{path}: {len(trees)} trees ({', '.join(trees) or 'none'}), expected one; "
            "name the one to convert with --tree"
        )
    return trees[0]


def _check_columns(keys: list[str], columns: list[str], where: str) -> None:
    for name in columns:
        if not fnmatch.filter(keys, name):
            shown = ", ".join(keys[:30]) + (", ..." if len(keys) > 30 else "")
            raise DataError(
                f"{where}: no branch matches {name!r} (from --columns); the branches are "
                f"{shown}. Fix the name or the pattern"
            )


def iter_root(
    paths: list[str | Path],
    *,
    tree: str | None = None,
    columns: list[str] | None = None,
    cut: str | None = None,
    step: int = 20_000,
) -> Iterator[tuple[str, pa.Table]]:
    """``(path, table)`` chunks of at most ``step`` entries (before the cut) from each file."""
    uproot = _import_uproot()
    if step < 1:
        raise DataError(f"--step must be at least 1, got {step}")
    for path in map(str, paths):
        try:
            file = uproot.open(path)
        except (OSError, ValueError) as err:
            raise DataError(f"{path}: cannot be read as a ROOT file ({err})") from None
        with file:
            name = _tree_name(file, path, tree)
            obj = file[name]
            where = f"{path}: tree {name!r}"
            if cut is not None and file.classname_of(name) == "ROOT::RNTuple":
                # uproot 5 takes cut= for RNTuples and ignores it ("Not implemented yet").
                raise DataError(
                    f"{where} is an RNTuple, for which uproot does not apply --cut (it would "
                    "write every set); convert without --cut and filter the Parquet, or write a "
                    "TTree"
                )
            if columns:
                _check_columns(list(obj.keys()), columns, where)
            chunks = obj.iterate(filter_name=columns or None, cut=cut, step_size=step, library="ak")
            while True:
                try:
                    array = next(chunks)
                except StopIteration:
                    break
                except uproot.KeyInFileError as err:
                    raise DataError(
                        f"{where}: --cut {cut!r} names {err.key!r}, which is not a branch; the "
                        f"branches are {', '.join(obj.keys())}"
                    ) from None
                except SyntaxError as err:
                    raise DataError(
                        f"{where}: --cut {cut!r} is not a valid expression ({err.msg}); write "
                        "Python over branch names, e.g. (jet_pt > 500) & (npart >= 2)"
                    ) from None
                except IndexError:
                    if cut is None:
                        raise
                    raise DataError(
                        f"{where}: --cut {cut!r} gives a value per element, not one per set; a "
                        "cut keeps or drops whole sets: use set-level branches (jet_pt > 500)"
                    ) from None
                yield path, columns_table(array, where)
