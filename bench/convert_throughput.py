"""ROOT -> Parquet throughput: ``setpipe convert`` against ``uproot.iterate`` alone (the limit).

The input is synthetic jets from ``setpipe datagen jets`` (~37 particles each) written
once with uproot as one TTree, as ROOT analyses write them: jagged ``part_pt``,
``part_eta``, ``part_phi`` (float32) and ``part_pid`` (int32) with their counter
``npart``, and scalar ``jet_pt``, ``label``, ``event_id``; kept in a cache directory
outside git. Two readers of the same file, the same step, one process, in turns:

- the limit: ``uproot.iterate(step_size=--step, library="ak")``, every branch read into
  awkward arrays and nothing else done with them;
- setpipe: ``setpipe convert`` in-process (``cli.main``), the same iterate, then awkward
  -> Arrow columns and Parquet files (snappy, pyarrow's default) in a new directory,
  the staging directory renamed into place.

Each round times both by wall clock and by CPU time (every thread of the process) over
the whole file, after one untimed read that puts the file in the page cache; the ratios
are the medians of the rounds' ratios. On a shared machine wall clock swings with the
load; the CPU ratio does not, and is the ceiling the wall ratio reaches with a spare core
(the writer thread overlaps the reading).

    python bench/convert_throughput.py [--quick] [--jets N] [--repeats R] [--data-dir DIR]

RESULT vs_uproot=<setpipe jets/s / uproot jets/s, wall> vs_uproot_cpu=<the same in CPU
time> jets_per_s=<setpipe> uproot_jets_per_s=<the limit> jets=<N>   (target: vs_uproot >= 0.5)
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from _common import result_line

STEP = 20_000  # setpipe convert's default --step


def ensure_root(directory: Path, jets: int) -> Path:
    """``jets-<N>.root`` in ``directory``, written once (seed 0) and reused after."""
    path = directory / f"jets-{jets}.root"
    if path.exists():
        return path
    import awkward as ak
    import pyarrow.compute as pc
    import uproot

    from setpipe.data.datagen.jets import make_jets

    directory.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    with uproot.recreate(partial) as file:
        for start in range(0, jets, STEP):
            table = make_jets(min(STEP, jets - start), seed=start, first_event_id=start)
            counts = pc.list_value_length(table.column("part_pt")).to_numpy()
            part = ak.zip(
                {
                    c.removeprefix("part_"): ak.unflatten(
                        pc.list_flatten(table.column(c)).to_numpy(), counts
                    )
                    for c in table.column_names
                    if c.startswith("part_")
                }
            )
            scalars = {c: table.column(c).to_numpy() for c in ("jet_pt", "label", "event_id")}
            branches = {"part": part, **scalars}
            types = {"part": part.type.content, **{c: v.dtype for c, v in scalars.items()}}
            if start == 0:
                file.mktree("events", types)
            file["events"].extend(branches)
    partial.rename(path)
    return path


def time_uproot(path: Path, step: int) -> tuple[float, float, int]:
    """(wall s, CPU s, jets) of one pass of uproot.iterate over every branch."""
    import uproot

    wall, cpu = time.perf_counter(), time.process_time()
    n = 0
    for array in uproot.iterate({str(path): "events"}, step_size=step, library="ak"):
        n += len(array)
    return time.perf_counter() - wall, time.process_time() - cpu, n


def time_convert(path: Path, step: int, scratch: Path) -> tuple[float, float, int]:
    """(wall s, CPU s of every thread, jets written) of one ``setpipe convert``."""
    import pyarrow.parquet as pq

    from setpipe.cli import main

    out = scratch / "out"
    shutil.rmtree(out, ignore_errors=True)
    argv = ["convert", str(path), "--out", str(out), "--step", str(step)]
    wall, cpu = time.perf_counter(), time.process_time()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        if main([*argv, "--rows-per-file", "1000000"]) != 0:
            raise SystemExit(f"setpipe convert failed: {' '.join(argv)}")
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    n = sum(pq.ParquetFile(f).metadata.num_rows for f in out.glob("*.parquet"))
    return wall, cpu, n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jets", type=int, default=None, help="jets in the file (500k; quick 50k)")
    parser.add_argument("--repeats", type=int, default=None, help="rounds (3; quick 1)")
    parser.add_argument("--step", type=int, default=STEP, help=f"entries per chunk ({STEP})")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "setpipe-bench",
    )
    parser.add_argument("--quick", action="store_true", help="50k jets, one round (seconds)")
    args = parser.parse_args()
    jets = args.jets or (50_000 if args.quick else 500_000)
    repeats = args.repeats or (1 if args.quick else 3)
    path = ensure_root(args.data_dir, jets)
    print(f"{path}: {jets} jets, {path.stat().st_size / 2**20:.0f} MiB; step {args.step}")
    time_uproot(path, args.step)  # page cache warm for both
    limit, ours, ratios, cpu_ratios = [], [], [], []
    with tempfile.TemporaryDirectory(prefix="setpipe-convert-bench-") as scratch:
        for _ in range(repeats):
            up_wall, up_cpu, n = time_uproot(path, args.step)
            assert n == jets, (n, jets)
            sp_wall, sp_cpu, n = time_convert(path, args.step, Path(scratch))
            assert n == jets, (n, jets)
            limit.append(jets / up_wall)
            ours.append(jets / sp_wall)
            ratios.append(up_wall / sp_wall)
            cpu_ratios.append(up_cpu / sp_cpu)
            print(
                f"uproot.iterate {limit[-1]:>9.0f} jets/s ({up_cpu:.2f} s CPU)  setpipe convert "
                f"{ours[-1]:>9.0f} jets/s ({sp_cpu:.2f} s CPU)"
            )
    figures = {
        "vs_uproot": statistics.median(ratios),
        "vs_uproot_cpu": statistics.median(cpu_ratios),
        "jets_per_s": statistics.median(ours),
        "uproot_jets_per_s": statistics.median(limit),
        "jets": jets,
    }
    print(result_line(figures))


if __name__ == "__main__":
    main()
