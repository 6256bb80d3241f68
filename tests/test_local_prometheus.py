"""The load test's local Prometheus (loadtest/prometheus.py): the scrape config it writes, the report's one skip line
when the binary is missing (and nothing else lost), and, with the real `prometheus` binary, a real server scraped
every second whose request count and P90 Prometheus must agree on with the load test."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import pytest
import yaml

from contracts import ContractError, Routes
from loadtest import cli
from loadtest import report as reporting
from loadtest.prometheus import JOB, PrometheusStep, config_document, find_binary, scrape_targets, window_queries, write_config
from tests.fixtures_net import serve_stub
from tests.serving_fixtures import FAST_TRACE, metric_value, start_server

PROMETHEUS = find_binary("prometheus")
needs_prometheus = pytest.mark.skipif(PROMETHEUS is None, reason="no prometheus binary: apt-get install -y prometheus "
                                                                 "(or make prometheus-bin)")


def _routes(tmp_path: Path, servers: Dict[str, str], models: Dict[str, str]) -> Path:
    doc = Routes.model_validate({"base_url": "", "models": {m: {"server": s, "path": f"/predictions/{m}"} for m, s in models.items()},
                                 "servers": {s: {"url": u, "models": [m for m, x in models.items() if x == s]}
                                             for s, u in servers.items()}})
    path = tmp_path / "routes.json"
    path.write_text(doc.model_dump_json())
    return path


# ---- the config ----
def test_the_config_scrapes_each_server_every_second_labelled_by_its_id(tmp_path: Path) -> None:
    targets = scrape_targets({"cpu-0000": "http://127.0.0.1:41001", "cpu-0001": "http://127.0.0.1:41002/"})
    assert targets == {"cpu-0000": "127.0.0.1:41001", "cpu-0001": "127.0.0.1:41002"}
    path = write_config(tmp_path / "prometheus.yml", targets, 1.0)
    doc = yaml.safe_load(path.read_text())
    assert doc == config_document(targets, 1.0)
    assert doc["global"]["scrape_interval"] == "1000ms" and doc["global"]["scrape_timeout"] == "1000ms"
    [job] = doc["scrape_configs"]
    assert job["job_name"] == JOB and job["metrics_path"] == "/metrics"
    assert [(c["targets"], c["labels"]) for c in job["static_configs"]] == [
        (["127.0.0.1:41001"], {"server": "cpu-0000"}), (["127.0.0.1:41002"], {"server": "cpu-0001"})]
    assert not list(tmp_path.glob(".prometheus.yml.*"))  # written atomically: no temporary file left behind
    # The queries select by the same label; a quote in an id cannot break out of the matcher.
    assert 'server="cpu-0000"' in window_queries("cpu-0000", 5001)["p90"]
    assert '[5001ms]' in window_queries("cpu-0000", 5001)["increase"]
    assert 'server="a\\"b"' in window_queries('a"b', 1)["counter"]
    for bad in ("https://127.0.0.1:1", "http://127.0.0.1", "http://127.0.0.1:1/prefix"):
        with pytest.raises(ContractError, match="--prometheus off"):
            scrape_targets({"s": bad})
    with pytest.raises(ContractError, match="at least one server"):
        config_document({})


@pytest.mark.skipif(shutil.which("promtool") is None, reason="no promtool: apt-get install -y prometheus")
def test_promtool_accepts_the_config(tmp_path: Path) -> None:
    path = write_config(tmp_path / "prometheus.yml", {"cpu-0000": "127.0.0.1:41001"})
    done = subprocess.run(["promtool", "check", "config", str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_bucket_of_a_p90() -> None:
    bounds = [0.002, 0.005, 0.01, 0.02]
    assert reporting.bucket_of(12.0, bounds) == (10.0, 20.0)
    assert reporting.bucket_of(10.0, bounds) == (5.0, 10.0)  # buckets are (lower, upper]
    assert reporting.bucket_of(1.0, bounds) == (0.0, 2.0)
    assert reporting.bucket_of(30.0, bounds) == (20.0, None)
    assert reporting.bucket_of(None, bounds) is None and reporting.bucket_of(3.0, []) is None


# ---- without the binary ----
class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        payload = json.dumps({"model": self.path.rsplit("/", 1)[-1], "labels": ["a"], "scores": [1.0]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


@pytest.fixture(scope="module")
def stub() -> Iterator[str]:
    with serve_stub(_Handler) as url:
        yield url


def _run(routes: Path, out: Path, *extra: str) -> int:
    return cli.main(["seq", "open", "--routes", str(routes), "--out", str(out), "--quiet", "--rate", "20", "--duration", "1",
                     "--open-server", "cpu-0000", "--seed", "3", *extra])


def test_a_missing_binary_is_one_skip_line_and_loses_nothing_else(stub: str, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    routes = _routes(tmp_path, {"cpu-0000": stub, "cpu-0001": stub}, {"a": "cpu-0000", "b": "cpu-0001"})
    missing = str(tmp_path / "nowhere" / "prometheus")
    assert _run(routes, tmp_path / "off", "--prometheus", "off") == 0
    capsys.readouterr()
    assert _run(routes, tmp_path / "auto", "--prometheus-bin", missing) == 0  # auto is the default
    err = capsys.readouterr().err
    assert f"Prometheus step skipped: no prometheus binary ({missing!r}" in err and "apt-get install -y prometheus" in err

    off, auto = (json.loads((tmp_path / d / "report.json").read_text()) for d in ("off", "auto"))
    assert "prometheus" not in off["modes"]["open"]
    skipped = auto["modes"]["open"]["prometheus"]
    assert skipped["status"] == "skipped" and skipped["servers"] == [] and "no prometheus binary" in skipped["reason"]
    # Everything else is there as without Prometheus: the same modes, fields, requests (one seeded schedule), rows.
    assert auto["modes"].keys() == off["modes"].keys()
    assert set(auto["modes"]["open"]) - {"prometheus"} == set(off["modes"]["open"])
    for mode in ("seq", "open"):
        assert auto["modes"][mode]["requests"] == off["modes"][mode]["requests"] > 0
        assert auto["modes"][mode]["ok"] == auto["modes"][mode]["requests"]
    assert [r["server"] for r in auto["modes"]["open"]["servers"]] == [r["server"] for r in off["modes"]["open"]["servers"]]
    md_off, md_auto = ((tmp_path / d / "report.md").read_text() for d in ("off", "auto"))
    lines = [line for line in md_auto.splitlines() if line.startswith("Prometheus")]
    assert lines == [f"Prometheus: skipped: {skipped['reason']}."]
    headings = [line for line in md_auto.splitlines() if line.startswith("#")]
    assert headings == [line for line in md_off.splitlines() if line.startswith("#")]
    assert "### Prometheus over the same window" not in md_auto

    # required: a bad input before anything runs, named
    assert _run(routes, tmp_path / "required", "--prometheus", "required", "--prometheus-bin", missing) == 2
    assert "--prometheus required: no prometheus binary" in capsys.readouterr().err
    assert not (tmp_path / "required").exists()


def test_auto_leaves_servers_off_this_machine_to_the_cluster_s_prometheus() -> None:
    step = PrometheusStep("auto", sys.executable, {"cpu-0000": "http://cpu-0000.models.svc.cluster.local:8080"})
    line = step.start()  # an executable exists, but nothing is started for servers elsewhere
    assert line is not None and "not on this machine (cpu-0000.models.svc.cluster.local)" in line
    assert step.prometheus is None and step.outcome["status"] == "skipped"
    with pytest.raises(ContractError, match="--prometheus must be one of"):
        PrometheusStep("sometimes", "prometheus", {})


# ---- with the real binary ----
@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One random bert-tiny classifier traced for cpu: the quickest real model to serve."""
    from tracing import cli as tracing_cli

    base = tmp_path_factory.mktemp("prometheus-store")
    models = base / "models.yaml"
    models.write_text(yaml.safe_dump({"models": [{"id": "tiny", "source": "random:bert-tiny@4", "task": "sequence-classification",
                                                  "sequence_length": 32, "batch_size": 1, "rps": 1.0}]}))
    root = base / "store"
    assert tracing_cli.main(["trace", "--models", str(models), "--processor", "cpu", "--store", root.as_uri(), *FAST_TRACE]) == 0
    return root.as_uri()


