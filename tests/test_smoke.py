"""The smoke gate (loadtest/smoke.py) against real HTTP servers on 127.0.0.1: servers that come up late (one
that refuses connections until it starts listening, one that answers 503 while it "loads"), and servers that
never come up, whose failure names the server, the last status and error, and what an operator can run."""
from __future__ import annotations

import asyncio
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Dict, Iterator, List

import pytest

from contracts import Routes
from loadtest import cli
from loadtest.client import Client
from loadtest.runner import RequestSpec
from loadtest.smoke import Backoff, failure_lines, namespace_of, smoke, where_to_look
from loadtest.targets import Target
from tests.fixtures_net import free_port


class _Loading(BaseHTTPRequestHandler):
    """503 with the server's JSON error for the first `server.loading` requests, then 200."""

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with self.server.lock:  # type: ignore[attr-defined]
            self.server.seen += 1  # type: ignore[attr-defined]
            loading = self.server.seen <= self.server.loading  # type: ignore[attr-defined]
        status, body = (503, {"error": "model m-a is still loading: retry"}) if loading else (200, {"model": "m-a"})
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *_args: object) -> None:
        pass


def _start(port: int, loading: int) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", port), _Loading)
    server.daemon_threads = True
    server.seen, server.loading, server.lock = 0, loading, threading.Lock()  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server


@pytest.fixture
def servers() -> Iterator[List[ThreadingHTTPServer]]:
    started: List[ThreadingHTTPServer] = []
    yield started
    for s in started:
        s.shutdown()
        s.server_close()


def _routes(tmp_path: Path, urls: Dict[str, str], base_url: str = "") -> Path:
    doc = {"base_url": base_url, "models": {f"m-{sid}": {"server": sid, "path": f"/predictions/m-{sid}"} for sid in urls},
           "servers": {sid: {"url": url, "models": [f"m-{sid}"]} for sid, url in urls.items()}}
    path = tmp_path / "routes.json"
    path.write_text(Routes.model_validate(doc).model_dump_json())
    return path


def test_backoff_doubles_up_to_its_cap() -> None:
    b = Backoff(first_s=1.0, factor=2.0, cap_s=30.0, jitter=0.0)
    assert [b.delay(n) for n in range(1, 8)] == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    import random
    jittered = [Backoff().delay(3, random.Random(i)) for i in range(50)]
    assert all(3.2 <= d <= 4.0 for d in jittered) and len(set(jittered)) > 1
    with pytest.raises(ValueError):
        b.delay(0)


def test_a_loading_server_is_asked_until_it_answers(servers: List[ThreadingHTTPServer]) -> None:
    """Three 503s, then 200: four tries, and the result is a pass."""
    port = free_port()
    servers.append(_start(port, loading=3))
    target = Target("m-a", "s1", f"http://127.0.0.1:{port}/predictions/m-a")

    async def go():
        async with Client() as client:
            loop = asyncio.get_running_loop()
            return await smoke(client, [target], RequestSpec(timeout_s=5), loop.time() + 60,
                               Backoff(first_s=0.01, cap_s=0.05))

    (result,) = asyncio.run(go())
    assert result.ok and result.attempts == 4 and result.detail is None and result.last.status == 200


def test_smoke_waits_for_a_server_that_starts_listening_late(servers: List[ThreadingHTTPServer], tmp_path: Path) -> None:
    """One server answers at once; the other's port refuses connections until it starts, after the first try,
    and then answers 503 once before 200. The run waits for both and passes."""
    early_port, late_port = free_port(), free_port()
    servers.append(_start(early_port, loading=0))
    timer = threading.Timer(0.5, lambda: servers.append(_start(late_port, loading=1)))
    timer.start()
    try:
        routes = _routes(tmp_path, {"s1": f"http://127.0.0.1:{early_port}", "s2": f"http://127.0.0.1:{late_port}"})
        out = tmp_path / "report"
        assert cli.main(["smoke", "--routes", str(routes), "--out", str(out), "--quiet", "--timeout", "5",
                         "--deadline-s", "60"]) == 0
    finally:
        timer.cancel()
    rows = {r["server"]: r for r in json.loads((out / "report.json").read_text())["modes"]["smoke"]}
    assert rows["s1"]["ok"] and rows["s1"]["attempts"] == 1
    assert rows["s2"]["ok"] and rows["s2"]["attempts"] >= 3  # refused at least once, then a 503
    assert rows["s2"]["detail"] is None


def test_a_server_that_never_comes_up_fails_with_its_status_error_and_where_to_look(
        servers: List[ThreadingHTTPServer], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Through a gateway (base_url) to cluster servers: s1 answers, s2 stays at 503. The failure names s2, its
    last status and the server's message, and kubectl commands for its pods in its namespace."""
    gateway_port = free_port()
    servers.append(_start(gateway_port, loading=10**9))
    routes = _routes(tmp_path, {"s2": "http://s2.modelfleet-dev.svc.cluster.local:8080"},
                     base_url=f"http://127.0.0.1:{gateway_port}")
    assert cli.main(["smoke", "--routes", str(routes), "--out", str(tmp_path / "r"), "--quiet", "--deadline-s", "2"]) == 1
    err = capsys.readouterr().err
    (line,) = [x for x in err.splitlines() if x.startswith("FAILED: smoke:")]
    assert "server s2 did not answer m-s2" in line and "last HTTP 503" in line and "still loading" in line
    assert "kubectl -n modelfleet-dev get pods -l modelfleet.io/server=s2" in line
    assert "kubectl -n modelfleet-dev describe pods -l modelfleet.io/server=s2" in line
    (row,) = json.loads((tmp_path / "r" / "report.json").read_text())["modes"]["smoke"]
    assert row["attempts"] >= 2 and not row["ok"] and row["outcome"] == "503"


def test_a_refused_local_server_fails_with_no_status_and_the_deploy_hint(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    routes = _routes(tmp_path, {"s9": dead})
    assert cli.main(["smoke", "--routes", str(routes), "--out", str(tmp_path / "r"), "--quiet", "--deadline-s", "0"]) == 1
    err = capsys.readouterr().err
    assert "server s9 did not answer m-s9 with 2xx after 1 try" in err
    assert "no HTTP status (connect)" in err and "ConnectionRefusedError" in err and "python -m deploy status" in err


def test_where_to_look() -> None:
    assert namespace_of("http://inf1-0000.modelfleet.svc.cluster.local:8080") == "modelfleet"
    assert namespace_of("http://127.0.0.1:8123") is None
    assert where_to_look("cpu-0001", "http://cpu-0001.prod.svc.cluster.local:8080").startswith(
        "kubectl -n prod get pods -l modelfleet.io/server=cpu-0001 -o wide;")
    assert failure_lines([], {}) == []


def test_deadline_must_not_be_negative(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    routes = _routes(tmp_path, {"s1": "http://127.0.0.1:9"})
    assert cli.main(["smoke", "--routes", str(routes), "--deadline-s", "-1", "--quiet"]) == 2
    assert "--deadline-s" in capsys.readouterr().err
