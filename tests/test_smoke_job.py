"""The in-cluster smoke Job runs `loadtest smoke` with a retry deadline inside the Job's own, so a
fleet still pulling images is waited for and a broken one fails with its servers named."""
from __future__ import annotations

import runpy
import sys

import pytest

from loadtest.cli import build_parser
from stacks.smoke import retry_deadline_s, smoke_job

ROUTES = {"base_url": "http://gw", "models": {"m-1": {"server": "cpu-0000", "path": "/predictions/m-1"}},
          "servers": {"cpu-0000": {"url": "http://cpu-0000.ns.svc.cluster.local:8080", "models": ["m-1"]}}}


def _job(deadline_s: int) -> dict:
    return smoke_job(name="smoke-x", namespace="ns", image="repo/cpu:1", base_url="http://10.0.0.1:80",
                     host="models.example", routes=ROUTES, deadline_s=deadline_s)


@pytest.mark.parametrize("job_s, retry_s", [(600, 540), (900, 840), (60, 30)])
def test_the_retry_deadline_ends_before_the_job_s(job_s, retry_s):
    assert retry_deadline_s(job_s) == retry_s
    job = _job(job_s)
    assert job["spec"]["activeDeadlineSeconds"] == job_s
    env = {e["name"]: e["value"] for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["SMOKE_DEADLINE_S"] == str(retry_s)


def test_the_job_s_program_runs_loadtest_smoke_with_that_deadline(monkeypatch, tmp_path):
    """Run the container's `python -c` program here, with runpy stubbed, and parse the argv it
    builds with the load test's own parser."""
    job = _job(600)
    container = job["spec"]["template"]["spec"]["containers"][0]
    program = container["command"][2]
    for e in container["env"]:
        monkeypatch.setenv(e["name"], e["value"])
    seen = {}
    monkeypatch.setattr(runpy, "run_module", lambda *a, **k: seen.setdefault("argv", list(sys.argv)))
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    # The program writes /tmp/routes.json, as in the Job's emptyDir: point it at this test's folder.
    exec(compile(program.replace("/tmp/", f"{tmp_path}/"), "smoke-job", "exec"), {})
    args = build_parser().parse_args(seen["argv"][1:])
    assert args.deadline_s == 540.0
    assert "smoke" in seen["argv"]
