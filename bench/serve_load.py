"""Load test: setpipe's Ray Serve app vs `mlflow models serve` of the same registered version.

Loopback only, fixed durations, stops by itself. For 50-element and 10k-element sets,
16 concurrent clients post one set per request for DURATION seconds to each server, the
two servers alternating for ROUNDS rounds; requests/s and p50/p99 latency are measured
client-side over the pooled rounds, by a lean keep-alive client (_http_load.py; httpx
itself took ~6 ms of CPU per request, more than the servers). setpipe is served as
`setpipe serve` serves it: HAProxy ingress unless --ingress proxy. Then, on setpipe only:

* slow clients: 200 connections send a POST's headers and the start of its body and go
  quiet; while they wait, GET /health and one valid POST /predict must each answer 200
  within a second (slow_clients_ok=1). Bounded: the 200 sockets close after the check.
* one request with a 10⁶-element set (10⁵ with --quick), then one ~40 MB body of 4000
  sets, while the RSS of the replica (the pid GET /model reports) and of the process HTTP
  enters through (HAProxy, or Serve's proxy actor with --ingress proxy) is sampled every
  10 ms from /proc; huge_set_rss_mb and big_body_rss_mb are the sums of the two growths,
  big_body_rss_x that growth over the body's size.

    .venv/bin/python bench/serve_load.py [--quick] [--duration S] [--rounds R]
        [--ingress haproxy|proxy] [--runtime torch|onnx] [--model-uri URI --tracking-uri URI]

Without --model-uri it trains the quickstart model on generated jets in a temp dir
first. Ends with one line:
RESULT rps_vs_mlflow=... p99_vs_mlflow=... huge_set_rss_mb=... slow_clients_ok=1
big_body_rss_mb=... (rps ratio: the smaller over the two set sizes; p99 ratio: the larger.)
--runtime onnx serves the model through its ONNX graphs (setpipe serve --runtime onnx);
compare the rps_vs_mlflow_* of a torch and an onnx run (the same mlflow server is the
yardstick in both).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from _common import REPO, rss_mb, start_ray
from _http_load import LoadStats, answered, partial_requests, run_load

from setpipe._net import free_port
from setpipe.serve.ingress import DEFAULT_INGRESS, INGRESSES, use_local_ingress

FEATURES = ["part_pt", "part_eta", "part_phi", "part_pid"]


def make_set(n: int, seed: int) -> dict:
    """A jet-like set of n particles, numbers rounded as a client would send them."""
    rng = np.random.default_rng(seed)
    return {
        "features": {
            # pT > 0.5 like a detector threshold; a rounded 0 would make the job's log(pt) -inf
            "part_pt": (0.5 + rng.exponential(5.0, n)).round(3).tolist(),
            "part_eta": rng.normal(0, 0.3, n).round(4).tolist(),
            "part_phi": rng.normal(0, 0.3, n).round(4).tolist(),
            "part_pid": rng.choice([22.0, 211.0, -211.0, 130.0], n).tolist(),
        },
        "context": {"jet_pt": float(rng.uniform(300, 700))},
    }


def train_model(root: Path) -> tuple[str, str]:
    """Train and register the quickstart model on generated jets; (model uri, tracking uri)."""
    from setpipe.data.datagen.jets import generate_jets
    from setpipe.pipeline import run
    from setpipe.spec import load_job

    data = root / "data"
    generate_jets(data, {"train": 2000, "validation": 500, "test": 200}, seed=0)
    job = load_job(
        REPO / "jobs" / "quickstart.yaml",
        [
            f"workdir={root / 'work'}",
            f"data.train={data}/train",
            f"data.validation={data}/validation",
            f"data.test={data}/test",
            "train.epochs=1",
            "train.workers=0",  # in-process: the model is only here to be served
        ],
    )
    summary = run(job, progress=False)
    return summary.model_uri, f"sqlite:///{(root / 'work').resolve() / 'mlflow.db'}"


def ingress_pid(ingress: str) -> int:
    """The process HTTP enters through in THIS run's Ray (HAProxy, or Serve's proxy actor):
    a descendant of this process (the local raylet is our child), so another Ray on the
    machine cannot be picked by mistake."""
    import psutil

    for proc in psutil.Process().children(recursive=True):
        try:
            if ingress == "haproxy" and proc.name() == "haproxy":
                return proc.pid
            if ingress == "proxy" and "ProxyActor" in " ".join(proc.cmdline()):
                return proc.pid
        except psutil.Error:
            continue
    raise SystemExit(f"no {ingress} process under this driver")


def slow_clients(url: str, port: int, body: bytes, count: int = 200) -> dict[str, float]:
    """``count`` clients send headers and 200 of 10,000 body bytes, then nothing; meanwhile
    GET /health and POST /predict of ``body`` are timed. {"ok": 1.0 if both answered 200
    within a second while every slow client still waited, "health_ms", "predict_ms"}."""
    socks = partial_requests("127.0.0.1", port, "/predict", count, declared=10_000, sent=200)
    try:
        time.sleep(0.5)  # every slow request has reached the server
        took: dict[str, tuple[int | str, float]] = {}
        with httpx.Client(timeout=5) as http:
            for name, call in (
                ("health", lambda: http.get(f"{url}/health")),
                ("predict", lambda: http.post(f"{url}/predict", content=body)),
            ):
                t0 = time.perf_counter()
                try:
                    status: int | str = call().status_code
                except httpx.TimeoutException as err:
                    status = type(err).__name__
                took[name] = (status, time.perf_counter() - t0)
        waiting = sum(not answered(sock) for sock in socks)
    finally:
        for sock in socks:
            sock.close()
    ok = waiting == count and all(s == 200 and t < 1.0 for s, t in took.values())
    print(f"slow clients: {count} waiting on their bodies ({waiting} still at the end): {took}")
    return {
        "ok": float(ok),
        "health_ms": took["health"][1] * 1e3,
        "predict_ms": took["predict"][1] * 1e3,
    }


def rss_growth(url: str, body: bytes, ingress: str) -> tuple[float, float, float, int]:
    """Post ``body``; (RSS growth MB of the replica, of the ingress, seconds, status).

    Growth = peak RSS sampled every 10 ms during the request minus RSS just before it.
    """
    pids = {"replica": httpx.get(f"{url}/model").json()["pid"], "ingress": ingress_pid(ingress)}
    base = {k: rss_mb(pid) for k, pid in pids.items()}
    peak = dict(base)
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            for k, pid in pids.items():
                peak[k] = max(peak[k], rss_mb(pid))
            time.sleep(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    t0 = time.perf_counter()
    response = httpx.post(f"{url}/predict", content=body, timeout=600)
    seconds = time.perf_counter() - t0
    done.set()
    sampler.join()
    growth = {k: peak[k] - base[k] for k in pids}
    return growth["replica"], growth["ingress"], seconds, response.status_code


def start_mlflow(model_uri: str, tracking_uri: str, port: int, log: Path) -> subprocess.Popen:
    bin_dir = Path(sys.executable).parent
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "MLFLOW_TRACKING_URI": tracking_uri,
    }
    cmd = [str(bin_dir / "mlflow"), "models", "serve", "-m", model_uri, "--env-manager", "local"]
    cmd += ["-h", "127.0.0.1", "-p", str(port)]
    return subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)


def wait_http(url: str, proc: subprocess.Popen | None = None, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"{url} not up after {timeout:.0f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short phases, 10⁵-element huge set")
    parser.add_argument("--duration", type=float, default=None, help="seconds per phase")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per set size")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--model-uri", default=None, help="models:/NAME/VERSION (else trains)")
    parser.add_argument("--tracking-uri", default=None)
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument(
        "--ingress", choices=INGRESSES, default=DEFAULT_INGRESS, help="as setpipe serve"
    )
    parser.add_argument(
        "--runtime", choices=("torch", "onnx"), default="torch", help="as setpipe serve"
    )
    args = parser.parse_args()
    duration = args.duration or (2.0 if args.quick else 10.0)
    warmup = 0.5 if args.quick else 1.0
    rounds = 1 if args.quick else args.rounds
    huge_n = 100_000 if args.quick else 1_000_000
    big_sets, big_n = 4000, 340  # ~40 MB of JSON, within the default --max-sets 4096

    os.environ.setdefault("RAY_AUTH_MODE", "token")

    use_local_ingress(args.ingress, "127.0.0.1")  # what `setpipe serve` does before ray.init
    import ray
    from ray import serve

    from setpipe.serve.app import ServeConfig, start
    from setpipe.tracking.store import resolve

    tmp = Path(tempfile.mkdtemp(prefix="setpipe-bench-"))
    start_ray(num_cpus=4)
    if args.model_uri:
        model_uri, tracking_uri = args.model_uri, args.tracking_uri
    else:
        model_uri, tracking_uri = train_model(tmp)
    name, version = resolve(model_uri, tracking_uri)
    pinned = f"models:/{name}/{version}"
    print(
        f"model {pinned}; ingress {args.ingress}; runtime {args.runtime}; {args.clients} clients; "
        f"{rounds} x {duration:.0f} s per server and set size"
    )

    port, mlflow_port = free_port(), free_port()
    # mlflow's server starts (~12 s here) while Serve does.
    mlflow_proc = start_mlflow(pinned, tracking_uri, mlflow_port, tmp / "mlflow-serve.log")
    results: dict[tuple[str, int], LoadStats] = {}
    try:
        config = ServeConfig(
            name=name, tracking_uri=tracking_uri, replicas=args.replicas, runtime=args.runtime
        )
        setpipe_url = start(config, version, port=port)  # 127.0.0.1: loopback only
        wait_http(f"{setpipe_url}/ready")
        wait_http(f"http://127.0.0.1:{mlflow_port}/ping", mlflow_proc)
        targets = {
            "setpipe": (port, "/predict", "sets"),
            "mlflow": (mlflow_port, "/invocations", "inputs"),
        }
        for n in (50, 10_000):
            sets = [make_set(n, seed) for seed in range(8)]
            runs: dict[str, list[LoadStats]] = {server: [] for server in targets}
            for _ in range(rounds):  # alternate: both servers see the machine's drift alike
                for server, (server_port, path, key) in targets.items():
                    bodies = [json.dumps({key: [s]}).encode() for s in sets]
                    run_load("127.0.0.1", server_port, path, bodies, args.clients, warmup)
                    runs[server].append(
                        run_load("127.0.0.1", server_port, path, bodies, args.clients, duration)
                    )
            for server, server_runs in runs.items():
                stats = results[(server, n)] = LoadStats.pooled(server_runs)
                print(
                    f"{server:8s} {n:6d} elements: {stats.rps:8.1f} req/s  "
                    f"p50 {stats.p50_ms:8.1f} ms  p99 {stats.p99_ms:8.1f} ms  "
                    f"errors {stats.errors}/{stats.requests} {stats.first_error[:200]}",
                    flush=True,
                )
        slow = slow_clients(setpipe_url, port, json.dumps({"sets": [make_set(50, 0)]}).encode())
        body = json.dumps({"sets": [make_set(huge_n, seed=99)]}).encode()
        print(f"huge set: {huge_n} elements, {len(body) / 1e6:.1f} MB of JSON")
        replica_mb, ingress_mb, seconds, status = rss_growth(setpipe_url, body, args.ingress)
        growth = replica_mb + ingress_mb  # the server is both processes
        print(
            f"huge set answered with {status} in {seconds:.1f} s; RSS +{replica_mb:.0f} MB "
            f"replica, +{ingress_mb:.0f} MB {args.ingress}"
        )
        body = json.dumps({"sets": [make_set(big_n, seed) for seed in range(big_sets)]}).encode()
        big_mb = len(body) / 2**20  # MiB, as rss_mb
        print(f"big body: {big_sets} sets of {big_n} elements, {big_mb:.1f} MiB of JSON")
        big_replica_mb, big_ingress_mb, big_seconds, big_status = rss_growth(
            setpipe_url, body, args.ingress
        )
        del body
        big_growth = big_replica_mb + big_ingress_mb
        print(
            f"big body answered with {big_status} in {big_seconds:.1f} s; RSS "
            f"+{big_replica_mb:.0f} MB replica, +{big_ingress_mb:.0f} MB {args.ingress}"
        )
    finally:
        mlflow_proc.terminate()
        try:
            mlflow_proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            mlflow_proc.kill()
        serve.shutdown()
        ray.shutdown()
    rps = {n: results[("setpipe", n)].rps / results[("mlflow", n)].rps for n in (50, 10_000)}
    p99 = {n: results[("setpipe", n)].p99_ms / results[("mlflow", n)].p99_ms for n in (50, 10_000)}
    errors = sum(r.errors for r in results.values())
    print(
        f"RESULT rps_vs_mlflow={min(rps.values()):.2f} p99_vs_mlflow={max(p99.values()):.2f} "
        f"huge_set_rss_mb={growth:.0f} huge_set_replica_mb={replica_mb:.0f} "
        f"huge_set_ingress_mb={ingress_mb:.0f} rps_vs_mlflow_50={rps[50]:.2f} "
        f"rps_vs_mlflow_10k={rps[10_000]:.2f} p99_vs_mlflow_50={p99[50]:.2f} "
        f"p99_vs_mlflow_10k={p99[10_000]:.2f} huge_set_elements={huge_n} "
        f"huge_set_status={status} slow_clients_ok={int(slow['ok'])} "
        f"slow_clients_health_ms={slow['health_ms']:.0f} "
        f"slow_clients_predict_ms={slow['predict_ms']:.0f} big_body_rss_mb={big_growth:.0f} "
        f"big_body_mb={big_mb:.1f} big_body_rss_x={big_growth / big_mb:.2f} "
        f"big_body_status={big_status} errors={errors} ingress={args.ingress} "
        f"runtime={args.runtime}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
