"""The two request decoders (orjson for small bodies, the stream parser for big ones) agree."""

from __future__ import annotations

import json

import numpy as np
import orjson
import pytest
import torch
from serve_helpers import REPO

from setpipe.data.request import BadRequest, Limits, sets_to_batch
from setpipe.serve._json import ORJSON_MAX_BYTES, parse_sets
from setpipe.serve.schema import parse_request
from setpipe.spec import load_job

JOB = load_job(REPO / "jobs" / "quickstart.yaml")


def body(n: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    sets = [
        {
            "features": {
                "part_pt": (0.5 + rng.exponential(5.0, k)).round(3).tolist(),
                "part_eta": rng.normal(0, 0.3, k).round(4).tolist(),
                "part_phi": rng.normal(0, 0.3, k).round(4).tolist(),
                "part_pid": rng.choice([22, 211, -211, 130], k).tolist(),  # JSON integers
            },
            "context": {"jet_pt": 400 + k},  # an integer too
        }
        for k in (n, 1, 7)
    ]
    return json.dumps({"sets": sets}).encode()


@pytest.mark.parametrize("n", [50, 10_000])
def test_orjson_and_stream_decoders_give_the_same_batch(n: int) -> None:
    raw = body(n)
    fast = sets_to_batch(orjson.loads(raw)["sets"], JOB, Limits())  # small bodies' path
    slow = parse_sets(raw, JOB, Limits())  # big bodies' path
    assert torch.equal(fast.values, slow.values)
    assert torch.equal(fast.offsets, slow.offsets)
    assert torch.equal(fast.context, slow.context)
    assert fast.values.dtype == torch.float32 and fast.num_sets == 3


def test_body_over_the_orjson_limit_goes_to_the_stream_parser() -> None:
    raw = body(160_000)  # ~5 MB
    assert len(raw) > ORJSON_MAX_BYTES
    assert parse_request(raw, JOB, Limits()).batch.num_elements == 160_008


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ("[1.0, true, 2.0]", "sets[0].features.part_pt[1]: expected a number, found true"),
        ('[1.0, "2.0"]', 'sets[0].features.part_pt[1]: expected a number, found "2.0"'),
        (
            "[1.0, 1e999]",
            "sets[0].features.part_pt[1]: inf is not allowed; values must be finite numbers",
        ),
        ("[1, 99999999999999999999999]", None),  # beyond 64 bits: orjson refuses, json reads
    ],
)
def test_orjson_path_refuses_what_the_stream_path_refuses(values: str, message: str | None) -> None:
    """Strings and booleans are not numbers on either path (numpy alone would turn "2.0"
    into 2.0); what orjson cannot read goes to the parser that names the place."""
    n = values.count(",") + 1
    same = json.dumps([0.5] * n)
    raw = (
        f'{{"sets": [{{"features": {{"part_pt": {values}, "part_eta": {same}, '
        f'"part_phi": {same}, "part_pid": {same}}}, "context": {{"jet_pt": 300}}}}]}}'
    ).encode()
    if message is None:
        assert parse_request(raw, JOB, Limits()).batch.values[1, 0] == pytest.approx(1e23)
        return
    with pytest.raises(BadRequest) as err:
        parse_request(raw, JOB, Limits())
    assert (err.value.status, str(err.value)) == (422, message)


def test_one_request_format_below_the_pyfunc_and_the_server() -> None:
    """The pyfunc's type hint and the server's body model are the one SetInput, and the
    module that defines it loads without torch, MLflow, Ray or the serving code."""
    import subprocess
    import sys
    from typing import get_type_hints

    from setpipe.data.request import SetInput
    from setpipe.serve.schema import PredictRequest
    from setpipe.tracking.pyfunc import SetPyfunc

    assert PredictRequest.model_fields["sets"].annotation == list[SetInput]
    assert get_type_hints(SetPyfunc.predict)["model_input"] == list[SetInput]
    code = (
        "import sys, setpipe.data.request; print(sorted(m for m in sys.modules if m in "
        "('torch', 'mlflow', 'ray') or m.startswith(('setpipe.serve', 'setpipe.tracking'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
