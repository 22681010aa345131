"""`setpipe convert`, in-process through the CLI: real ROOT files written with uproot, HDF5
with h5py and Parquet with awkward, converted and read back exactly, and checked with the
same layout rules and converter the training reader uses."""

from __future__ import annotations

from pathlib import Path

import awkward as ak
import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import uproot

from setpipe.cli import main
from setpipe.data.convert import element_values, set_sizes
from setpipe.data.layout import check_files
from setpipe.data.sources import expand
from setpipe.spec.models import DataSpec

N = 53  # sets: with --step 7 and --rows-per-file 20, several chunks and a short last file
PARTS = ["part_pt", "part_eta", "part_pid"]


def jets(seed: int = 0) -> dict[str, np.ndarray | ak.Array]:
    """N jets, 0-9 particles each (empty sets included): float32, float64 and int32 lists."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 10, N)
    total = int(counts.sum())
    return {
        "part_pt": ak.unflatten(rng.exponential(5, total).astype(np.float32), counts),
        "part_eta": ak.unflatten(rng.normal(0, 1, total), counts),
        "part_pid": ak.unflatten(rng.choice([22, 211, -211], total).astype(np.int32), counts),
        "jet_pt": rng.uniform(50, 150, N),
        "label": (np.arange(N) % 2).astype(np.int32),
    }


def write_root(path: Path, data: dict, tree: str = "events") -> None:
    """A TTree whose jagged branches share one counter (``npart``), as ROOT analyses write."""
    part = ak.zip({k.removeprefix("part_"): data[k] for k in PARTS})
    with uproot.recreate(path) as file:
        file.mktree(tree, {"part": part.type.content, "jet_pt": "f8", "label": "i4"})
        file[tree].extend({"part": part, "jet_pt": data["jet_pt"], "label": data["label"]})


def read(directory: Path) -> pa.Table:
    return pa.concat_tables([pq.read_table(p) for p in sorted(directory.glob("*.parquet"))])


def spec_for(directory: Path, columns: list[str]) -> DataSpec:
    return DataSpec.model_validate(
        {"train": str(directory), "elements": {"layout": "parallel", "columns": columns}}
    )


def test_root_round_trips_exactly_in_bounded_chunks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = jets()
    write_root(tmp_path / "jets.root", data)
    out = tmp_path / "out"
    argv = ["convert", str(tmp_path / "jets.root"), "--out", str(out), "--step", "7"]
    assert main([*argv, "--rows-per-file", "20"]) == 0
    printed = capsys.readouterr()
    assert printed.out.startswith(f"{N} sets from 1 root file(s) -> 3 Parquet file(s) in {out}")
    assert printed.err.count(f"converted {N} sets") == 1  # the progress line, once at the end
    files = sorted(out.glob("*.parquet"))
    assert [pq.ParquetFile(f).metadata.num_rows for f in files] == [20, 20, 13]
    # Streamed: no row group holds more than one chunk of --step sets.
    footers = [pq.ParquetFile(f).metadata for f in files]
    groups = [m.row_group(i) for m in footers for i in range(m.num_row_groups)]
    assert max(g.num_rows for g in groups) == 7
    table = read(out)
    assert table.column_names == ["npart", *PARTS, "jet_pt", "label"]
    values = {c: table.schema.field(c).type.value_type for c in PARTS}
    assert values == {"part_pt": pa.float32(), "part_eta": pa.float64(), "part_pid": pa.int32()}
    for name in [*PARTS, "jet_pt", "label"]:
        assert table.column(name).to_pylist() == ak.to_list(data[name]), name
    assert table.column("npart").to_pylist() == ak.num(data["part_pt"]).tolist()
    # The training reader's own rules accept it and see the same elements.
    spec = spec_for(out, PARTS)
    assert len(check_files(expand(str(out)), spec)) == 3
    assert set_sizes(table, spec).tolist() == ak.num(data["part_pt"]).tolist()
    flat = np.stack([ak.to_numpy(ak.flatten(data[c])).astype(np.float32) for c in PARTS], 1)
    assert np.array_equal(element_values(table, spec), flat)


def test_root_branch_selection_and_cut(tmp_path: Path) -> None:
    data = jets()
    write_root(tmp_path / "jets.root", data)
    out = tmp_path / "out"
    argv = ["convert", str(tmp_path / "jets.root"), "--out", str(out), "--step", "10"]
    # The cut reads jet_pt, which is not among the columns kept; labels renamed on the way.
    argv += ["--columns", "part_*,label", "--cut", "(jet_pt > 100) & (npart >= 2)"]
    assert main([*argv, "--rename", "label=is_gluon"]) == 0
    table = read(out)
    assert table.column_names == [*PARTS, "is_gluon"]
    keep = (data["jet_pt"] > 100) & (ak.num(data["part_pt"]).to_numpy() >= 2)
    assert 0 < keep.sum() < N
    for name in PARTS:
        assert table.column(name).to_pylist() == ak.to_list(data[name][keep]), name
    assert table.column("is_gluon").to_pylist() == data["label"][keep].tolist()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ["--columns", "part_pt,part_mass"],
            "tree 'events': no branch matches 'part_mass' (from --columns); the branches are "
            "npart, part_pt, part_eta, part_pid, jet_pt, label. Fix the name or the pattern",
        ),
        (
            ["--cut", "jet_mass > 5"],
            "tree 'events': --cut 'jet_mass > 5' names 'jet_mass', which is not a branch; the "
            "branches are npart, part_pt, part_eta, part_pid, jet_pt, label",
        ),
        (
            ["--cut", "part_pt > 1"],
            "tree 'events': --cut 'part_pt > 1' gives a value per element, not one per set; a "
            "cut keeps or drops whole sets: use set-level branches (jet_pt > 500)",
        ),
        (["--tree", "jets"], "no tree 'jets'; the file's trees are events. Give one of them"),
        (["--features", "a,b"], "--features applies to --format hdf5, not root; leave it out"),
    ],
)
def test_root_errors_name_the_file_branch_and_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    write_root(tmp_path / "jets.root", jets())
    out = tmp_path / "out"
    assert main(["convert", str(tmp_path / "jets.root"), "--out", str(out), *extra]) == 1
    err = capsys.readouterr().err
    assert message in err, err
    assert not out.exists()  # a failed conversion leaves nothing behind
    assert [p.name for p in tmp_path.iterdir()] == ["jets.root"]


def test_root_file_with_two_trees_needs_tree(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "two.root"
    with uproot.recreate(path) as file:
        file.mktree("a", {"x": "f8"})
        file.mktree("b", {"y": "f8"})
    assert main(["convert", str(path), "--out", str(tmp_path / "o")]) == 1
    assert f"{path}: 2 trees (a, b), expected one; name the one to convert with --tree" in (
        capsys.readouterr().err
    )


def energyflow_style(path: Path) -> tuple[list[np.ndarray], np.ndarray]:
    """(N, M, 4) float64 jets zero-padded to M = 12 and y (N,), as EnergyFlow's qg_jets."""
    rng = np.random.default_rng(1)
    counts = rng.integers(1, 12, N)
    counts[3] = 12  # one set fills the array: nothing to drop
    sets = [rng.normal(size=(c, 4)) for c in counts]
    for s in sets:
        s[:, 0] = np.abs(s[:, 0]) + 0.1  # pT > 0: a real element is never all zeros
    x = np.zeros((N, 12, 4))
    for i, s in enumerate(sets):
        x[i, : len(s)] = s
    y = (np.arange(N) % 2).astype(np.float64)
    with h5py.File(path, "w") as file:
        file["X"] = x
        file["y"] = y
    return sets, y


