"""Data throughput: SetBatches delivered to one consumer vs the in-process limit and a baseline.

The dataset is synthetic jets from ``setpipe datagen jets`` (vectorised numpy): four
parallel list columns (pT, eta, phi float32, pid int32), a label and the jet pT, ~40
particles per set, written once into a cache directory outside git. Three readers of
the same files and the same columns, in one run:

- setpipe: ``read_dataset(..., packed=True)`` as training reads (Ray Data, a local Ray
  whose object store is several times smaller than the data: the read tasks check the
  rows and convert them into one float32 [E, F] block each), then ``iter_set_batches``
  in the driver, one consumer as a training worker would be: the default shuffle buffer
  (10k sets), element-budget batches of 16384. The consumer runs with one torch
  thread, as a 1-CPU Ray Train worker does (Ray sets its OMP_NUM_THREADS=1): with two
  threads on two cores already busy with read tasks, OpenMP's spinning threads take
  half the driver's CPU (9.3 instead of 15.6 M el/s measured here);
- the limit: ``pyarrow.parquet.read_table`` of each file, its element columns flattened
  into one contiguous float32 [E, 4] array;
- the baseline: a torch ``DataLoader`` over pyarrow rows (``to_pylist``) with a per-row
  Python collate padding each batch to its largest set (time-bounded: it is slow).

Memory is measured in passes of its own after the timed rounds (reading /proc/PID/smaps
of a dozen processes every 0.2 s would slow the timed ones), over the first 4/11 of the
files (400 of 1100 MB) and over all of them, so one run says whether the peak grows with the data:
peak PSS (proportional set size: a page shared by k processes counts 1/k in each, so the
object store's pages count once) summed over the driver and every descendant process (Ray
workers, raylet, GCS); where the kernel gives no PSS, RSS stands in (the RESULT says
``memory=rss``). The sum of RSS, the figure before, counts each shared page in every
process that maps it: an upper bound, reported beside it.

    python bench/data_throughput.py [--quick] [--data-dir DIR] [--size-mb MB] [--source s3]

With ``--source s3`` the same files are also put in a bucket of a real S3-compatible
server on loopback (moto, in its own process; setpipe reaches it through
``AWS_ENDPOINT_URL_S3`` as a user would), and each round adds a setpipe pass over
``s3://`` and another local one after the first (both warm): ``s3_vs_local`` is the
median of their rate ratios.

RESULT vs_limit=<setpipe/limit> vs_limit_steady=<after the first batch>
vs_baseline=<setpipe/baseline> elements_per_s=<setpipe>
peak_pss_mb=<driver + Ray processes, all files> peak_pss_small_mb=<the same, 4/11 of the data>
data_mb=<all> small_mb=<prefix> peak_rss_sum_mb=<the upper bound, all files>
memory=<pss|rss> [s3_vs_local=<s3/local setpipe>]
(vs_limit counts the first whole pass, Ray's start-up included; vs_limit_steady the
elements delivered after the first batch over the time after it, against the limit
measured just before, the median over --repeats rounds.)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow.parquet as pq
from _common import start_ray

COLUMNS = ["part_pt", "part_eta", "part_phi", "part_pid"]
JETS_PER_FILE = 50_000
BUDGET = 16384


def ensure_data(directory: Path, size_mb: int) -> list[Path]:
    """Files of JETS_PER_FILE jets until the directory holds ``size_mb`` MB (reused if there)."""
    from setpipe.data.datagen.jets import make_jets

    directory.mkdir(parents=True, exist_ok=True)
    files = sorted(directory.glob("jets-*.parquet"))
    total = sum(f.stat().st_size for f in files)
    i = len(files)
    while total < size_mb * 1e6:
        path = directory / f"jets-{i:05d}.parquet"
        tmp = path.with_suffix(".tmp")
        pq.write_table(make_jets(JETS_PER_FILE, seed=i, first_event_id=i * JETS_PER_FILE), tmp)
        tmp.rename(path)  # a half-written file is never taken for data
        files.append(path)
        total += path.stat().st_size
        i += 1
    # A cache made for a bigger run serves a smaller one: take a prefix.
    used, taken = 0, []
    for f in files:
        if used >= size_mb * 1e6:
            break
        taken.append(f)
        used += f.stat().st_size
    return taken


def pss_available() -> bool:
    """Whether the kernel reports PSS (``/proc/PID/smaps_rollup`` or ``smaps``)."""
    try:
        return psutil.Process().memory_full_info().pss > 0
    except (psutil.Error, AttributeError, OSError):
        return False


class PeakMemory:
    """Peaks of (this process + all descendants) summed PSS and summed RSS, sampled in a
    thread; with ``pss=False`` (no PSS from the kernel) RSS stands in for PSS."""

    def __init__(self, interval: float = 0.2, *, pss: bool = True) -> None:
        self.interval, self.pss = interval, pss
        self.peak, self.peak_rss, self._stop = 0, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> tuple[int, int]:
        me = psutil.Process()
        pss = rss = 0
        for proc in [me, *me.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):  # a worker that just exited
                if self.pss:
                    info = proc.memory_full_info()
                    pss, rss = pss + info.pss, rss + info.rss
                else:
                    rss += proc.memory_info().rss
        return (pss if self.pss else rss), rss

    def _run(self) -> None:
        while not self._stop.is_set():
            pss, rss = self._sample()
            self.peak, self.peak_rss = max(self.peak, pss), max(self.peak_rss, rss)
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakMemory:
        self.peak, self.peak_rss = self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def limit(files: list[Path]) -> tuple[float, int, int]:
    """(seconds, sets, elements): pyarrow read + flatten into one contiguous float32 array."""
    started = time.perf_counter()
    sets = elements = 0
    for f in files:
        table = pq.read_table(f, columns=COLUMNS)
        first = table.column(COLUMNS[0]).combine_chunks().flatten()
        out = np.empty((len(first), len(COLUMNS)), dtype=np.float32)
        for j, c in enumerate(COLUMNS):
            out[:, j] = table.column(c).combine_chunks().flatten().to_numpy()
        sets += table.num_rows
        elements += out.shape[0]
    return time.perf_counter() - started, sets, elements


def s3_copy(files: list[Path]) -> tuple[subprocess.Popen, list[str]]:
    """A moto S3 server on a free loopback port holding ``files``; the environment points
    setpipe at it (set before Ray starts: read tasks take it from their workers' env)."""
    import boto3

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(300):
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            break
        time.sleep(0.2)
    env = {
        "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    os.environ.update(env)
    client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL_S3"])
    client.create_bucket(Bucket="setpipe-bench")
    for f in files:
        client.upload_file(str(f), "setpipe-bench", f"jets/{f.name}")
    return server, [f"s3://setpipe-bench/jets/{f.name}" for f in files]


def setpipe_pass(files: list[Path] | list[str]) -> tuple[float, float, int, int, int]:
    """(seconds, seconds to first batch, sets, elements, batches) of one epoch of SetBatches."""
    import torch

    from setpipe.data import BatchStats, FittedTransforms, iter_set_batches, read_dataset
    from setpipe.spec.models import DataSpec

    spec = DataSpec.model_validate(
        {
            "train": [str(f) for f in files],
            "elements": {"layout": "parallel", "columns": COLUMNS},
            "context": ["jet_pt"],
            "label": "label",
            "batch": {"element_budget": BUDGET},
        }
    )
    stats = BatchStats()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    started = time.perf_counter()
    ds = read_dataset(spec, "train", packed=True)
    first = None
    for batch in iter_set_batches(ds, spec, FittedTransforms.from_spec(spec), stats=stats):
        if first is None:
            first = time.perf_counter() - started
        assert batch.values.dtype.itemsize == 4  # float32, as a model eats it
    torch.set_num_threads(threads)
    return time.perf_counter() - started, first or 0.0, stats.sets, stats.elements, stats.batches


def baseline(files: list[Path], seconds: float) -> tuple[float, int, int]:
    """(seconds, sets, elements): DataLoader over pyarrow rows, per-row collate, padded."""
    import torch
    from torch.utils.data import DataLoader, IterableDataset

    class Rows(IterableDataset):
        def __iter__(self):  # type: ignore[no-untyped-def]
            for f in files:
                table = pq.read_table(f, columns=[*COLUMNS, "label", "jet_pt"])
                yield from table.to_pylist()

    def collate(rows: list[dict]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n = max(len(r[COLUMNS[0]]) for r in rows)
        x = torch.zeros(len(rows), n, len(COLUMNS))
        mask = torch.zeros(len(rows), n, dtype=torch.bool)
        for i, r in enumerate(rows):
            k = len(r[COLUMNS[0]])
            x[i, :k] = torch.tensor([r[c] for c in COLUMNS], dtype=torch.float32).T
            mask[i, :k] = True
        return x, mask, torch.tensor([r["label"] for r in rows])

    # The same memory per batch as setpipe's: the budget over the mean set size.
    loader = DataLoader(Rows(), batch_size=BUDGET // 40, collate_fn=collate, num_workers=0)
    started = time.perf_counter()
    sets = elements = 0
    for _, mask, labels in loader:
        sets += len(labels)
        elements += int(mask.sum())
        if time.perf_counter() - started > seconds:
            break
    return time.perf_counter() - started, sets, elements


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="~100 MB, under a minute")
    parser.add_argument("--size-mb", type=int, default=None, help="dataset size (1100; quick 100)")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "setpipe-bench",
    )
    parser.add_argument("--object-store-mb", type=int, default=300)
    parser.add_argument("--baseline-seconds", type=float, default=None, help="(20; quick 5)")
    parser.add_argument("--repeats", type=int, default=None, help="rounds (3; quick 1)")
    parser.add_argument("--source", choices=["local", "s3"], default="local")
    args = parser.parse_args()
    args.repeats = args.repeats or (1 if args.quick else 3)
    size_mb = args.size_mb or (100 if args.quick else 1100)
    baseline_s = args.baseline_seconds or (5.0 if args.quick else 20.0)

    t = time.perf_counter()
    files = ensure_data(args.data_dir / "jets", size_mb)
    on_disk = sum(f.stat().st_size for f in files) / 1e6
    print(f"data: {len(files)} files, {on_disk:.0f} MB in {args.data_dir / 'jets'}", flush=True)
    print(f"  (ready in {time.perf_counter() - t:.1f} s)", flush=True)
    for f in files:  # warm the page cache: every reader below sees the same cache state
        f.read_bytes()

    # Read by Ray at import. A token of our own: a cluster another process starts
    # meanwhile rewrites ~/.ray/auth_token and would lock this driver out of its own.
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(16))
    server, s3_files = s3_copy(files) if args.source == "s3" else (None, [])
    import ray

    start_ray(object_store_memory=args.object_store_mb * 1024**2)

    # Limit and setpipe passes alternate, and each steady ratio pairs the two of one round:
    # load on these machines drifts by 2x within a minute. The RESULT's vs_limit_steady is
    # the median over rounds; vs_limit and elements_per_s are the first (cold) pass's.
    steady_ratios, s3_ratios = [], []
    for round_ in range(args.repeats):
        lim_s, lim_sets, lim_el = limit(files)
        lim_rate = lim_el / lim_s
        sp_s, sp_first, sp_sets, sp_el, sp_batches = setpipe_pass(files)
        assert (sp_sets, sp_el) == (lim_sets, lim_el), "setpipe delivered other sets than the files"
        steady = sp_el / (sp_s - sp_first)
        steady_ratios.append(steady / lim_rate)
        print(
            f"round {round_ + 1}: limit {lim_rate / 1e6:6.2f} M el/s; setpipe {sp_el / 1e6:.1f} M "
            f"elements in {sp_s:5.2f} s = {sp_el / sp_s / 1e6:5.2f} M el/s ({sp_sets / sp_s:,.0f} "
            f"sets/s, {sp_batches} batches; first batch after {sp_first:.1f} s, "
            f"{steady / 1e6:.2f} M el/s after it: {steady_ratios[-1]:.3f} of the limit)",
            flush=True,
        )
        if round_ == 0:
            first_ratio, sp_rate, sets_rate = sp_el / sp_s / lim_rate, sp_el / sp_s, sp_sets / sp_s
        if s3_files:  # whole passes, both after the first: neither pays Ray's warm-up
            s3_s, _, s3_sets, s3_el, _ = setpipe_pass(s3_files)
            assert (s3_sets, s3_el) == (lim_sets, lim_el), "s3 delivered other sets"
            local_s = setpipe_pass(files)[0]
            s3_ratios.append(local_s / s3_s)
            print(
                f"  s3: {s3_el / s3_s / 1e6:5.2f} M el/s, local again {s3_el / local_s / 1e6:5.2f}"
                f" M el/s: s3 = {s3_ratios[-1]:.3f} of local"
            )
    # Memory: untimed passes over a ~400 MB prefix and over everything (flat or not).
    pss = pss_available()
    small = ensure_data(args.data_dir / "jets", size_mb * 4 // 11)  # 400 of 1100 MB
    small_mb = sum(f.stat().st_size for f in small) / 1e6
    memory = {}
    for name, part in (("small", small), ("all", files)):
        with PeakMemory(pss=pss) as mem:
            setpipe_pass(part)
        memory[name] = mem
    kind = "PSS" if pss else "RSS (no PSS from this kernel)"
    print(
        f"  peak {kind} of driver + Ray processes: {memory['small'].peak / 2**20:,.0f} MB at "
        f"{small_mb:.0f} MB of data, {memory['all'].peak / 2**20:,.0f} MB at {on_disk:.0f} MB "
        f"(object store {args.object_store_mb} MB); sum of RSS (shared pages counted in each "
        f"process): {memory['small'].peak_rss / 2**20:,.0f} / "
        f"{memory['all'].peak_rss / 2**20:,.0f} MB"
    )

    base_s, base_sets, base_el = baseline(files, baseline_s)
    base_rate = base_el / base_s
    print(
        f"baseline: {base_el / 1e6:8.1f} M elements in {base_s:6.2f} s  "
        f"{base_rate / 1e6:7.2f} M el/s ({base_sets / base_s:,.0f} sets/s)"
    )
    print(f"load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    ray.shutdown()
    if server is not None:
        server.terminate()
    s3_figure = f" s3_vs_local={statistics.median(s3_ratios):.3f}" if s3_ratios else ""
    print(
        f"RESULT vs_limit={first_ratio:.3f} "
        f"vs_limit_steady={statistics.median(steady_ratios):.3f} "
        f"vs_baseline={sp_rate / base_rate:.2f} "
        f"elements_per_s={sp_rate:.0f} sets_per_s={sets_rate:.0f} "
        f"peak_pss_mb={memory['all'].peak / 2**20:.0f} "
        f"peak_pss_small_mb={memory['small'].peak / 2**20:.0f} data_mb={on_disk:.0f} "
        f"small_mb={small_mb:.0f} peak_rss_sum_mb={memory['all'].peak_rss / 2**20:.0f} "
        f"memory={'pss' if pss else 'rss'} rounds={args.repeats}{s3_figure}"
    )


if __name__ == "__main__":
    main()
