"""`setpipe datagen` at tiny sizes, in-process through the CLI; the data checked, not just made."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from setpipe.cli import main
from setpipe.data.batching import budget_bounds
from setpipe.data.convert import set_sizes
from setpipe.spec import load_job

REPO = Path(__file__).resolve().parents[2]


def read(directory: Path) -> pa.Table:
    return pa.concat_tables([pq.read_table(p) for p in sorted(directory.glob("*.parquet"))])


def sizes(col: pa.ChunkedArray) -> np.ndarray:
    return pc.list_value_length(col).to_numpy()


def test_jets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["datagen", "jets", "--train", "300", "--validation", "40", "--test", "0"]
    assert main([*args, "--out", str(tmp_path / "a"), "--rows-per-file", "128"]) == 0
    assert "train            300 sets    3 files" in capsys.readouterr().out
    assert not (tmp_path / "a" / "test").exists()
    train = read(tmp_path / "a" / "train")
    assert train.column_names == [
        "part_pt", "part_eta", "part_phi", "part_pid", "label", "jet_pt", "event_id"
    ]  # fmt: skip
    n = sizes(train.column("part_pt"))
    for c in ("part_eta", "part_phi", "part_pid"):
        assert np.array_equal(sizes(train.column(c)), n)
    assert n.min() >= 2
    assert train.column("label").to_numpy().sum() == 150  # balanced
    jet_pt = train.column("jet_pt").to_numpy()
    assert ((jet_pt >= 500) & (jet_pt <= 550)).all()
    flat_pt = pc.list_flatten(train.column("part_pt")).to_numpy()
    owner = np.repeat(np.arange(len(n)), n)
    np.testing.assert_allclose(np.bincount(owner, flat_pt), jet_pt, rtol=1e-4)
    phi = pc.list_flatten(train.column("part_phi")).to_numpy()
    assert ((phi > -np.pi - 1e-6) & (phi <= np.pi + 1e-6)).all()
    validation = read(tmp_path / "a" / "validation")
    assert validation.num_rows == 40
    ids = set(train.column("event_id").to_pylist())
    assert len(ids) == 300 and not ids & set(validation.column("event_id").to_pylist())
    # Seeded: the same command gives the same rows; another seed does not.
    main([*args, "--out", str(tmp_path / "b"), "--rows-per-file", "128"])
    main([*args, "--out", str(tmp_path / "c"), "--seed", "1"])
    assert read(tmp_path / "b" / "train").equals(train)
    assert not read(tmp_path / "c" / "train").equals(train)


def test_digits(tmp_path: Path) -> None:
    from sklearn.datasets import load_digits

    assert main(["datagen", "digits", "--out", str(tmp_path / "d")]) == 0
    parts = {s: read(tmp_path / "d" / s) for s in ("train", "validation", "test")}
    assert [t.num_rows for t in parts.values()] == [1437, 180, 180]
    table = pa.concat_tables(parts.values())
    images = load_digits().images
    ids = table.column("image_id").to_numpy()
    assert sorted(ids.tolist()) == list(range(1797))
    assert np.array_equal(sizes(table.column("points")), (images[ids] > 0).sum(axis=(1, 2)))
    assert np.array_equal(table.column("digit").to_numpy(), load_digits().target[ids])
    # The first set, point by point: its lit pixels as (x, 7 - row, intensity / 16).
    first = table.slice(0, 1).column("points").to_pylist()[0]
    rows, cols = np.nonzero(images[ids[0]])
    assert [(p["x"], p["y"]) for p in first] == [
        (c, 7 - r) for r, c in zip(rows, cols, strict=True)
    ]
    assert [p["intensity"] for p in first] == pytest.approx(images[ids[0]][rows, cols] / 16)

    main(["datagen", "digits", "--out", str(tmp_path / "r"), "--points-per-digit", "50"])
    resampled = read(tmp_path / "r" / "train")
    assert set(sizes(resampled.column("points")).tolist()) == {50}
    points = pc.list_flatten(resampled.column("points"))
    x = pc.struct_field(points, "x").to_numpy()
    assert x.min() >= -0.5 and x.max() <= 7.5
    assert pc.struct_field(points, "intensity").to_numpy().min() > 0  # only lit pixels are drawn


def test_passages(tmp_path: Path) -> None:
    args = ["--train", "30", "--validation", "5", "--test", "5"]
    assert main(["datagen", "passages", "--out", str(tmp_path), *args]) == 0
    table = read(tmp_path / "train")
    assert table.schema.field("passages").type == pa.list_(pa.list_(pa.float32(), 32))
    n = sizes(table.column("passages"))
    assert n.min() >= 20 and n.max() <= 100
    assert np.array_equal(sizes(table.column("relevance")), n)
    vectors = pc.list_flatten(pc.list_flatten(table.column("passages"))).to_numpy().reshape(-1, 32)
    # Directions carry the meaning (grades follow cosines); the length sqrt(32) gives every
    # component unit scale, the scale a net is initialised for. Unit-norm vectors (components
    # ~0.18) left the passages example at constant scores.
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), np.sqrt(32), rtol=1e-5)
    assert 0.9 < vectors.std() < 1.1, f"component std {vectors.std():.3f}; expected ~1"
    grades = pc.list_flatten(table.column("relevance")).to_numpy()
    assert set(grades.tolist()) <= {0, 1, 2, 3} and (grades > 0).any() and (grades == 0).any()


@pytest.mark.parametrize("layout", ["vectors", "parallel"])
def test_huge(tmp_path: Path, layout: str) -> None:
    args = ["--sets", "3", "--min-size", "2000", "--max-size", "5000", "--dim", "4"]
    assert main(["datagen", "huge", "--out", str(tmp_path), *args, "--layout", layout]) == 0
    f = pq.ParquetFile(tmp_path / "huge.parquet")
    assert f.metadata.num_row_groups == 3  # one set per row group
    table = f.read()
    first = table.column_names[0]
    n = sizes(table.column(first))
    assert ((n >= 2000) & (n <= 5000)).all()
    if layout == "parallel":
        assert table.column_names == ["f0", "f1", "f2", "f3", "label", "set_id"]
    else:
        assert table.schema.field("x").type == pa.list_(pa.list_(pa.float32(), 4))
    assert sorted(table.column("label").to_pylist()) in ([0, 0, 1], [0, 1, 1])


def test_bad_arguments_are_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["datagen", "huge", "--out", str(tmp_path), "--min-size", "10", "--max-size", "5"]
    assert main(args) == 1
    assert capsys.readouterr().err == "error: need 1 <= --min-size <= --max-size, got 10, 5\n"


@pytest.mark.hep
def test_pythia_jets(tmp_path: Path) -> None:
    pytest.importorskip("pythia8mc")
    args = ["datagen", "pythia", "--num-jets", "6", "--workers", "1", "--split", "0.3,0"]
    assert main([*args, "--out", str(tmp_path)]) == 0
    assert not (tmp_path / "_generated").exists()
    table = pa.concat_tables(
        [read(tmp_path / s) for s in ("train", "validation") if (tmp_path / s).exists()]
    )
    assert table.num_rows == 6
    assert sorted(table.column("label").to_pylist()) == [0, 0, 0, 1, 1, 1]
    jet_pt = table.column("jet_pt").to_numpy()
    assert ((jet_pt > 500) & (jet_pt < 550)).all()
    assert (np.abs(table.column("jet_y").to_numpy()) < 1.7).all()
    n = sizes(table.column("part_pt"))
    assert n.min() >= 1 and np.array_equal(sizes(table.column("part_pid")), n)


def jets_args(out: Path, train: int, *extra: str) -> list[str]:
    return ["datagen", "jets", "--out", str(out), "--train", str(train), "--validation", "40",
            "--test", "20", "--rows-per-file", "128", *extra]  # fmt: skip


def test_a_non_empty_output_is_refused_and_left_as_it_was(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A second datagen over a dataset used to leave old files beside new ones (272 rows
    where it said 100) and to replace a user's file of the same name."""
    out = tmp_path / "d"
    assert main(jets_args(out, 300)) == 0
    before = {p: p.read_bytes() for p in sorted(out.rglob("*.parquet"))}
    capsys.readouterr()
    assert main(jets_args(out, 100)) == 1
    assert capsys.readouterr().err == (
        f"error: --out {out}: not empty (3 entries: test, train, validation); give a new or "
        "empty directory, or add --overwrite to replace the dataset there\n"
    )
    assert {p: p.read_bytes() for p in sorted(out.rglob("*.parquet"))} == before
    assert read(out / "train").num_rows == 300

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "huge.parquet").write_bytes(b"my own file")
    assert main(["datagen", "huge", "--out", str(mine), "--sets", "1", "--min-size", "10",
                 "--max-size", "10"]) == 1  # fmt: skip
    assert (mine / "huge.parquet").read_bytes() == b"my own file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "mine"]  # no staging left