def bucket_counts(metrics_text: str, model: str) -> List[Tuple[float, float]]:
    """[(le, cumulative count)] of a model's modelfleet_request_seconds histogram in a /metrics page, summed over
    protocols, in bound order."""
    counts: Dict[float, float] = {}
    for line in metrics_text.splitlines():
        if not line.startswith("modelfleet_request_seconds_bucket{"):
            continue
        head, _, value = line.rpartition(" ")
        labels = dict(part.split("=", 1) for part in head[head.index("{") + 1:-1].split(","))
        labels = {k: v.strip('"') for k, v in labels.items()}
        if labels["model"] == model:
            le = float(labels["le"])
            counts[le] = counts.get(le, 0.0) + float(value)
    return sorted(counts.items())


def interpolated_quantile(q: float, buckets: List[Tuple[float, float]]) -> Tuple[float, Tuple[float, float]]:
    """What histogram_quantile computes from cumulative bucket counts (the value, and the bucket it lies in): the
    first bucket whose count reaches q × total, linearly interpolated from its lower bound (0 for the first)."""
    total = buckets[-1][1]
    rank = q * total
    lower, below = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            return lower + (le - lower) * (rank - below) / (count - below), (lower, le)
        lower, below = le, count
    raise AssertionError("unreachable: the +Inf bucket holds every observation")


