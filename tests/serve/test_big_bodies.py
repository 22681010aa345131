"""Big request bodies cost a small multiple of their size, and limits stop the parse early.

The replica's own parse path (``schema.parse_request``) on real bodies, no Ray (but for
the last test, which looks at the session's replica): memory is measured with
tracemalloc, which numpy's buffers report to (the batch is a numpy array shared with
torch). The body itself exists before tracing starts, so a peak of ``k`` times the body
means ``k + 1`` bodies' worth in all while it is parsed. bench/serve_load.py measures the
whole request in a running replica by RSS.
"""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import Callable

import httpx
import numpy as np
import pytest
import torch
from serve_helpers import REPO, Server

from setpipe.data.request import BadRequest, Limits, sets_to_batch
from setpipe.serve.schema import parse_request
from setpipe.spec import load_job

JOB = load_job(REPO / "jobs" / "quickstart.yaml")
FEATURES = ["part_pt", "part_eta", "part_phi", "part_pid"]


def jet(n: int, rng: np.random.Generator) -> dict:
    return {
        "features": {
            "part_pt": (0.5 + rng.exponential(5.0, n)).round(4).tolist(),
            "part_eta": rng.normal(0, 0.3, n).round(4).tolist(),
            "part_phi": rng.normal(0, 0.3, n).round(4).tolist(),
            "part_pid": rng.choice([22, 211, -211, 130], n).tolist(),
        },
        "context": {"jet_pt": round(float(rng.uniform(300, 700)), 2)},
    }


def body_of(sets: list[dict]) -> bytearray:
    return bytearray(json.dumps({"sets": sets}).encode())  # as the server reads it


def peak_bytes(call: Callable[[], object]) -> tuple[int, object]:
    """(peak bytes allocated while ``call`` ran, what it returned or raised)."""
    tracemalloc.start()
    try:
        try:
            out: object = call()
        except BadRequest as err:
            out = err
        return tracemalloc.get_traced_memory()[1], out
    finally:
        tracemalloc.stop()


def test_too_many_sets_is_refused_while_parsing() -> None:
    """100,000 tiny sets (7 MB) against --max-sets 4096: refused at the 4097th set, before
    the rest is decoded (the whole document used to be built first: ~100 MB of objects)."""
    tiny = '{"features": {"part_pt": [1.5], "part_eta": [0.1], "part_phi": [0.2], ' + (
        '"part_pid": [22]}, "context": {"jet_pt": 400.0}}'
    )
    body = bytearray(('{"sets": [' + ", ".join([tiny] * 100_000) + "]}").encode())
    assert len(body) > 10_000_000
    peak, out = peak_bytes(lambda: parse_request(body, JOB, Limits()))
    assert isinstance(out, BadRequest)
    assert (out.status, str(out)) == (
        413,
        "sets: more than 4096 sets; the limit is 4096 per request (--max-sets)",
    )
    assert peak < 0.1 * len(body), (peak / 1e6, len(body) / 1e6)


def test_too_many_elements_is_refused_before_the_numbers_are_read() -> None:
    """A 100,001-element set against --max-elements-per-set 100000: the count comes from the
    text (its commas), no number is converted and nothing the size of the set is built."""
    rng = np.random.default_rng(1)
    body = body_of([jet(10, rng), jet(100_001, rng)])
    limits = Limits(max_elements_per_set=100_000)
    peak, out = peak_bytes(lambda: parse_request(body, JOB, limits))
    assert isinstance(out, BadRequest)
    assert (out.status, str(out)) == (
        413,
        "sets[1]: 100001 elements exceed the limit of 100000 per set (--max-elements-per-set)",
    )
    assert peak < 0.02 * len(body), (peak / 1e6, len(body) / 1e6)


@pytest.mark.parametrize(
    ("sizes", "mb"),
    [
        ([1_000_000], 29),  # one huge jet: the 1e6-element request of bench/serve_load.py
        ([340] * 4000, 40),  # a 40 MB body of many sets: issue 15 item 3's case
    ],
)
def test_memory_while_parsing_is_under_one_body(sizes: list[int], mb: int) -> None:
    """Peak allocations while a big body is parsed stay under the body's own size: the
    numbers land as float32 (4 bytes each) straight into one growing block, and long arrays
    are converted a piece at a time. Before: text copy + float64 arrays + Python objects."""
    rng = np.random.default_rng(2)
    sets = [jet(n, rng) for n in sizes]
    body = body_of(sets)
    assert len(body) > mb * 1e6
    limits = Limits(max_body_bytes=len(body))
    peak, out = peak_bytes(lambda: parse_request(body, JOB, limits).batch)
    assert not isinstance(out, BadRequest), out
    assert peak < 1.0 * len(body), (peak / 1e6, len(body) / 1e6)
    batch = out
    assert batch.values.dtype == torch.float32 and batch.num_elements == sum(sizes)
    # The same numbers as the list path (pyfunc's sets_to_batch), bit for bit.
    for s in (0, len(sets) - 1):
        lo, hi = int(batch.offsets[s]), int(batch.offsets[s + 1])
        one = sets_to_batch([sets[s]], JOB, Limits(max_elements_per_set=2_000_000))
        assert torch.equal(batch.values[lo:hi], one.values)
        assert torch.equal(batch.context[s], one.context[0])


