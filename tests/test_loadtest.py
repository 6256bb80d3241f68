"""The load test: its maths against known samples, its HTTP client and every mode against stub servers over real
sockets, smoke's exit code, and the report's columns and plot. (tests/test_deploy.py runs the modes against
real `python -m serving` processes started by the local runtime.)"""
from __future__ import annotations

import asyncio
import json
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Dict, Iterator, List

import pytest

from contracts import ContractError, Routes
from loadtest import cli
from loadtest import report as reporting
from loadtest.client import Client, ProtocolError
from loadtest.stats import Curve, Sample, percentile, percentiles, poisson_schedule, pooled_percentile, random_models, summarise, throughput
from loadtest.targets import resolve
from tests.fixtures_net import free_port, serve_stub


# ---- the maths ----
def test_percentile_is_nearest_rank_on_known_samples() -> None:
    values = [7.0, 3.0, 10.0, 1.0, 5.0, 2.0, 9.0, 4.0, 8.0, 6.0]  # 1..10, shuffled
    assert percentile(values, 0.5) == 5.0  # rank ceil(5) = 5
    assert percentile(values, 0.9) == 9.0  # rank 9, not an interpolated 9.1
    assert percentile(values, 0.95) == 10.0  # rank ceil(9.5) = 10
    assert percentile(values, 0.99) == 10.0
    assert percentile(values, 0.0) == 1.0
    assert percentile(values, 1.0) == 10.0
    assert percentile([42.0], 0.9) == 42.0
    assert percentile(list(range(1, 101)), 0.9) == 90  # 100 values: rank 90
    assert percentile(list(range(1, 1001)), 0.99) == 990
    assert percentiles([1.0, 2.0, 3.0, 4.0]) == {"p50": 2.0, "p90": 4.0, "p95": 4.0, "p99": 4.0}
    with pytest.raises(ValueError):
        percentile([], 0.5)


def test_percentiles_are_pooled_over_all_requests_never_averaged() -> None:
    fast_client = [10.0] * 9 + [100.0]  # its own P90: 10
    slow_client = [50.0] * 10  # its own P90: 50
    average_of_p90s = (percentile(fast_client, 0.9) + percentile(slow_client, 0.9)) / 2
    assert average_of_p90s == 30.0  # what averaging per-client percentiles reports: no request took 30 ms
    pooled = pooled_percentile([fast_client, slow_client], 0.9)
    assert pooled == 50.0  # rank 18 of the 20 pooled latencies
    assert pooled != average_of_p90s
    # summarise pools the samples of every client of a measurement
    samples = [Sample("m", "s", 0.0, v / 1000, 200) for v in fast_client + slow_client]
    assert summarise(samples).latency_ms["p90"] == pytest.approx(50.0)


def test_throughput_and_errors_by_status() -> None:
    ok = [Sample("a", "s1", i * 0.1, i * 0.1 + 0.02, 200) for i in range(10)]
    bad = [Sample("a", "s1", 0.5, 0.6, 503), Sample("b", "s2", 0.5, 0.7, 429), Sample("b", "s2", 0.5, 1.5, None, "timeout"),
           Sample("b", "s2", 0.5, 0.5, 429)]
    s = summarise(ok + bad, window=(0.0, 2.0))
    assert s.requests == 14 and s.ok == 10
    assert s.throughput_rps == pytest.approx(5.0)  # 10 completed in a 2 s window: errors do not count
    assert s.errors == {"429": 2, "503": 1, "timeout": 1}
    assert s.error_rate == pytest.approx(4 / 14)
    assert s.latency_ms["max"] == pytest.approx(20.0)  # percentiles over successful requests only
    assert summarise(ok).wall_s == pytest.approx(0.92)  # default window: first start to last end
    assert throughput(0, 0.0) == 0.0
    assert throughput(30, 1.5) == 20.0
    with pytest.raises(ValueError):
        throughput(-1, 1.0)


