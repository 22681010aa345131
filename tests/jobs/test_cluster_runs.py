"""A real `setpipe run` submitted to the test head, its 2 Ray Train workers on 2 nodes.

One submitted run shows both the submission path (the cluster trains, tracks and
registers the model) and the multi-node path; a separate in-driver run would only cost
minutes more on a 2-core machine. The test adds a second `ray start` node to the head;
each node offers one ``setpipe_slot`` and the job asks one slot per worker, so the two
Ray Train workers can only be placed on different nodes. Which node each worker ran on
is read back from Ray's state API (the dashboard's /api/v0/actors), not from setpipe's
own output.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from jobs_helpers import HEAD_RESOURCE, Head, ports, start_node, stop_node

from setpipe.data.datagen.jets import generate_jets
from setpipe.errors import JobError
from setpipe.jobs.submit import JobsClient, submission_id_for
from setpipe.spec import load_job

REPO = Path(__file__).resolve().parents[2]
# About 1.5 min on a quiet 2-core machine; deselect with -m 'not multinode'.
pytestmark = [pytest.mark.slow, pytest.mark.multinode]


def _get(head: Head, path: str) -> dict:
    request = urllib.request.Request(
        f"{head.address}{path}", headers={"Authorization": f"Bearer {head.token}"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def _alive_nodes(head: Head) -> list[str]:
    nodes = _get(head, "/api/v0/nodes?limit=100")["data"]["result"]["result"]
    return [n["node_id"] for n in nodes if n["state"] == "ALIVE"]


def _log_tail(head: Head, sid: str) -> str:
    """The driver's log read from the head's files: works when the dashboard does not answer."""
    logs = sorted(head.temp_dir.glob(f"session_*/logs/job-driver-{sid}.log"))
    return logs[-1].read_text()[-3000:] if logs else f"no driver log for {sid}"


@pytest.fixture(scope="module")
def jets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("jets")
    generate_jets(out, {"train": 400, "validation": 200, "test": 100})
    return out


@pytest.fixture()
def second_node(ray_head: Head) -> Iterator[str]:
    """A second Ray node joined to the head; yields its node id."""
    before = set(_alive_nodes(ray_head))
    log = ray_head.temp_dir / "node2.log"
    # Its own temp dir: two raylets of one machine sharing the head's would share its
    # runtime_resources, and the second node's runtime-env agent deleted the job's
    # working_dir under the running driver (FileNotFoundError from os.getcwd()).
    node_tmp = tempfile.mkdtemp(prefix="spn-", dir="/tmp")  # short: unix socket paths
    proc = start_node(
        [
            f"--address={ray_head.gcs}",
            f"--temp-dir={node_tmp}",
            "--node-ip-address=127.0.0.1",
            "--num-cpus=1",
            f'--resources={{"{HEAD_RESOURCE}": 1}}',
            *ports(
                "dashboard-agent-listen-port",
                "dashboard-agent-grpc-port",
                "runtime-env-agent-port",
                "metrics-export-port",
                "node-manager-port",
                "object-manager-port",
            ),
        ],
        ray_head.env,
        log,
    )
    try:
        deadline = time.monotonic() + 90
        while not (new := set(_alive_nodes(ray_head)) - before):
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "the second node did not join"
            time.sleep(0.5)
        yield new.pop()
    finally:
        stop_node(proc)
        shutil.rmtree(node_tmp, ignore_errors=True)


def _quickstart(jets: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch, *extra: str):
    monkeypatch.setenv("SETPIPE_DATA", str(jets.parent))
    return load_job(
        REPO / "jobs" / "quickstart.yaml",
        [
            f"data.train={jets}/train",
            f"data.validation={jets}/validation",
            f"data.test={jets}/test",
            f"workdir={workdir}",
            "train.epochs=1",
            *extra,
        ],
    )


def test_two_workers_on_two_nodes(
    client: JobsClient,
    ray_head: Head,
    second_node: str,
    jets: Path,
    workdir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A submitted `setpipe run` with 2 Ray Train workers on 2 nodes registers its model."""
    job = _quickstart(
        jets,
        workdir,
        monkeypatch,
        "name=qs-two-nodes",
        "train.workers=2",
        f"train.resources_per_worker={{CPU: 1, {HEAD_RESOURCE}: 1}}",
    )
    sid = client.submit(job, submission_id_for(job))
    try:
        # Generous: a contended 2-core machine runs the job's imports and 2 workers slowly.
        status = client.wait(sid, timeout=900)
    except JobError as err:
        pytest.fail(f"{err}\n{_log_tail(ray_head, sid)}")
    logs = client.logs(sid)
    assert status == "SUCCEEDED", logs[-3000:]
    assert "run finished" in logs
    assert "  model          models:/qs-two-nodes/1\n" in logs
    assert (workdir / "mlflow.db").is_file()  # the job's workdir, written by the cluster
    actors = _get(
        ray_head,
        "/api/v0/actors?limit=1000&detail=1"
        "&filter_keys=class_name&filter_predicates=%3D&filter_values=RayTrainWorker",
    )["data"]["result"]["result"]
    job_id = _get(ray_head, f"/api/jobs/{sid}")["job_id"]
    workers = [a for a in actors if a.get("job_id") == job_id]
    assert len(workers) == 2, actors
    nodes = {a["node_id"] for a in workers}
    assert len(nodes) == 2
    assert second_node in nodes
