"""The Serve app over real HTTP on loopback: predictions, limits, bad input, alias moves."""

from __future__ import annotations

import ipaddress
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pyarrow.parquet as pq
import pytest
from serve_helpers import TEST_LIMITS, Registered, Server

FEATURES = ["part_pt", "part_eta", "part_phi", "part_pid"]


def jet_sets(registered: Registered, count: int, start: int = 0) -> list[dict]:
    """Real sets from the generated test split, in the request format."""
    table = pq.read_table(registered.data_dir / "test").slice(start, count).to_pylist()
    return [
        {"features": {f: row[f] for f in FEATURES}, "context": {"jet_pt": row["jet_pt"]}}
        for row in table
    ]


def big_set(n: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "features": {
            "part_pt": (0.5 + rng.exponential(5.0, n)).round(4).tolist(),  # > 0: log(pt)
            "part_eta": rng.normal(0, 0.3, n).round(4).tolist(),
            "part_phi": rng.normal(0, 0.3, n).round(4).tolist(),
            "part_pid": rng.choice([22, 211, -211, 130], n).tolist(),
        },
        "context": {"jet_pt": 500.0},
    }


def pyfunc_probabilities(registered: Registered, version: str, sets: list[dict]) -> np.ndarray:
    """What the registered pyfunc (mlflow.pyfunc.load_model) predicts for the same sets."""
    import mlflow

    mlflow.set_tracking_uri(registered.tracking_uri)
    model = mlflow.pyfunc.load_model(f"models:/{registered.name}/{version}")
    out = model.predict(sets)
    return np.asarray([_as_dict(o)["probabilities"] for o in out])


def _as_dict(output: object) -> dict:
    return output if isinstance(output, dict) else output.model_dump()  # type: ignore[attr-defined]