def test_poisson_schedule_rates_and_bounds() -> None:
    rates = {"hot": 80.0, "warm": 20.0, "off": 0.0}
    a = poisson_schedule(rates, 100.0, seed=3)
    assert a == poisson_schedule(rates, 100.0, seed=3)  # deterministic for a seed
    assert a != poisson_schedule(rates, 100.0, seed=4)
    assert abs(len(a) - 10_000) < 400  # Poisson(10,000): sd 100
    hot = sum(1 for x in a if x.model == "hot")
    assert abs(hot / len(a) - 0.8) < 0.02
    assert not any(x.model == "off" for x in a)
    assert all(0 <= x.at_s < 100.0 for x in a) and [x.at_s for x in a] == sorted(x.at_s for x in a)
    assert len(poisson_schedule(rates, 100.0, seed=3, max_requests=50)) == 50
    assert poisson_schedule({"a": 0.0}, 10.0, seed=1) == []
    with pytest.raises(ValueError):
        poisson_schedule({"a": -1.0}, 10.0, seed=1)
    picks = random_models(["a", "b", "c"], 300, seed=1)
    assert picks == random_models(["a", "b", "c"], 300, seed=1) and set(picks) == {"a", "b", "c"}


def test_open_rates_scale_or_spread() -> None:
    targets = resolve(_routes({"s1": "http://127.0.0.1:1"}, {"a": "s1", "b": "s1"}))
    assert cli.open_rates(targets, {"a": 3.0, "b": 1.0}, 2.0, None) == {"a": 6.0, "b": 2.0}
    assert cli.open_rates(targets, {"a": 3.0, "b": 1.0}, 1.0, 8.0) == {"a": 6.0, "b": 2.0}
    assert cli.open_rates(targets, {}, 1.0, 8.0) == {"a": 4.0, "b": 4.0}


# ---- targets ----
def _routes(servers: Dict[str, str], models: Dict[str, str], base_url: str = "") -> Routes:
    return Routes.model_validate({
        "base_url": base_url,
        "models": {m: {"server": s, "path": f"/predictions/{m}"} for m, s in models.items()},
        "servers": {s: {"url": url, "models": [m for m, sv in models.items() if sv == s]} for s, url in servers.items()},
    })


def test_targets_resolve_direct_or_through_the_gateway() -> None:
    routes = _routes({"s1": "http://127.0.0.1:9001", "s2": "http://127.0.0.1:9002/"}, {"a": "s1", "b": "s2"})
    assert [t.url for t in resolve(routes)] == ["http://127.0.0.1:9001/predictions/a", "http://127.0.0.1:9002/predictions/b"]
    assert [t.url for t in resolve(routes, "http://gw.example:8080/")] == ["http://gw.example:8080/predictions/a",
                                                                            "http://gw.example:8080/predictions/b"]
    cluster = _routes({"s1": "http://s1.ns.svc.cluster.local:8080"}, {"a": "s1"}, base_url="http://models.internal")
    assert resolve(cluster)[0].url == "http://models.internal/predictions/a"
    assert resolve(cluster, "")[0].url == "http://s1.ns.svc.cluster.local:8080/predictions/a"  # --base-url '' : direct
    with pytest.raises(ContractError, match="not an http"):
        resolve(_routes({"s1": "ftp://x"}, {"a": "s1"}))


# ---- a stub model server over real sockets ----
class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        length = int(self.headers.get("Content-Length", 0))
        body = json.loads(self.rfile.read(length))
        assert "inputs" in body
        model = self.path.rsplit("/", 1)[-1]
        payload = json.dumps({"model": model, "labels": ["a"], "scores": [1.0]}).encode()
        if model.startswith("busy"):
            self._send(429, b'{"error": "queue full"}', {"Retry-After": "1"})
        elif model.startswith("chunked"):
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for part in (payload[:5], payload[5:]):
                self.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
        elif model.startswith("host"):  # echoes the Host header it got
            self._send(200, json.dumps({"model": self.headers["Host"]}).encode())
        elif model.startswith("close"):
            self._send(200, payload, {"Connection": "close"})
            self.close_connection = True
        elif model.startswith("peer"):  # the client's port: one port, one TCP connection
            self._send(200, json.dumps({"model": str(self.client_address[1])}).encode())
        elif model.startswith("garbage"):  # not an HTTP response at all
            self.wfile.write(b"SPAM 200 OK\r\n\r\n")
            self.close_connection = True
        else:
            self._send(200, payload)

    def _send(self, status: int, payload: bytes, headers: Dict[str, str] = {}) -> None:  # noqa: B006 (read only)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(payload)