def test_overwrite_replaces_the_whole_dataset(tmp_path: Path) -> None:
    out = tmp_path / "d"
    assert main(jets_args(out, 300)) == 0
    assert main([*jets_args(out, 100), "--overwrite", "--test", "0"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["train", "validation"]  # old test/ gone
    assert [p.name for p in sorted((out / "train").iterdir())] == ["jets-00000.parquet"]
    assert read(out / "train").num_rows == 100
    assert read(out / "validation").num_rows == 40
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]
    # An empty directory is a new one: no --overwrite needed.
    (tmp_path / "empty").mkdir()
    assert main(jets_args(tmp_path / "empty", 10)) == 0
    assert read(tmp_path / "empty" / "train").num_rows == 10


def test_overwrite_replaces_only_a_dataset(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "d"
    assert main(jets_args(out, 50)) == 0
    (out / "train" / "notes.txt").write_text("mine")
    capsys.readouterr()
    assert main([*jets_args(out, 10), "--overwrite"]) == 1
    assert capsys.readouterr().err == (
        f"error: --out {out} --overwrite: {out / 'train' / 'notes.txt'} is not a Parquet "
        "file, so this is not only a dataset and nothing was replaced; move it away or give "
        "another --out\n"
    )
    assert (out / "train" / "notes.txt").read_text() == "mine"
    assert read(out / "train").num_rows == 50

    a_file = tmp_path / "f.parquet"
    a_file.write_bytes(b"x")
    assert main([*jets_args(a_file, 10), "--overwrite"]) == 1
    assert capsys.readouterr().err == (
        f"error: --out {a_file}: is a file; give a directory for the dataset\n"
    )
    assert a_file.read_bytes() == b"x"


@pytest.mark.parametrize("name", ["quickstart", "digits", "passages", "multihead"])
def test_shipped_jobs_take_enough_steps_an_epoch(name: str, tmp_path: Path) -> None:
    """The data a shipped job's YAML says to make, batched by its element budget, gives at
    least 30 optimizer steps an epoch. digits (8192 elements, sets of ~30) took 6 an epoch
    and ended at a test accuracy of 0.57; passages (16384, lists of ~60) took 15."""
    path = REPO / "jobs" / f"{name}.yaml"
    line = next(x for x in path.read_text().splitlines() if "setpipe datagen" in x)
    args = line.split("setpipe ", 1)[1].split()
    out = args.index("--out") + 1
    args[out] = str(tmp_path / name)
    assert main(args) == 0
    job = load_job(path, [f"data.train={tmp_path / name / 'train'}"])
    sizes = set_sizes(read(tmp_path / name / "train"), job.data)
    steps = len(budget_bounds(sizes, job.data.batch.element_budget)) - 1
    assert steps >= 30, f"{name}: {steps} steps an epoch of {len(sizes)} sets; expected >= 30"
