"""stacks/preflight.py: vCPU quota arithmetic (pure), the no-credentials path for real, and the boto3
path against a moto server on 127.0.0.1 (moto's Service Quotas knows no ec2 quotas: the call fails,
and the report must say it could not look rather than pass)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict

import pytest

from stacks.preflight import (
    EXIT_OK,
    EXIT_SHORT,
    EXIT_UNKNOWN,
    Group,
    compare,
    exit_status,
    quota_family,
    quota_needs,
    report,
)
from tests.fixtures_net import free_port

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
VCPU = {"m5.large": 2, "c5.large": 2, "c5.4xlarge": 16, "g4dn.xlarge": 4, "g5.12xlarge": 48, "inf1.xlarge": 4,
        "inf2.48xlarge": 192}


@pytest.mark.parametrize("itype,family", [
    ("c5.large", "Standard (A, C, D, H, I, M, R, T, Z)"), ("m5.large", "Standard (A, C, D, H, I, M, R, T, Z)"),
    ("i3en.large", "Standard (A, C, D, H, I, M, R, T, Z)"), ("g4dn.xlarge", "G and VT"), ("vt1.3xlarge", "G and VT"),
    ("inf1.xlarge", "Inf"), ("inf2.48xlarge", "Inf"), ("p4d.24xlarge", "P"), ("trn1.2xlarge", "Trn"),
])
def test_quota_family(itype, family):
    assert quota_family(itype) == family


def test_quota_family_refuses_an_unknown_family():
    with pytest.raises(ValueError, match="mac"):
        quota_family("mac1.metal")


def test_needs_per_family_at_desired_and_max():
    groups = [Group("m5.large", 2, 4), Group("c5.4xlarge", 3, 6), Group("g4dn.xlarge", 4, 8),
              Group("g5.12xlarge", 1, 2), Group("inf1.xlarge", 2, 4)]
    needs = {n.family: n for n in quota_needs(groups, VCPU)}
    assert list(needs) == ["Standard (A, C, D, H, I, M, R, T, Z)", "G and VT", "Inf"]
    std, g, inf = needs.values()
    assert (std.quota_code, std.desired_vcpu, std.max_vcpu) == ("L-1216C47A", 2 * 2 + 3 * 16, 4 * 2 + 6 * 16)
    assert (g.quota_code, g.desired_vcpu, g.max_vcpu) == ("L-DB2E81BA", 4 * 4 + 48, 8 * 4 + 96)
    assert (inf.quota_code, inf.desired_vcpu, inf.max_vcpu) == ("L-1945791B", 8, 16)
    with pytest.raises(ValueError, match="vCPU count"):
        quota_needs([Group("c5.9xlarge", 1, 1)], VCPU)


def test_compare_and_exit_status():
    needs = quota_needs([Group("g4dn.xlarge", 4, 8), Group("inf1.xlarge", 2, 4)], VCPU)
    assert exit_status(compare(needs, {"L-DB2E81BA": 32, "L-1945791B": 16})) == EXIT_OK
    short_at_max = compare(needs, {"L-DB2E81BA": 16, "L-1945791B": 16})
    assert [v.status for v in short_at_max] == ["short at max", "ok"] and exit_status(short_at_max) == EXIT_OK
    short = compare(needs, {"L-DB2E81BA": 8, "L-1945791B": 16})
    assert short[0].status == "short" and exit_status(short) == EXIT_SHORT
    text = report("dev", "111111111111", "us-east-1", short, None)
    assert "--quota-code L-DB2E81BA --desired-value 32" in text and "never launch" in text
    unknown = compare(needs, None)
    assert {v.status for v in unknown} == {"unknown"} and exit_status(unknown) == EXIT_UNKNOWN


def _no_aws_env() -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update({"AWS_CONFIG_FILE": "/nonexistent/aws-config", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-creds",
                "AWS_EC2_METADATA_DISABLED": "true"})
    return env


def test_preflight_without_credentials_says_it_could_not_look():
    done = subprocess.run([PY, "-m", "stacks", "preflight", "--env", "dev"], cwd=ROOT, capture_output=True, text=True,
                          env=_no_aws_env(), timeout=120)
    assert done.returncode == EXIT_UNKNOWN, done.stderr
    out = done.stdout
    assert "COULD NOT LOOK: no AWS credentials found" in out
    # The committed dev plan: the system group's m5.large in Standard, the plan's types in their families.
    assert "L-1216C47A" in out and "m5.large: 2 nodes desired, 4 at most" in out
    for line in out.splitlines():
        if line.strip().startswith(("Standard", "G and VT", "Inf")):
            assert line.rstrip().endswith("unknown"), line


@pytest.fixture
def moto_server():
    port = free_port()
    proc = subprocess.Popen([PY, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    try:
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    pytest.fail("moto server did not start")
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_preflight_with_credentials_calls_service_quotas_and_reports_a_failed_call(moto_server):
    env = {**_no_aws_env(), "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_ENDPOINT_URL": moto_server}
    done = subprocess.run([PY, "-m", "stacks", "preflight", "--env", "dev"], cwd=ROOT, capture_output=True, text=True,
                          env=env, timeout=120)
    # moto answers NoSuchResource for ec2 quotas and has no default-quota call for them: a failed read,
    # which must never pass as "fits".
    assert done.returncode == EXIT_UNKNOWN, done.stdout + done.stderr
    assert "COULD NOT LOOK: reading the quotas failed" in done.stdout
    assert "no AWS credentials" not in done.stdout
