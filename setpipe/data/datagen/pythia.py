"""Real quark and gluon jets: Pythia 8 Z(->nu nu)+jet at 14 TeV, clustered with FastJet.

The process mirrors the public quark/gluon benchmark (Komiske, Metodiev, Thaler 2019):
``q qbar -> Z g`` gives gluon jets (label 0), ``q g -> Z q`` quark jets (label 1); the
Z decays to neutrinos so the jet is the only visible object. Jets are anti-kT R=0.4;
the leading jet is kept when 500 < pT < 550 GeV (``jet_pt``: another window, for a shifted
sample to fine-tune on) and |y| < 1.7. Each row is one jet: its visible constituents as
parallel lists (pT, rapidity, phi, PDG id).

Needs the ``hep`` extra (``pip install 'setpipe[hep]'``): pythia8mc and fastjet.
"""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from setpipe.errors import DataError

PROCESS_LABEL = {241: 0, 242: 1}  # qqbar -> Z g: gluon jet; qg -> Z q: quark jet
JET_PT_RANGE = (500.0, 550.0)  # GeV, the benchmark's window
JET_MAX_RAPIDITY = 1.7
ROWS_PER_FILE = 2000

SCHEMA = pa.schema(
    [
        ("event_id", pa.int64()),
        ("label", pa.int64()),
        ("jet_pt", pa.float32()),
        ("jet_y", pa.float32()),
        ("jet_phi", pa.float32()),
        ("part_pt", pa.list_(pa.float32())),
        ("part_y", pa.list_(pa.float32())),
        ("part_phi", pa.list_(pa.float32())),
        ("part_pid", pa.list_(pa.int32())),
    ]
)


def pt_hat_window(jet_pt: tuple[float, float]) -> tuple[float, float]:
    """Pythia's pTHat window for a jet pT window: 450-650 GeV for the benchmark's 500-550,
    scaled alike for others (0.9 x MIN to 13/11 x MAX)."""
    low, high = jet_pt
    return 0.9 * low, high * 13.0 / 11.0


def check_jet_pt(jet_pt: tuple[float, float]) -> tuple[float, float]:
    """``jet_pt`` if 0 < MIN < MAX (GeV), else a DataError saying so."""
    low, high = jet_pt
    if not (0.0 < low < high):
        raise DataError(
            f"--jet-pt {low:g},{high:g}: expected MIN,MAX in GeV with 0 < MIN < MAX, "
            "e.g. --jet-pt 300,350"
        )
    return low, high


def _pythia(  # type: ignore[no-untyped-def]
    seed: int,
    labels: frozenset[int] = frozenset({0, 1}),
    jet_pt: tuple[float, float] = JET_PT_RANGE,
):
    try:
        import pythia8mc
    except ImportError:
        raise DataError(
            "datagen pythia needs the hep extra: pip install 'setpipe[hep]' "
            "(pythia8mc==8.317.2 and fastjet)"
        ) from None
    pythia = pythia8mc.Pythia("", False)
    settings = [
        "Beams:eCM = 14000.",
        f"WeakBosonAndParton:qqbar2gmZg = {'on' if 0 in labels else 'off'}",
        f"WeakBosonAndParton:qg2gmZq = {'on' if 1 in labels else 'off'}",
        "WeakZ0:gmZmode = 2",  # Z only, no photon
        "23:onMode = off",
        "23:onIfAny = 12 14 16",  # invisible Z: the jet recoils against nothing seen
        # pTHat window around the jet window: wide enough that few 500-550 GeV jets are
        # lost to the cut, narrow enough that ~15% of events pass it.
        f"PhaseSpace:pTHatMin = {pt_hat_window(jet_pt)[0]:.6g}",
        f"PhaseSpace:pTHatMax = {pt_hat_window(jet_pt)[1]:.6g}",
        "Next:numberCount = 0",
        "Print:quiet = on",
        "Random:setSeed = on",
        f"Random:seed = {seed % 900_000_000 + 1}",  # Pythia accepts 1..900000000
    ]
    for line in settings:
        if not pythia.readString(line):
            raise DataError(f"Pythia rejected the setting {line!r}")
    if not pythia.init():
        raise DataError("Pythia failed to initialise; see its log above")
    return pythia