def test_hdf5_padded_arrays_drop_padding_exactly(tmp_path: Path) -> None:
    sets, y = energyflow_style(tmp_path / "qg.h5")
    out = tmp_path / "out"
    names = ["part_pt", "part_y", "part_phi", "part_pid"]
    argv = ["convert", str(tmp_path / "qg.h5"), "--out", str(out), "--step", "8"]
    assert main([*argv, "--features", ",".join(names), "--rename", "y=label"]) == 0
    table = read(out)
    assert table.column_names == [*names, "label"]
    assert table.schema.field("part_pt").type.value_type == pa.float64()
    assert set_sizes(table, spec_for(out, names)).tolist() == [len(s) for s in sets]
    for j, name in enumerate(names):
        got = table.column(name).to_pylist()
        assert all(g == s[:, j].tolist() for g, s in zip(got, sets, strict=True)), name
    assert table.column("label").to_pylist() == y.tolist()
    assert len(check_files(expand(str(out)), spec_for(out, names))) == 1


def test_hdf5_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    energyflow_style(tmp_path / "qg.h5")
    base = ["convert", str(tmp_path / "qg.h5"), "--out", str(tmp_path / "o")]
    assert main(base) == 1
    assert "--format hdf5 needs --features: one name per feature" in capsys.readouterr().err
    assert main([*base, "--features", "pt,eta,phi"]) == 1
    assert (
        f"{tmp_path / 'qg.h5'}: dataset 'X' has 4 features per element (shape (53, 12, 4)), but "
        "--features names 3: pt,eta,phi; give 4 names"
    ) in capsys.readouterr().err
    assert main([*base, "--features", "a,b,c,d", "--elements", "jets"]) == 1
    assert "no dataset 'jets' (--elements); the datasets are X, y" in capsys.readouterr().err


