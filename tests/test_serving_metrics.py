"""The server's own metrics over real HTTP: a real `python -m serving` process, scraped at /metrics and read with
prometheus_client's text parser. A model that fails to load counts once in modelfleet_model_load_failures_total,
a request whose body is still arriving shows in modelfleet_inflight_requests{model} until it is answered, and the
memory gauges carry the process's resident memory and its MEMORY_BUDGET_MIB in bytes."""
from __future__ import annotations

import json
import os
import socket
from http.client import HTTPResponse
from typing import Dict, Tuple

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.serving_fixtures import FAST_TRACE, SEQUENCE_LENGTH, ServerProcess, start_server, wait_for

SERVED = "tiny-cls"
MISSING = "not-in-the-store"  # assigned, but the store has no entry for it: it fails at start-up
BUDGET_MIB = 3072
Samples = Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float]


def scrape(server: ServerProcess) -> Samples:
    reply = server.get("/metrics")
    assert reply.status == 200, reply.body
    out: Samples = {}
    for family in text_string_to_metric_families(reply.body.decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def series(samples: Samples, name: str) -> Dict[Tuple[Tuple[str, str], ...], float]:
    return {labels: value for (sample, labels), value in samples.items() if sample == name}


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One bert-tiny classifier traced for cpu, served beside a model the store lacks, with a memory budget."""
    from tracing import cli

    base = tmp_path_factory.mktemp("serving-metrics")
    models = base / "models.yaml"
    spec = {"id": SERVED, "source": "random:bert-tiny@2", "task": "sequence-classification",
            "sequence_length": SEQUENCE_LENGTH, "batch_size": 1, "rps": 1.0}
    models.write_text(yaml.safe_dump({"models": [spec]}), encoding="utf-8")
    store = (base / "store").as_uri()
    assert cli.main(["trace", "--models", str(models), "--processor", "cpu", "--store", store, *FAST_TRACE]) == 0
    proc = start_server(base / "server", store, [SERVED, MISSING], MEMORY_BUDGET_MIB=BUDGET_MIB, WORKERS=1)
    try:
        ready = proc.wait_settled()
        assert ready.status == 200 and ready.json()["status"] == "degraded", ready.body
        yield proc
    finally:
        proc.terminate()
        proc.stop()


def test_a_failed_load_counts_once_for_that_model_only(server):
    samples = scrape(server)
    failures = series(samples, "modelfleet_model_load_failures_total")
    # Both assigned models have the series from the start, so increase() sees the failure as a step from 0.
    assert failures == {(("model", MISSING),): 1.0, (("model", SERVED),): 0.0}, failures
    assert series(samples, "modelfleet_models_failed") == {(): 1.0}
    assert series(samples, "modelfleet_models_loaded") == {(): 1.0}
    # A second scrape later: the failure is counted once, not once per scrape or per readiness check.
    assert server.get("/readyz").status == 200
    assert series(scrape(server), "modelfleet_model_load_failures_total")[(("model", MISSING),)] == 1.0


def test_memory_gauges_are_the_process_rss_and_its_budget_in_bytes(server):
    before = rss_bytes(server.proc.pid)
    samples = scrape(server)
    after = rss_bytes(server.proc.pid)
    assert series(samples, "modelfleet_memory_budget_bytes") == {(): BUDGET_MIB * 2**20}
    rss = series(samples, "modelfleet_resident_memory_bytes")[()]
    # The server's own RSS (a torch process: far above this test's few MiB of difference), read at the scrape.
    assert 0.9 * min(before, after) <= rss <= 1.1 * max(before, after), (rss, before, after)
    assert rss > 50 * 2**20


def _inflight(server: ServerProcess) -> Dict[str, float]:
    return {dict(labels)["model"]: value for labels, value in series(scrape(server), "modelfleet_inflight_requests").items()}


def test_inflight_is_per_model_while_a_request_is_held_and_returns_to_zero(server):
    assert _inflight(server) == {SERVED: 0.0, MISSING: 0.0}
    body = json.dumps({"inputs": ["held back", "then sent"]}).encode()
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    try:
        # Headers and half the body: the server has the request (it counts from arrival) but cannot answer yet.
        sock.sendall(f"POST /predictions/{SERVED} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:5])
        held = wait_for(lambda: (lambda v: v if v.get(SERVED) == 1.0 else None)(_inflight(server)), 30,
                        "the held request to show in modelfleet_inflight_requests", server.log)
        assert held == {SERVED: 1.0, MISSING: 0.0}, held
        sock.sendall(body[5:])
        response = HTTPResponse(sock)
        response.begin()
        assert response.status == 200, response.read()
        response.read()
    finally:
        sock.close()
    assert server.post("/predictions/no-such-model", {"inputs": "x"}).status == 404
    after = _inflight(server)
    # Back to 0 once answered; an id not assigned here is labelled "unknown", never by what the client sent.
    assert after == {SERVED: 0.0, MISSING: 0.0, "unknown": 0.0}, after
    requests = series(scrape(server), "modelfleet_requests_total")
    assert requests[(("code", "200"), ("model", SERVED), ("protocol", "v1"))] == 1.0