def _worker(args: tuple[Path, int, int, int, tuple[float, float]]) -> list[str]:
    out_dir, worker, num_jets, seed, jet_pt = args
    import fastjet

    pythia = _pythia(seed, jet_pt=jet_pt)
    restarts = 0
    jet_def = fastjet.JetDefinition(fastjet.antikt_algorithm, 0.4)
    rows: dict[str, list] = {name: [] for name in SCHEMA.names}
    written: list[str] = []
    event_id = 0
    kept = 0
    # Balanced classes, as in the benchmark: q g -> Z q is ~6x as common as q qbar -> Z g
    # in this pT window.
    quota = {0: num_jets // 2, 1: num_jets - num_jets // 2}

    def flush() -> None:
        if not rows["label"]:
            return
        path = out_dir / f"pythia-w{worker:02d}-{len(written):04d}.parquet"
        pq.write_table(pa.Table.from_pydict(rows, schema=SCHEMA), path)
        written.append(str(path))
        for values in rows.values():
            values.clear()

    while kept < num_jets:
        if not pythia.next():
            continue
        event_id += 1
        label = PROCESS_LABEL.get(pythia.infoPython().code())
        if label is None or quota[label] == 0:
            continue
        event = pythia.event
        particles = []
        for i in range(event.size()):
            p = event[i]
            if p.isFinal() and p.isVisible():
                pj = fastjet.PseudoJet(p.px(), p.py(), p.pz(), p.e())
                pj.set_user_index(i)
                particles.append(pj)
        # Keep the ClusterSequence alive while constituents are read from its jets.
        sequence = fastjet.ClusterSequence(particles, jet_def)
        jets = fastjet.sorted_by_pt(sequence.inclusive_jets(20.0))
        if not jets:
            continue
        jet = jets[0]
        if not (jet_pt[0] < jet.pt() < jet_pt[1] and abs(jet.rap()) < JET_MAX_RAPIDITY):
            continue
        constituents = fastjet.sorted_by_pt(jet.constituents())
        rows["event_id"].append(worker * 1_000_000_000 + event_id)
        rows["label"].append(label)
        rows["jet_pt"].append(jet.pt())
        rows["jet_y"].append(jet.rap())
        rows["jet_phi"].append(jet.phi_std())
        rows["part_pt"].append([c.pt() for c in constituents])
        rows["part_y"].append([c.rap() for c in constituents])
        rows["part_phi"].append([c.phi_std() for c in constituents])
        rows["part_pid"].append([event[c.user_index()].id() for c in constituents])
        kept += 1
        quota[label] -= 1
        if quota[label] == 0 and kept < num_jets:
            # One class is full: generate only the other process from here. Its jets have
            # the same distribution as in the mixed run (the label is the hard process),
            # and no time goes on events that would be thrown away (~85% are q g -> Z q).
            restarts += 1
            pythia = _pythia(
                seed + 7919 * restarts, frozenset(k for k, v in quota.items() if v), jet_pt
            )
        if len(rows["label"]) >= ROWS_PER_FILE:
            flush()
    flush()
    return written


def generate_pythia_jets(
    out_dir: Path,
    num_jets: int,
    workers: int = 1,
    seed: int = 0,
    jet_pt: tuple[float, float] = JET_PT_RANGE,
) -> list[Path]:
    """Generate ``num_jets`` quark/gluon jets into Parquet files under ``out_dir``.

    Half quark, half gluon jets. ~10-20 accepted jets per second per core; ``workers``
    processes each take an equal share with their own seed, so the output does not depend
    on scheduling.
    """
    jet_pt = check_jet_pt(jet_pt)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    workers = max(1, min(workers, num_jets))
    share = [num_jets // workers + (1 if w < num_jets % workers else 0) for w in range(workers)]
    tasks = [(out_dir, w, n, seed * 1000 + w, jet_pt) for w, n in enumerate(share) if n]
    if workers == 1:
        files = [f for t in tasks for f in _worker(t)]
    else:
        with mp.get_context("spawn").Pool(workers) as pool:
            files = [f for chunk in pool.map(_worker, tasks) for f in chunk]
    return [Path(f) for f in files]