def test_awkward_parquet_records_become_parallel_lists(tmp_path: Path) -> None:
    data = jets()
    part = ak.zip({k.removeprefix("part_"): data[k] for k in PARTS})
    array = ak.zip({"part": part, "jet_pt": data["jet_pt"], "label": data["label"]}, depth_limit=1)
    ak.to_parquet(array, tmp_path / "jets.parquet")
    out = tmp_path / "out"
    assert main(["convert", str(tmp_path / "jets.parquet"), "--out", str(out), "--step", "9"]) == 0
    table = read(out)
    assert table.column_names == [*PARTS, "jet_pt", "label"]
    for name in [*PARTS, "jet_pt", "label"]:
        assert table.column(name).to_pylist() == ak.to_list(data[name]), name
    assert len(check_files(expand(str(out)), spec_for(out, PARTS))) == 1


def test_awkward_nested_lists_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    array = ak.Array([{"hits": [[1.0], [2.0, 3.0]], "e": 1.0}])
    ak.to_parquet(array, tmp_path / "deep.parquet")
    assert main(["convert", str(tmp_path / "deep.parquet"), "--out", str(tmp_path / "o")]) == 1
    assert (
        "field 'hits' is 1 * var * var * float64: 2 list levels, expected a number or one list "
        "of numbers per set; leave it out (--columns) or flatten it"
    ) in capsys.readouterr().err