@pytest.fixture(scope="module")
def stub() -> Iterator[str]:
    with serve_stub(_Handler) as url:
        yield url


def _dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}"  # nobody listens there once free_port returns


def test_client_keep_alive_chunked_close_and_errors(stub: str) -> None:
    async def go() -> List[object]:
        async with Client(max_connections=2) as client:
            out: List[object] = []
            for path in ("ok-1", "ok-1", "chunked-1", "close-1", "ok-1", "busy-1"):
                r = await client.request("POST", f"{stub}/predictions/{path}", b'{"inputs": "x"}')
                out.append((r.status, json.loads(r.body).get("model", r.body.decode())))
            results = await asyncio.gather(*(client.request("POST", f"{stub}/predictions/ok-{i}", b'{"inputs": "x"}') for i in range(8)))
            out.append(sorted({r.status for r in results}))
            try:
                await client.request("POST", f"{_dead_url()}/predictions/x", b"{}", timeout_s=5)
            except OSError as exc:
                out.append(type(exc).__name__)
            async with Client(headers={"host": "models.example", "X-Test": "1"}) as gateway_client:
                r = await gateway_client.request("POST", f"{stub}/predictions/host-1", b'{"inputs": "x"}')
                out.append(json.loads(r.body)["model"])
            async with Client(max_connections=2) as fresh:  # the stub answers with the port each request came from
                ports = []
                for path in ("peer-1", "peer-2", "chunked-1", "peer-3", "close-1", "peer-4"):
                    r = await fresh.request("POST", f"{stub}/predictions/{path}", b'{"inputs": "x"}')
                    ports.append(json.loads(r.body)["model"] if path.startswith("peer") else None)
                out.append([p for p in ports if p is not None])
                try:
                    await fresh.request("POST", f"{stub}/predictions/garbage-1", b'{"inputs": "x"}')
                except ProtocolError as exc:
                    out.append(str(exc))
            return out

    out = asyncio.run(go())
    assert out[:5] == [(200, "ok-1"), (200, "ok-1"), (200, "chunked-1"), (200, "close-1"), (200, "ok-1")]
    assert out[5] == (429, "{\"error\": \"queue full\"}")
    assert out[6] == [200]
    assert out[7] == "ConnectionRefusedError"
    assert out[8] == "models.example"  # a Host header replaces the URL's (a gateway reached by address)
    first, second, third, after_close = out[9]
    assert first == second == third != after_close  # kept alive across requests (chunked too), new after Connection: close
    assert "not an HTTP/1.x status line" in out[10]
    with pytest.raises(ValueError):
        Client(max_connections=0)


def _write_routes(tmp_path: Path, servers: Dict[str, str], models: Dict[str, str]) -> Path:
    path = tmp_path / "routes.json"
    path.write_text(_routes(servers, models).model_dump_json())
    return path


def test_smoke_exit_code_says_whether_every_server_answered(stub: str, tmp_path: Path) -> None:
    up = _write_routes(tmp_path, {"s1": stub, "s2": stub}, {"a": "s1", "b": "s2"})
    assert cli.main(["smoke", "--routes", str(up), "--out", str(tmp_path / "r1"), "--quiet"]) == 0
    down = _write_routes(tmp_path, {"s1": stub, "s2": _dead_url()}, {"a": "s1", "b": "s2", "c": "s2"})
    assert cli.main(["smoke", "--routes", str(down), "--out", str(tmp_path / "r2"), "--quiet", "--timeout", "5",
                     "--deadline-s", "0"]) == 1
    smoke = json.loads((tmp_path / "r2" / "report.json").read_text())["modes"]["smoke"]
    assert [(r["server"], r["ok"], r["outcome"]) for r in smoke] == [("s1", True, "200"), ("s2", False, "connect")]
    assert "FAILED connect" in (tmp_path / "r2" / "report.md").read_text()


