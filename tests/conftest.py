"""Shared fixtures: a real moto S3 server on 127.0.0.1 (never a patched boto3) and fake AWS credentials."""
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid

import boto3
import pytest

from tests.fixtures_net import free_port
from tests.fixtures_s3 import BUCKET, CREDENTIALS


@pytest.fixture
def fake_aws(monkeypatch, tmp_path_factory):
    """Fake credentials, and nothing from this machine's AWS configuration."""
    nowhere = tmp_path_factory.getbasetemp() / "no-aws-config"
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                        "AWS_CONFIG_FILE": str(nowhere), "AWS_SHARED_CREDENTIALS_FILE": str(nowhere),
                        "AWS_EC2_METADATA_DISABLED": "true", "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_MAX_ATTEMPTS"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory):
    """A real moto S3 server on a free port, with the test bucket; yields its endpoint URL."""
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                stdout=out, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                pytest.fail(f"moto server exited with {proc.returncode}:\n{log.read_text()}")
            try:
                with urllib.request.urlopen(endpoint + "/", timeout=1):
                    break
            except urllib.error.HTTPError:
                break  # it answers
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"moto server did not answer on {endpoint} within 30 s:\n{log.read_text()}")
                time.sleep(0.05)  # poll interval, bounded by the deadline above
        boto3.client("s3", endpoint_url=endpoint, **CREDENTIALS).create_bucket(Bucket=BUCKET)
        yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def s3_uri(fake_aws, moto_endpoint) -> str:
    """A fresh, empty prefix in the moto bucket, as a store URI."""
    return f"s3://{BUCKET}/runs/{uuid.uuid4().hex}?endpoint_url={moto_endpoint}"