def test_non_empty_out_is_refused_unless_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_root(tmp_path / "jets.root", jets())
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.parquet").write_bytes(b"")
    argv = ["convert", str(tmp_path / "jets.root"), "--out", str(out)]
    assert main(argv) == 1
    assert f"--out {out}: not empty (1 entries: old.parquet)" in capsys.readouterr().err
    assert main([*argv, "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["part-00000.parquet"]
    assert read(out).num_rows == N


def test_rntuple_converts_and_refuses_a_cut_uproot_would_ignore(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """uproot 5 writes RNTuples by default and reads them, but its RNTuple ``cut`` is not
    implemented: the cut was ignored and every set written."""
    data = jets()
    path = tmp_path / "jets.root"
    with uproot.recreate(path) as file:
        file["events"] = {"part": ak.zip({k.removeprefix("part_"): data[k] for k in PARTS}),
                          "jet_pt": data["jet_pt"]}  # fmt: skip
    out = tmp_path / "out"
    assert main(["convert", str(path), "--out", str(out), "--step", "10"]) == 0
    table = read(out)
    assert sorted(table.column_names) == sorted([*PARTS, "jet_pt"])  # the RNTuple's field order
    for name in [*PARTS, "jet_pt"]:
        assert table.column(name).to_pylist() == ak.to_list(data[name]), name
    assert main(["convert", str(path), "--out", str(tmp_path / "cut"), "--cut", "jet_pt > 100"])
    assert (
        f"{path}: tree 'events' is an RNTuple, for which uproot does not apply --cut (it would "
        "write every set); convert without --cut and filter the Parquet, or write a TTree"
    ) in capsys.readouterr().err
    assert not (tmp_path / "cut").exists()


def test_several_inputs_become_one_dataset_with_one_schema(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = jets(seed=1), jets(seed=2)
    write_root(tmp_path / "a.root", a)
    write_root(tmp_path / "b.root", b)
    out = tmp_path / "out"
    files = [str(tmp_path / "a.root"), str(tmp_path / "b.root")]
    assert main(["convert", *files, "--out", str(out), "--step", "20"]) == 0
    assert f"{2 * N} sets from 2 root file(s) -> 1 Parquet file(s)" in capsys.readouterr().out
    table = read(out)
    for name in [*PARTS, "jet_pt"]:
        assert table.column(name).to_pylist() == ak.to_list(a[name]) + ak.to_list(b[name]), name
    # A file whose branches differ cannot join the dataset: named, and nothing is written.
    with uproot.recreate(tmp_path / "c.root") as file:
        file["events"] = {"jet_pt": np.ones(3)}
    bad = [*files, str(tmp_path / "c.root")]
    assert main(["convert", *bad, "--out", str(tmp_path / "o2"), "--format", "root"]) == 1
    assert (
        f"{tmp_path / 'c.root'}: columns ['jet_pt'] differ from the first input's ['npart', "
        "'part_pt', 'part_eta', 'part_pid', 'jet_pt', 'label']; convert inputs with the same "
        "columns together (--columns)"
    ) in capsys.readouterr().err
    assert not (tmp_path / "o2").exists()


def test_inputs_without_entries_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An empty tree used to give exit 0, '0 sets', and an --out with no file in it."""
    with uproot.recreate(tmp_path / "empty.root") as file:
        file.mktree("events", {"x": "f8"})
    assert main(["convert", str(tmp_path / "empty.root"), "--out", str(tmp_path / "o")]) == 1
    assert (
        f"{tmp_path / 'empty.root'}: no entries to convert; nothing was written. Check the "
        "inputs (--tree, --elements) hold sets"
    ) in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_hdf5_set_level_datasets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """(N,) datasets, in groups too, become set-level columns; (N, K) ones are left out by
    default and refused by name."""
    path = tmp_path / "qg.h5"
    energyflow_style(path)
    weight = np.linspace(0.5, 1.5, N).astype(np.float32)
    with h5py.File(path, "a") as file:
        file["meta/weight"] = weight
        file["jet"] = np.ones((N, 2))
    names = "a,b,c,d"
    argv = ["convert", str(path), "--features", names, "--out"]
    assert main([*argv, str(tmp_path / "all")]) == 0
    table = read(tmp_path / "all")
    assert table.column_names == ["a", "b", "c", "d", "meta_weight", "y"]
    assert table.column("meta_weight").to_numpy().tobytes() == weight.tobytes()
    assert main([*argv, str(tmp_path / "some"), "--columns", "meta/weight"]) == 0
    assert read(tmp_path / "some").column_names == ["a", "b", "c", "d", "meta_weight"]
    assert main([*argv, str(tmp_path / "bad"), "--columns", "jet"]) == 1
    assert (
        f"{path}: dataset 'jet' has shape ({N}, 2), expected ({N},): one value per set of 'X'; "
        "leave it out of --columns"
    ) in capsys.readouterr().err
