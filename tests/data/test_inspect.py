"""`setpipe inspect` on a small jet dataset with two bad rows: every printed number checked."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from setpipe.cli import main
from setpipe.data import padding_fraction
from setpipe.data.datagen.jets import make_jets

JOB = {
    "name": "inspect-test",
    "data": {
        "train": None,
        "elements": {"layout": "parallel", "columns": ["part_pt", "part_eta", "part_phi"]},
        "features": [
            {"name": "log_pt", "source": "part_pt", "ops": [{"op": "log"}, {"op": "standardize"}]},
            {"name": "eta", "source": "part_eta"},
        ],
        "label": "label",
        "batch": {"element_budget": 500},
        "shuffle": {"files": False, "buffer_sets": 50},
    },
    "model": {"task": "classify", "num_classes": 2, "encoder": {"kind": "deepsets"}},
}


def test_inspect_prints_the_numbers_of_the_data(
    ray_local: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    table = make_jets(200, seed=3)
    eta = table.column("part_eta").to_pylist()
    eta[5][2] = float("nan")
    table = table.set_column(1, "part_eta", pa.array(eta, pa.list_(pa.float32())))
    for c in ("part_pt", "part_eta", "part_phi"):
        rows = table.column(c).to_pylist()
        rows[9] = []
        table = table.set_column(
            table.schema.get_field_index(c), c, pa.array(rows, pa.list_(pa.float32()))
        )
    path = tmp_path / "jets.parquet"
    pq.write_table(table, path)  # one row group: one block, read in file order
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({**JOB, "data": {**JOB["data"], "train": str(path)}}))

    assert main(["inspect", str(job), "--bins", "4"]) == 0
    out = capsys.readouterr().out

    good = np.ones(200, dtype=bool)
    good[[5, 9]] = False
    sizes = np.array([len(r) for r in table.column("part_pt").to_pylist()])[good]
    assert f"sets          {good.sum()}\n" in out
    assert (
        f"elements      {sizes.sum()}  (per set: mean {sizes.mean():.2f}, min {sizes.min()}" in out
    )
    assert "bad rows      2  (empty 1, nonfinite 1)\n" in out
    assert f"  first: {path} row 5: part_eta has NaN at element 2; expected finite values" in out
    labels = table.column("label").to_numpy()[good]
    assert f"labels        0: {(labels == 0).sum()}  1: {(labels == 1).sum()}\n" in out

    hist = re.findall(r"^ +(\d+) - (\d+) +#* +(\d+)$", out, flags=re.MULTILINE)
    assert len(hist) == 4
    assert int(hist[0][0]) == sizes.min() and int(hist[-1][1]) == sizes.max()
    for first, last, count in hist:
        assert int(count) == ((sizes >= int(first)) & (sizes <= int(last))).sum()

    flat_eta = np.concatenate([np.array(r) for r, g in zip(eta, good, strict=True) if g])
    row = re.search(r"^  eta +(\S+) +(\S+) +(\S+) +(\S+) +(\d+)$", out, flags=re.MULTILINE)
    assert row is not None
    mean, std, low, high, nonfinite = (float(v) for v in row.groups())
    assert mean == pytest.approx(flat_eta.mean(), rel=1e-5)
    assert std == pytest.approx(flat_eta.std(), rel=1e-5)
    assert (low, high, nonfinite) == pytest.approx((flat_eta.min(), flat_eta.max(), 0), rel=1e-5)
    row = re.search(r"^  log_pt +(\S+) +(\S+) ", out, flags=re.MULTILINE)
    assert row is not None
    assert abs(float(row.group(1))) < 1e-6 and float(row.group(2)) == pytest.approx(1.0, rel=1e-5)

    plain = padding_fraction(sizes, 500)
    assert f"padding       {plain:.1%} of a padded view is padding" in out
    assert f"              {padding_fraction(sizes, 500, bucket_window=50):.1%} with" in out
    assert re.search(r"^read +\d+\.\d\d s: \d+ sets/s, \d+ elements/s", out, flags=re.MULTILINE)


def test_inspect_counts_bad_labels_and_transforms(
    ray_local: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    table = make_jets(50, seed=4)
    labels = table.column("label").to_pylist()
    labels[4] = 2  # of num_classes 2
    table = table.set_column(table.schema.get_field_index("label"), "label", pa.array(labels))
    pt = table.column("part_pt").to_pylist()
    pt[7][3] = 0.0  # log_pt: log of 0
    table = table.set_column(0, "part_pt", pa.array(pt, pa.list_(pa.float32())))
    path = tmp_path / "jets.parquet"
    pq.write_table(table, path)
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({**JOB, "data": {**JOB["data"], "train": str(path)}}))

    assert main(["inspect", str(job)]) == 0
    out = capsys.readouterr().out
    assert "sets          48\n" in out
    assert "bad rows      2  (label 1, transform 1)\n" in out
    assert (
        f"  first: {path} row 4: label is 2; expected a class id, a whole number from 0 to 1 "
        "(model.num_classes: 2) (set data.on_bad_row: skip to drop such rows)\n" in out
    )
    row = re.search(r"^  log_pt +\S+ +\S+ +\S+ +\S+ +(\d+)$", out, flags=re.MULTILINE)
    assert row is not None and row.group(1) == "0"
