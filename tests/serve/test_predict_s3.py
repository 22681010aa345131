"""`setpipe predict` against a real S3-compatible server on loopback (moto, IAM auth on).

Each case runs the command as a user does, in its own process with the server's endpoint and
credentials in its environment (its local Ray's workers inherit them), so the session's Ray
is left as it is. Input and output are both s3:// URIs; the predictions must equal those of
the same model on a local copy of the same files.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from s3_server import REGION, S3Server, s3_server
from serve_helpers import REPO, Registered

from setpipe.cli import main

BUCKET = "setpipe-predict"


@pytest.fixture(scope="module")
def s3(registered: Registered) -> Iterator[S3Server]:
    with s3_server() as server:
        client = server.client()
        client.create_bucket(Bucket=BUCKET)
        for path in sorted((registered.data_dir / "test").glob("*.parquet")):
            client.put_object(Bucket=BUCKET, Key=f"test/{path.name}", Body=path.read_bytes())
        yield server


def predict(registered: Registered, s3: S3Server, *args: str, secret: str | None = None):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "AWS_"))}
    env |= s3.env
    if secret is not None:
        env["AWS_SECRET_ACCESS_KEY"] = secret
    command = [sys.executable, "-m", "setpipe", "predict", f"models:/{registered.name}@champion"]
    return subprocess.run(
        [*command, "--tracking-uri", registered.tracking_uri, *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )


def s3_fs(s3: S3Server) -> pafs.S3FileSystem:
    return pafs.S3FileSystem(
        access_key=s3.access_key,
        secret_key=s3.secret_key,
        endpoint_override=s3.url,
        region=REGION,
    )


def test_predict_reads_and_writes_s3(registered: Registered, s3: S3Server, tmp_path: Path) -> None:
    done = predict(
        registered, s3, "--input", f"s3://{BUCKET}/test", "--output", f"s3://{BUCKET}/preds",
        "--keep", "jet_pt",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"100 predictions from {registered.name}" in done.stdout
    assert f"written to s3://{BUCKET}/preds" in done.stdout
    fs = s3_fs(s3)
    files = [
        info.path
        for info in fs.get_file_info(pafs.FileSelector(f"{BUCKET}/preds", recursive=True))
        if info.path.endswith(".parquet")
    ]
    remote = pq.read_table(files, filesystem=fs).to_pandas().set_index("event_id").sort_index()

    local_out = tmp_path / "local"
    rc = main(
        [
            "predict", f"models:/{registered.name}@champion",
            "--input", str(registered.data_dir / "test"), "--output", str(local_out),
            "--tracking-uri", registered.tracking_uri, "--keep", "jet_pt",
        ]
    )  # fmt: skip
    assert rc == 0
    local = pq.read_table(local_out).to_pandas().set_index("event_id").sort_index()
    assert list(remote.columns) == list(local.columns) == ["jet_pt", "prob_0", "prob_1", "label"]
    assert list(remote.index) == list(local.index) and len(remote) == 100
    np.testing.assert_array_equal(remote["label"], local["label"])
    np.testing.assert_allclose(remote[["prob_0", "prob_1"]], local[["prob_0", "prob_1"]], rtol=1e-6)


def _refused(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 1, (done.returncode, done.stderr[-3000:])
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    return done.stderr


def test_predict_names_a_missing_input_bucket(registered: Registered, s3: S3Server) -> None:
    err = _refused(
        predict(
            registered, s3, "--input", "s3://no-such-bucket/test", "--output", f"s3://{BUCKET}/x"
        )
    )
    assert "s3://no-such-bucket/test" in err
    assert "bucket no-such-bucket does not exist" in err
    assert "AWS_ENDPOINT_URL_S3" in err


def test_predict_names_a_missing_output_bucket(registered: Registered, s3: S3Server) -> None:
    err = _refused(
        predict(registered, s3, "--input", f"s3://{BUCKET}/test", "--output", "s3://no-such-out/p")
    )
    assert "--output s3://no-such-out/p" in err
    assert "bucket no-such-out does not exist" in err


def test_predict_names_refused_credentials(registered: Registered, s3: S3Server) -> None:
    done = predict(
        registered, s3, "--input", f"s3://{BUCKET}/test", "--output", f"s3://{BUCKET}/y",
        secret="not-the-secret",
    )  # fmt: skip
    err = _refused(done)
    assert f"s3://{BUCKET}/test" in err
    assert "refused the credentials" in err
    assert "not-the-secret" not in err + done.stdout