def test_default_body_limit_is_what_the_element_limit_implies() -> None:
    """The largest set the element limit admits, in the 4-feature jet layout, at 8 bytes a
    number (a 4-digit value and its separator); a 1e6-element jet as bench/serve_load.py
    sends it (about 31 MB) fits."""
    limits = Limits()
    assert limits.max_body_bytes == limits.max_elements_per_set * 4 * 8 == 64_000_000


# --------------------------------------------------------------------------- errors in big bodies


def big_jet_body(n: int, eta_text: str | None = None) -> bytes:
    """One n-element set as JSON text, its part_eta list replaced by ``eta_text`` if given."""
    sets = [jet(n, np.random.default_rng(3))]
    text = json.dumps({"sets": sets})
    if eta_text is not None:
        start = text.index('"part_eta": [') + len('"part_eta": ')
        text = text[:start] + eta_text + text[text.index("]", start) + 1 :]
    return text.encode()


N = 200_000  # ~1.5 MB of text a feature: several of the stream parser's pieces


def plain(values: list[str]) -> str:
    return "[" + ", ".join(values) + "]"


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("NaN", "NaN is not allowed; values must be finite numbers"),
        ("-Infinity", "-inf is not allowed; values must be finite numbers"),
        (
            "1e39",
            "1e+39 does not fit float32 (|x| <= 3.403e+38), which the model computes in; "
            "send values in the range the model was trained on",
        ),
        ("9" * 400, "inf is not allowed; values must be finite numbers"),
        ("true", "expected a number, found true"),
        ("null", "expected a number, found null"),
        ('"0.5 rad"', 'expected a number, found "0.5 rad"'),
        ("[0.5]", "expected a number, found a list"),
        ("{}", "expected a number, found an object"),
    ],
)
def test_a_bad_entry_deep_in_a_big_list_is_named_by_its_index(entry: str, message: str) -> None:
    k = 150_001  # in a later piece than the first
    values = ["0.25"] * N
    values[k] = entry
    with pytest.raises(BadRequest) as err:
        parse_request(big_jet_body(N, plain(values)), JOB, Limits())
    assert (err.value.status, str(err.value)) == (
        422,
        f"sets[0].features.part_eta[{k}]: {message}",
    )


@pytest.mark.parametrize("entry", ["", "0.5 0.5", "01", "-", "1.5e"])  # "": "1, , 2"
def test_malformed_json_deep_in_a_big_body_is_named_as_json_names_it(entry: str) -> None:
    values = ["0.25"] * N
    values[150_000] = entry
    raw = big_jet_body(N, plain(values))
    with pytest.raises(json.JSONDecodeError) as expected:
        json.loads(raw)
    with pytest.raises(BadRequest) as err:
        parse_request(raw, JOB, Limits())
    assert (err.value.status, str(err.value)) == (422, f"body: not valid JSON ({expected.value})")


@pytest.mark.parametrize("cut", [0.3, 0.5, 0.999])
def test_a_truncated_big_body_is_named_as_json_names_it(cut: float) -> None:
    raw = big_jet_body(N)
    raw = raw[: int(len(raw) * cut)]
    with pytest.raises(json.JSONDecodeError) as expected:
        json.loads(raw)
    with pytest.raises(BadRequest) as err:
        parse_request(raw, JOB, Limits())
    assert (err.value.status, str(err.value)) == (422, f"body: not valid JSON ({expected.value})")


def test_deep_nesting_in_a_big_body_is_named_without_recursing() -> None:
    raw = b'{"sets": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with pytest.raises(BadRequest) as err:
        parse_request(raw, JOB, Limits())
    assert (err.value.status, str(err.value)) == (
        422,
        "sets[0]: expected an object with features, found a list",
    )


def test_the_stream_parser_names_every_pinned_bad_payload_as_the_small_body_path() -> None:
    """tests/serve/test_app.py's bad payloads (small: orjson, or the parser where orjson
    refuses) give the same 422 through the stream parser that big bodies take. Not
    included: pT <= 0 (the transforms' check, after parsing) and 1,500-deep nesting
    (orjson's depth limit; the stream parser never recurses and names the list instead)."""
    from serve_helpers import TEST_LIMITS
    from test_app import BAD_PAYLOADS

    from setpipe.serve._json import parse_sets

    checked = 0
    for payload, message in BAD_PAYLOADS:
        if "log of" in message or "nested too deeply" in message:
            continue
        raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        with pytest.raises(BadRequest) as err:
            parse_sets(raw, JOB, Limits(**TEST_LIMITS))
        assert (err.value.status, str(err.value)) == (422, message)
        checked += 1
    assert checked == len(BAD_PAYLOADS) - 3


def test_the_replica_returns_big_buffers_to_the_os(server: Server) -> None:
    """The replica process starts with glibc's mmap threshold fixed (serve/app.py), so a
    big request's buffers are unmapped when freed instead of kept in growing heaps."""
    pid = httpx.get(f"{server.url}/model", timeout=30).json()["pid"]
    with open(f"/proc/{pid}/environ", "rb") as environ:
        assert b"MALLOC_MMAP_THRESHOLD_=4194304" in environ.read().split(b"\0")