@pytest.mark.slow  # a trace, a real server and a real Prometheus
@needs_prometheus
def test_real_prometheus_counts_the_open_loop_and_computes_its_p90_from_exactly_its_window(tiny_store: str, tmp_path: Path) -> None:
    server = start_server(tmp_path / "server", tiny_store, ["tiny"], WORKERS=1, MAX_DELAY_MS=1)
    try:
        reply = server.wait_settled()
        assert reply.status == 200, reply.body
        routes = _routes(tmp_path, {"cpu-0000": server.url("")}, {"tiny": "cpu-0000"})
        # A first request, so the server's series exist before the open loop's window opens (as in the demo, where
        # seq, rnd and bmk come first), and so the window must leave it out.
        assert cli.main(["seq", "--routes", str(routes), "--out", str(tmp_path / "seq"), "--quiet", "--prometheus", "off"]) == 0
        before = bucket_counts(server.get("/metrics").body.decode(), "tiny")
        out = tmp_path / "report"
        rc = cli.main(["open", "--routes", str(routes), "--out", str(out), "--quiet", "--rate", "10", "--duration", "4",
                       "--open-server", "cpu-0000", "--seed", "3", "--prometheus", "required"])
        report: Dict[str, Any] = json.loads((out / "report.json").read_text())
        assert rc == 0, report["modes"]["open"].get("prometheus")
        after_text = server.get("/metrics").body.decode()
        open_mode = report["modes"]["open"]
        p = open_mode["prometheus"]
        assert p["status"] == "ran" and p["scrape_interval_s"] == 1.0 and "version 2." in p["version"]
        [row] = p["servers"]
        sent = open_mode["requests"]
        assert sent >= 20 and open_mode["ok"] == sent and row["requests_answered"] == sent
        assert metric_value(after_text, "modelfleet_requests_total", {"model": "tiny"}) == sent + 1  # with seq's
        # Prometheus counts the open loop's requests and no others: the counter read at the scrapes that bracket the
        # window, and increase() over it.
        assert row["requests_counted"] == sent, row  # exact: the counter itself, read at the two scrapes
        assert abs(row["requests_increase"] - sent) <= 1, row
        assert 4.0 <= row["range_s"] <= 8.0  # the 4 s run, the settle margin and at most a scrape interval each side

        # Its P90 is histogram_quantile's over exactly the open loop's requests: the server's own buckets after the
        # run less those before it (rate() scales every bucket alike, so the quantile is the same).
        after = bucket_counts(after_text, "tiny")
        window = [(le, count - dict(before).get(le, 0.0)) for le, count in after]
        assert window[-1][1] == sent
        expected_s, (lower_s, upper_s) = interpolated_quantile(0.9, window)
        scraped = row["prometheus_p90_ms"]
        assert scraped == pytest.approx(expected_s * 1000.0, rel=1e-3, abs=1e-3), (window, row)
        assert tuple(row["prometheus_bucket_ms"]) == pytest.approx((lower_s * 1000.0, upper_s * 1000.0))

        # Beside the load test's P90: in its bucket, or the one just below (the server's clock runs inside the
        # client's for every request, so its P90 is never the higher, and on a busy machine the client adds ms).
        measured = row["load_test_p90_ms"]
        assert measured == open_mode["latency_ms"]["p90"]
        lower, upper = row["load_test_bucket_ms"]
        assert lower < measured <= upper
        bucket = row["prometheus_bucket_ms"]
        assert bucket[1] == upper or bucket[1] == lower, \
            f"Prometheus P90 {scraped:.2f} ms in {bucket} ms, not in or just below ({lower}, {upper}] ms, the load test's {measured:.2f} ms"
        assert row["ratio"] == pytest.approx(scraped / measured)

        md = (out / "report.md").read_text()
        assert "### Prometheus over the same window" in md and "| " + " | ".join(reporting.PROMETHEUS_COLUMNS) + " |" in md
        assert "interpolates linearly" in md and "LATENCY_BUCKETS" in md
        # the window R the query reaches back over, beside the P90s it gave
        assert f"| {row['server']} | {row['range_s']:.1f} s | {reporting.fmt_ms(measured)} |" in md
    finally:
        server.terminate()
        server.stop()
