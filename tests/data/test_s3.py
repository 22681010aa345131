"""s3:// sources against a real S3-compatible server on loopback (moto, IAM auth on).

The reader, the schema checks, the fingerprint and the read tasks run as they do against
AWS: pyarrow's S3 client, pointed at the server by ``AWS_ENDPOINT_URL_S3``. Ray is started
again for this module with the server's environment (read tasks run in Ray's workers and
take their endpoint and credentials from it), and restarted as the session had it after.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from s3_server import S3Server, s3_server

from setpipe.data import FittedTransforms, iter_set_batches, read_dataset
from setpipe.data.datagen.jets import make_jets
from setpipe.data.fingerprint import fingerprint
from setpipe.errors import DataError
from setpipe.spec.models import DataSpec

BUCKET = "setpipe-jets"


def _restart_ray() -> None:
    import ray
    import ray.data

    ray.shutdown()
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with s3_server() as server, pytest.MonkeyPatch.context() as env:
        for key, value in server.env.items():
            env.setenv(key, value)
        _restart_ray()  # its workers inherit the server's environment
        client = server.client()
        client.create_bucket(Bucket=BUCKET)
        table = make_jets(300, seed=7)
        for i, part in enumerate((table.slice(0, 120), table.slice(120))):
            buf = io.BytesIO()
            pq.write_table(part, buf, row_group_size=50)
            client.put_object(Bucket=BUCKET, Key=f"jets/part-{i}.parquet", Body=buf.getvalue())
        try:
            yield server
        finally:
            env.undo()
            _restart_ray()  # the later modules get a Ray without the server's environment


def spec_for(source: str) -> DataSpec:
    return DataSpec.model_validate(
        {
            "train": source,
            "elements": {
                "layout": "parallel",
                "columns": ["part_pt", "part_eta", "part_phi", "part_pid"],
            },
            "context": ["jet_pt"],
            "label": "label",
        }
    )


def read_all(spec: DataSpec) -> int:
    dataset = read_dataset(spec, "train")
    transforms = FittedTransforms.from_spec(spec)
    return sum(b.num_sets for b in iter_set_batches(dataset, spec, transforms, shuffle=False))


def test_reads_every_set_from_s3(s3: S3Server) -> None:
    spec = spec_for(f"s3://{BUCKET}/jets")
    assert read_all(spec) == 300
    assert read_all(spec_for(f"s3://{BUCKET}/jets/part-*.parquet")) == 300


def test_fingerprint_of_s3_data_changes_when_a_file_does(s3: S3Server) -> None:
    spec = spec_for(f"s3://{BUCKET}/jets")
    before = fingerprint(spec)
    assert fingerprint(spec) == before  # stable
    buf = io.BytesIO()
    pq.write_table(make_jets(10, seed=8), buf)
    s3.client().put_object(Bucket=BUCKET, Key="jets/part-2.parquet", Body=buf.getvalue())
    try:
        assert fingerprint(spec) != before
    finally:
        s3.client().delete_object(Bucket=BUCKET, Key="jets/part-2.parquet")
    assert fingerprint(spec) == before


def test_schema_is_checked_on_s3(s3: S3Server) -> None:
    buf = io.BytesIO()
    pq.write_table(pa.table({"event_id": [1], "label": [0]}), buf)
    s3.client().put_object(Bucket=BUCKET, Key="bad/part-0.parquet", Body=buf.getvalue())
    with pytest.raises(DataError, match=rf"s3://{BUCKET}/bad/part-0.parquet.*part_pt"):
        read_dataset(spec_for(f"s3://{BUCKET}/bad"), "train")


def test_missing_bucket_is_named(s3: S3Server) -> None:
    with pytest.raises(DataError) as err:
        read_dataset(spec_for("s3://no-such-bucket/jets"), "train")
    message = str(err.value)
    assert "s3://no-such-bucket/jets" in message
    assert "bucket no-such-bucket does not exist" in message
    assert "AWS_ENDPOINT_URL_S3" in message  # the fix: which server setpipe asked


def test_bad_credentials_are_named(s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(DataError) as err:
        read_dataset(spec_for(f"s3://{BUCKET}/jets"), "train")
    message = str(err.value)
    assert f"s3://{BUCKET}/jets" in message
    assert "refused the credentials" in message
    assert "AWS_ACCESS_KEY_ID" in message
    assert "not-the-secret" not in message  # never echo a secret


def test_a_file_deleted_mid_read_is_named(s3: S3Server) -> None:
    client = s3.client()
    for i in range(2):
        obj = client.get_object(Bucket=BUCKET, Key=f"jets/part-{i}.parquet")["Body"].read()
        client.put_object(Bucket=BUCKET, Key=f"gone/part-{i}.parquet", Body=obj)
    spec = spec_for(f"s3://{BUCKET}/gone")
    dataset = read_dataset(spec, "train")  # listed and footers checked: both files exist
    client.delete_object(Bucket=BUCKET, Key="gone/part-1.parquet")
    transforms = FittedTransforms.from_spec(spec)
    with pytest.raises(DataError) as err:
        for _ in iter_set_batches(dataset, spec, transforms, shuffle=False):
            pass
    message = str(err.value)
    assert f"s3://{BUCKET}/gone/part-1.parquet" in message
    assert "deleted" in message or "no longer exists" in message

