"""Other formats into setpipe's Parquet layout (``setpipe convert``): ROOT, HDF5, awkward.

Each reader yields ``(source, table)`` chunks of at most ``step`` sets, so memory is bounded
by one chunk whatever the input's size; ``write_parquet`` streams them into numbered
Parquet files that ``setpipe.data.layout`` accepts as parallel list columns (one
``list<number>`` column per element feature) beside scalar set-level columns.

- ``root``: TTrees and RNTuples through uproot (branch selection, uproot's cut expressions);
- ``hdf5``: zero-padded ``(N, M, F)`` element arrays (EnergyFlow style) through h5py, the
  padding elements dropped, plus ``(N,)`` datasets as set-level columns;
- ``awkward_parquet``: Parquet files written by ``ak.to_parquet`` (records, lists of
  records), and in-memory awkward arrays.
"""

from __future__ import annotations

from setpipe.data.converters._sink import Converted, write_parquet
from setpipe.data.converters.awkward_parquet import iter_awkward_array, iter_awkward_parquet
from setpipe.data.converters.hdf5 import iter_hdf5
from setpipe.data.converters.root import iter_root

__all__ = [
    "Converted",
    "iter_awkward_array",
    "iter_awkward_parquet",
    "iter_hdf5",
    "iter_root",
    "write_parquet",
]