def test_every_mode_against_stub_servers_writes_the_report(stub: str, tmp_path: Path) -> None:
    routes = _write_routes(tmp_path, {"cpu-0000": stub, "cpu-0001": stub},
                           {"ok-a": "cpu-0000", "chunked-b": "cpu-0000", "ok-c": "cpu-0001"})
    models = tmp_path / "models.yaml"
    models.write_text("models:\n  - {id: ok-a, rps: 20}\n  - {id: chunked-b, rps: 10}\n  - {id: ok-c, rps: 10}\n")
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(_plan({"cpu-0000": ["ok-a", "chunked-b"], "cpu-0001": ["ok-c"]}, p90=25.0, cost=0.34)))
    out = tmp_path / "report"
    rc = cli.main(["seq", "rnd", "bmk", "open", "--routes", str(routes), "--models", str(models), "--plan", str(plan),
                   "--out", str(out), "--quiet", "--count", "12", "--concurrency", "1,3", "--step-duration", "0.4",
                   "--duration", "1", "--scale", "1", "--seed", "5"])
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    modes = report["modes"]
    assert modes["seq"]["requests"] == 3 and modes["seq"]["ok"] == 3
    assert modes["rnd"]["requests"] == 12
    assert [p["concurrency"] for p in modes["bmk"]] == [1, 3] and all(p["ok"] > 0 for p in modes["bmk"])
    assert modes["open"]["offered_rps"] == pytest.approx(40.0) and modes["open"]["requests"] > 10
    rows = {r["server"]: r for r in modes["open"]["servers"]}
    assert rows["cpu-0000"]["predicted_p90_ms"] == 25.0 and rows["cpu-0000"]["planned_rps"] == 30.0
    assert rows["cpu-0001"]["measured_p90_ms"] > 0 and rows["cpu-0001"]["ratio"] == pytest.approx(rows["cpu-0001"]["measured_p90_ms"] / 25)
    s = report["summary"]
    assert s["models"] == 3 and s["servers"] == 2 and s["cost_per_hour"] == 0.34
    assert s["sequential_ms"]["min"] <= s["sequential_ms"]["max"] and s["random_ms"]["min"] > 0
    assert s["throughput_rps"] == max(p["throughput_rps"] for p in modes["bmk"])
    assert s["p90_under_load_ms"] == modes["open"]["latency_ms"]["p90"]
    assert report["client"]["cpu_ms_per_request"]["bmk"] > 0
    md = (out / "report.md").read_text()
    assert "| " + " | ".join(reporting.BLOG_COLUMNS) + " |" in md
    assert "| " + " | ".join(reporting.SERVER_COLUMNS) + " |" in md
    assert "$0.34" in md and "nearest rank" in md
    png = (out / "latency_throughput.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000


def test_errors_by_status_fail_the_run(stub: str, tmp_path: Path) -> None:
    routes = _write_routes(tmp_path, {"s1": stub}, {"ok-a": "s1", "busy-b": "s1"})
    assert cli.main(["seq", "--routes", str(routes), "--out", str(tmp_path / "r"), "--quiet"]) == 1
    seq = json.loads((tmp_path / "r" / "report.json").read_text())["modes"]["seq"]
    assert seq["errors"] == {"429": 1} and seq["ok"] == 1
    assert cli.main(["seq", "--routes", str(routes), "--out", str(tmp_path / "r"), "--quiet", "--max-error-rate", "0.5"]) == 0


def test_bad_inputs_are_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--routes", str(tmp_path / "missing.json"), "--quiet"]) == 2
    assert "no such file" in capsys.readouterr().err
    routes = _write_routes(tmp_path, {"s1": "http://127.0.0.1:1"}, {"a": "s1"})
    assert cli.main(["open", "--routes", str(routes), "--quiet", "--out", str(tmp_path / "report")]) == 2
    assert "--models" in capsys.readouterr().err
    assert cli.main(["bmk", "--routes", str(routes), "--concurrency", "0", "--quiet"]) == 2
    assert cli.main(["warp", "--routes", str(routes), "--quiet"]) == 2
    assert cli.main(["seq", "--routes", str(routes), "--header", "no-colon", "--quiet"]) == 2
    assert not (tmp_path / "report").exists()


def test_report_from_known_samples_has_the_blog_columns(tmp_path: Path) -> None:
    seq = [Sample("a", "s1", 0.0, 0.012, 200), Sample("b", "s2", 0.1, 0.140, 200)]
    curve = Curve([(1, summarise([Sample("a", "s1", 0, 0.01, 200)] * 10, (0.0, 0.1))),
                   (2, summarise([Sample("a", "s1", 0, 0.02, 200)] * 30, (0.0, 0.2)))])
    results = reporting.Results(models=2, servers=2, seq=seq, rnd=seq[::-1], bmk=curve)
    report = reporting.build(results, None, {"routes": "r.json", "base_url": ""})
    assert report["summary"]["sequential_ms"] == {"min": pytest.approx(12.0), "max": pytest.approx(40.0)}
    assert report["summary"]["throughput_rps"] == pytest.approx(150.0)  # 30 in 0.2 s beats 10 in 0.1 s
    assert report["summary"]["p90_under_load_ms"] == pytest.approx(20.0)
    paths = reporting.write(report, tmp_path)
    assert paths["png"].exists() and not (tmp_path / "plan.png").exists()
    md = paths["md"].read_text()
    assert "12.0–40.0 ms" in md and "150.0 req/s" in md and "– (no --plan)" in md
    picture = tmp_path / "the-plan.png"
    picture.write_bytes(b"\x89PNG not really")
    paths = reporting.write(report, tmp_path / "with-plan", picture)
    assert (tmp_path / "with-plan" / "plan.png").read_bytes() == picture.read_bytes()
    assert "](plan.png)" in paths["md"].read_text()


def _plan(servers: Dict[str, List[str]], p90: float, cost: float) -> dict:
    return {"schema": 1, "inputs": {}, "options": {}, "solver": {}, "instances": {"c5.xlarge": 1}, "cost_per_hour": cost,
            "platform_per_hour": 0.0, "lower_bound_per_hour": cost, "gap": 0.0, "solve_seconds": 0.0, "created_at": "2026-01-01T00:00:00Z",
            "servers": [{"id": sid, "instance_type": "c5.xlarge", "processor": "cpu", "replicas": 1,
                         "placements": [{"instance_index": 0, "device_index": i}], "models": models,
                         "requests": {"cpu_m": 2000, "memory_mib": 1024}, "memory_budget_mib": 512,
                         "predicted": {"utilisation": 0.1, "p90_ms": p90}} for i, (sid, models) in enumerate(servers.items())],
            "profile_sources": {}}


def test_png_figure_writes_only_a_finished_figure_and_leaves_none_open(tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    open_before = len(plt.get_fignums())
    out = tmp_path / "sub" / "p.png"
    with reporting.png_figure(out, (3, 2), dpi=50) as ax:
        ax.plot([0, 1], [1, 0])
    assert out.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    width, height = int.from_bytes(out.read_bytes()[16:20], "big"), int.from_bytes(out.read_bytes()[20:24], "big")
    assert (width, height) == (150, 100)  # figsize x dpi
    broken = tmp_path / "broken.png"
    with pytest.raises(RuntimeError, match="half drawn"), reporting.png_figure(broken, (3, 2)) as ax:
        ax.plot([0, 1], [1, 0])
        raise RuntimeError("half drawn")
    assert not broken.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["sub"]  # no temporary file left
    assert len(plt.get_fignums()) == open_before
