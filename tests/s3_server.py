"""A real S3-compatible server on loopback for the tests: moto's, in its own process.

IAM authentication is on (``INITIAL_NO_AUTH_ACTION_COUNT``): the first four calls make a
user, a policy allowing s3:*, its attachment and an access key, unsigned; every call after
them must be signed with that key, so wrong credentials are refused as AWS refuses them.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

REGION = "us-east-1"


@dataclass(frozen=True)
class S3Server:
    url: str
    access_key: str
    secret_key: str

    @property
    def env(self) -> dict[str, str]:
        """What a user sets to point setpipe (pyarrow's S3 client) at this server."""
        return {
            "AWS_ENDPOINT_URL_S3": self.url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_EC2_METADATA_DISABLED": "true",  # never wait on 169.254.169.254
        }

    def client(self, secret_key: str | None = None):  # type: ignore[no-untyped-def]
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
            region_name=REGION,
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def s3_server() -> Iterator[S3Server]:
    import boto3

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = os.environ | {"INITIAL_NO_AUTH_ACTION_COUNT": "4"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto server did not start on {url}") from None
                time.sleep(0.2)
        iam = boto3.client(
            "iam",
            endpoint_url=url,
            aws_access_key_id="setup",
            aws_secret_access_key="setup",
            region_name=REGION,
        )
        iam.create_user(UserName="setpipe")
        policy = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
        }
        arn = iam.create_policy(PolicyName="s3-all", PolicyDocument=json.dumps(policy))
        iam.attach_user_policy(UserName="setpipe", PolicyArn=arn["Policy"]["Arn"])
        key = iam.create_access_key(UserName="setpipe")["AccessKey"]
        yield S3Server(url, key["AccessKeyId"], key["SecretAccessKey"])
    finally:
        proc.terminate()
        proc.wait(timeout=30)