def probabilities(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.asarray([p["probabilities"] for p in response.json()["predictions"]])


def test_health_ready_and_model(server: Server) -> None:
    assert httpx.get(f"{server.url}/health").json() == {"status": "ok"}
    assert httpx.get(f"{server.url}/ready").status_code == 200
    info = httpx.get(f"{server.url}/model").json()
    pid = info.pop("pid")
    assert isinstance(pid, int) and pid > 1
    assert info == {
        "name": server.registered.name,
        "version": info["version"],
        "alias": "champion",
        "task": "classify",
        "element_features": FEATURES,
        "context_features": ["jet_pt"],
        "num_classes": 2,
    }
    assert int(info["version"]) >= int(server.registered.version)


def listening_addresses(port: int) -> set[str]:
    """Local addresses of the TCP sockets in LISTEN state on ``port`` (Linux /proc/net)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as lines:
            next(lines)  # header
            for line in lines:
                local, state = line.split()[1], line.split()[3]
                address, port_hex = local.split(":")
                if state != "0A" or int(port_hex, 16) != port:  # 0A: LISTEN
                    continue
                raw = bytes.fromhex(address)
                # The kernel prints each 32-bit word in host (little-endian) order.
                words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
                found.add(str(ipaddress.ip_address(words)))
    return found


def test_server_listens_on_loopback_only_by_default(server: Server) -> None:
    """The fixture starts the app as `setpipe serve` does, leaving the host to its default."""
    from setpipe.cli import build_parser
    from setpipe.serve.app import DEFAULT_HOST

    port = int(server.url.rsplit(":", 1)[1])
    assert listening_addresses(port) == {"127.0.0.1"}
    assert build_parser().parse_args(["serve", "models:/m@champion"]).host == DEFAULT_HOST


def test_predictions_equal_the_pyfunc(server: Server) -> None:
    sets = jet_sets(server.registered, 6)
    response = server.post({"sets": sets})
    body = response.json()
    assert body["model"]["name"] == server.registered.name
    got = probabilities(response)
    assert got.shape == (6, 2)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-6)
    expected = pyfunc_probabilities(server.registered, body["model"]["version"], sets)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_set_larger_than_the_element_budget_is_chunked(server: Server) -> None:
    """5000 elements with a 512-element batch budget: chunked, same answer as the pyfunc."""
    sets = [big_set(5000)]
    response = server.post({"sets": sets})
    expected = pyfunc_probabilities(server.registered, response.json()["model"]["version"], sets)
    np.testing.assert_allclose(probabilities(response), expected, rtol=1e-4, atol=1e-5)


def test_concurrent_requests_batched_together_get_their_own_answers(server: Server) -> None:
    sets = jet_sets(server.registered, 16, start=20)
    alone = [probabilities(server.post({"sets": [s]}))[0] for s in sets]
    with ThreadPoolExecutor(16) as pool:
        together = list(pool.map(lambda s: probabilities(server.post({"sets": [s]}))[0], sets))
    np.testing.assert_allclose(np.stack(together), np.stack(alone), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- limits (413)


def test_too_many_sets_is_413(server: Server) -> None:
    sets = jet_sets(server.registered, 1) * (TEST_LIMITS["max_sets"] + 1)
    response = server.post({"sets": sets})
    assert response.status_code == 413, response.text
    assert response.json() == {
        "detail": "sets: 9 sets exceed the limit of 8 per request (--max-sets)"
    }


def test_too_many_elements_is_413(server: Server) -> None:
    response = server.post({"sets": [big_set(TEST_LIMITS["max_elements_per_set"] + 1)]})
    assert response.status_code == 413
    assert response.json() == {
        "detail": "sets[0]: 20001 elements exceed the limit of 20000 per set "
        "(--max-elements-per-set)"
    }


def test_declared_body_over_the_limit_is_413(server: Server) -> None:
    body = b" " * (TEST_LIMITS["max_body_bytes"] + 1)
    response = server.post(body)
    assert response.status_code == 413
    assert response.json() == {
        "detail": "request body of 2000001 bytes exceeds the limit of 2000000 bytes "
        "(--max-body-bytes)"
    }


def test_streamed_body_over_the_limit_is_413(server: Server) -> None:
    """No Content-Length (chunked upload): the bytes actually read are counted."""

    def chunks():
        for _ in range(30):
            yield b" " * 100_000

    response = httpx.post(f"{server.url}/predict", content=chunks(), timeout=60)
    assert response.status_code == 413
    assert response.json() == {
        "detail": "request body exceeds the limit of 2000000 bytes (--max-body-bytes)"
    }


# --------------------------------------------------------------------------- bad input (422)

GOOD = {
    "part_pt": [10.0, 5.0, 2.0],
    "part_eta": [0.1, -0.2, 0.0],
    "part_phi": [0.3, 0.1, -0.1],
    "part_pid": [211, 22, -211],
}


def one(features: dict | None = None, context: dict | None = None, **extra) -> dict:
    item = {"features": GOOD if features is None else features, **extra}
    item["context"] = {"jet_pt": 400.0} if context is None else context
    return item


LOG_FIX = "filter these rows, add an offset (eps), or set data.on_bad_row: skip"
BAD_PAYLOADS = [
    (
        {"sets": [one(), one({**GOOD, "part_eta": [0.1, 0.2]})]},
        "sets[1].features.part_eta: expected 3 values like part_pt, found 2",
    ),
    (
        {"sets": [one({**GOOD, "part_e": [1, 2, 3]})]},
        "sets[0].features.part_e: not an element feature of this model; "
        "expected part_pt, part_eta, part_phi, part_pid",
    ),
    (
        {"sets": [one({k: v for k, v in GOOD.items() if k != "part_phi"})]},
        "sets[0].features: missing part_phi; expected part_pt, part_eta, part_phi, part_pid",
    ),
    (
        b'{"sets": [{"features": {"part_pt": [1.0, NaN], "part_eta": [0, 0], '
        b'"part_phi": [0, 0], "part_pid": [22, 22]}, "context": {"jet_pt": 300}}]}',
        "sets[0].features.part_pt[1]: NaN is not allowed; values must be finite numbers",
    ),
    (
        b'{"sets": [{"features": {"part_pt": [1.0, 2.0], "part_eta": [-Infinity, 0], '
        b'"part_phi": [0, 0], "part_pid": [22, 22]}, "context": {"jet_pt": 300}}]}',
        "sets[0].features.part_eta[0]: -inf is not allowed; values must be finite numbers",
    ),
    (
        {"sets": [one({k: [] for k in GOOD})]},
        "sets[0]: empty set; a set needs at least one element",
    ),
    (
        {"sets": [one({**GOOD, "part_pt": [10.0, "5 GeV", 2.0]})]},
        'sets[0].features.part_pt[1]: expected a number, found "5 GeV"',
    ),
    (
        {"sets": [one({**GOOD, "part_pid": [211, None, 22]})]},
        "sets[0].features.part_pid[1]: expected a number, found null",
    ),
    (
        {"sets": [one({**GOOD, "part_phi": 0.3})]},
        "sets[0].features.part_phi: expected a list of numbers, found 0.3",
    ),
    (
        {"sets": [one(context={})]},
        "sets[0].context: missing jet_pt; expected jet_pt",
    ),
    (
        {"sets": [one(context={"jet_pt": float("nan")})]},
        "sets[0].context.jet_pt: NaN is not allowed; values must be finite numbers",
    ),
    (
        {"sets": [one({**GOOD, "part_eta": [True, 0.0, 0.1]})]},
        "sets[0].features.part_eta[0]: expected a number, found true",
    ),
    (
        {"sets": [one(), one(), one(context={"jet_pt": "high"})]},
        'sets[2].context.jet_pt: expected a number, found "high"',
    ),
    (
        {"sets": [one({**GOOD, "part_pt": [[10.0], [5.0], [2.0]]})]},
        "sets[0].features.part_pt[0]: expected a number, found a list",
    ),
    (
        {"sets": [one(label=1)]},
        "sets[0].label: unknown field; expected features, context",
    ),
    # Plausible inputs that once answered a bare 500 (issue 14/15): each names set and field.
    (
        {"sets": [one(), one({**GOOD, "part_pt": [10.0, 0.0, 2.0]})]},
        "sets[1]: feature log_pt (from part_pt): log of 0.0 at element 1 (expected > 0); "
        + LOG_FIX,
    ),
    (
        {"sets": [one({**GOOD, "part_pt": [-3.0, 5.0, 2.0]})]},
        "sets[0]: feature log_pt (from part_pt): log of -3.0 at element 0 (expected > 0); "
        + LOG_FIX,
    ),
    (
        {"sets": [one({**GOOD, "part_eta": [0.1, 1e39, 0.0]})]},
        "sets[0].features.part_eta[1]: 1e+39 does not fit float32 (|x| <= 3.403e+38), which "
        "the model computes in; send values in the range the model was trained on",
    ),
    (
        b'{"sets": [{"features": {"part_pt": [1.0, 2.0], "part_eta": ['
        + b"9" * 400
        + b', 0], "part_phi": [0, 0], "part_pid": [22, 22]}, "context": {"jet_pt": 300}}]}',
        "sets[0].features.part_eta[0]: inf is not allowed; values must be finite numbers",
    ),
    (
        b'{"sets": ' + b"[" * 1500 + b"]" * 1500 + b"}",
        'body: JSON nested too deeply; a request is {"sets": [{"features": {"NAME": '
        '[numbers]}, "context": {"NAME": number}}]}',
    ),
    ({"sets": []}, "sets: expected a non-empty list of sets, found an empty list"),
    ({"inputs": [one()]}, "body.inputs: unknown field; expected sets"),
    (b'{"sets": [', "body: not valid JSON (Expecting value: line 1 column 11 (char 10))"),
    (
        b'{"sets": "\xff"}',
        "body: not valid JSON ('utf-8' codec can't decode byte 0xff in position 10: "
        "invalid start byte)",
    ),
]


@pytest.mark.parametrize(("payload", "message"), BAD_PAYLOADS)
def test_bad_payload_is_422_naming_the_place(
    server: Server, payload: dict | bytes, message: str
) -> None:
    response = server.post(payload)
    assert response.status_code == 422
    assert response.json() == {"detail": message}


# --------------------------------------------------------------------------- alias moves


def test_alias_move_under_continuous_requests(server: Server) -> None:
    """A client posts non-stop while a new version is registered and @champion moves to it.

    No request fails; each names one version; the versions go old -> new, never back.
    """
    from mlflow import MlflowClient

    registered = server.registered
    client = MlflowClient(registered.tracking_uri)
    old = str(client.get_model_version_by_alias(registered.name, "champion").version)
    sets = jet_sets(registered, 3)
    seen: list[tuple[int, str]] = []
    stop = threading.Event()

    def post_forever() -> None:
        with httpx.Client(timeout=60) as http:
            while not stop.is_set():
                r = http.post(f"{server.url}/predict", content=json.dumps({"sets": sets}))
                seen.append(
                    (r.status_code, r.json()["model"]["version"] if r.is_success else r.text)
                )

    thread = threading.Thread(target=post_forever)
    thread.start()
    try:
        new = registered.train_again(seed=1)
        assert new != old
        client.set_registered_model_alias(registered.name, "champion", new)
        deadline = time.monotonic() + 30
        while not any(v == new for _, v in seen[-5:]):
            assert time.monotonic() < deadline, f"still serving {seen[-1]} 30 s after the move"
            time.sleep(0.2)
        time.sleep(1.0)  # keep posting a while on the new version
    finally:
        stop.set()
        thread.join()
    assert all(status == 200 for status, _ in seen), [s for s in seen if s[0] != 200][:3]
    versions = [v for _, v in seen]
    switches = [v for i, v in enumerate(versions) if i == 0 or v != versions[i - 1]]
    assert switches == [old, new]
    assert len(versions) > 20
