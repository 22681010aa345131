"""What each training worker reserves, so that Ray Data's read tasks always find a CPU.

Ray Train workers take ``resources_per_worker`` (1 CPU by default) for the whole run, and
Ray Data's read tasks need a CPU each to run at all. With every CPU held by a worker
(``train.workers: 2`` on a 2-CPU machine) no read task is ever scheduled and the run
waits forever behind one line of Ray's ("may hang forever"). So, before training:

- workers that fit the cluster but leave less than ``DATA_CPUS`` free get fractional
  CPUs, ``(cluster CPUs - DATA_CPUS) / workers`` each, when the job did not ask for a
  number (a note says so); torch's thread count follows Ray's CPU share;
- a job that asked for ``resources_per_worker.CPU`` and leaves no room is refused, naming
  the numbers and the fix;
- workers that do not fit the cluster's CPUs at all are left to Ray (an autoscaling
  cluster adds nodes), with a note.
"""

from __future__ import annotations

from setpipe.errors import TrainError

DATA_CPUS = 1.0
"""CPUs kept for Ray Data: one read task at a time is enough to feed CPU workers."""
MIN_WORKER_CPUS = 0.25
"""Below this a worker's share is not worth having: fewer workers train faster."""


def worker_resources(
    workers: int, asked: dict[str, float], cluster_cpus: float
) -> tuple[dict[str, float], str | None]:
    """(resources per worker, a note for the user or None). TrainError when the job's own
    ``resources_per_worker.CPU`` would leave Ray Data no CPU."""
    if workers == 0 or cluster_cpus <= 0:
        return asked, None
    per = float(asked.get("CPU", 1.0))
    taken = workers * per
    if taken > cluster_cpus:
        return asked, (
            f"train.workers {workers} x {per:g} CPU = {taken:g} CPUs, more than the cluster's "
            f"{cluster_cpus:g}: training starts when Ray finds them (an autoscaling cluster "
            "adds nodes; a fixed one never will, so lower train.workers)"
        )
    if cluster_cpus - taken >= DATA_CPUS:
        return asked, None
    share = (cluster_cpus - DATA_CPUS) / workers
    if "CPU" in asked:
        raise TrainError(
            f"train.workers {workers} x train.resources_per_worker.CPU {per:g} = {taken:g} of "
            f"the cluster's {cluster_cpus:g} CPUs leaves {cluster_cpus - taken:g} for reading "
            f"data, and Ray Data needs {DATA_CPUS:g}: training would wait forever. Set "
            f"resources_per_worker.CPU to {max(share, 0):.3g} or less, use fewer workers, "
            "or add CPUs"
        )
    if share < MIN_WORKER_CPUS:
        most = int((cluster_cpus - DATA_CPUS) / MIN_WORKER_CPUS)
        fix = f"use train.workers: {most} or fewer" if most else "use train.workers: 0"
        raise TrainError(
            f"train.workers {workers} on a cluster of {cluster_cpus:g} CPUs: with "
            f"{DATA_CPUS:g} kept for reading data each worker would get {max(share, 0):.2g} "
            f"CPU; {fix} (0 trains in this process), or add CPUs"
        )
    return asked | {"CPU": share}, (
        f"train.workers {workers} on {cluster_cpus:g} CPUs: each worker takes {share:.3g} CPU "
        f"so that {DATA_CPUS:g} stays free for reading data (set "
        "train.resources_per_worker.CPU to choose)"
    )
