"""A real Prometheus beside a local load test: it scrapes the servers the open loop drives, and afterwards says what
its own P90 and request count were over exactly the open loop's window, so the report can put the two side by side.

The scrape config labels each target `server=<id>`, as the cluster's PodMonitor relabels its pods, so the queries
here are the ones that work against the cluster's Prometheus too. The window is bracketed by scrapes: before the
run, the load test waits until Prometheus has scraped every server well after the previous mode's last request
(`settle`); after it, until it has scraped every server again after the last response (`figures`). The query time
is that later scrape, and the range reaches back to the last scrape before the run's start, rounded up by one
millisecond, so the window holds the run's requests and nothing else, and has those two scrapes at its very ends.
Ranges in whole seconds would reach up to a scrape interval further back, and increase() and rate() extrapolate
over any such gap: by 1 s / 7 s = 14 % for a 7 s run, more than a test of "counted within 1" allows.

Only stdlib and contracts here: `loadtest/` may import nothing else of ours (its package docstring), and it also
ships in the serving images, which have no `prometheus` binary (auto mode then skips before starting anything).
"""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import yaml

from contracts import ContractError, write_atomic
from contracts.net import HOST, free_port

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
JOB = "modelfleet"
MODES = ("auto", "off", "required")
SCRAPE_INTERVAL_S = 1.0
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
QUERY_TIMEOUT_S = 10.0
POLL_S = 0.1  # every wait below polls at this interval, bounded by a deadline
PORT_RETRIES = 3  # the free port taken by someone else before Prometheus bound it: try another
# The server counts a request after it has sent the response: a scrape this long after the client saw the last
# response holds it.
SETTLE_S = 0.2
QUANTILE = 0.9
LATENCY_METRIC = "modelfleet_request_seconds"
REQUESTS_METRIC = "modelfleet_requests_total"


class PrometheusError(Exception):
    """Prometheus could not be started, did not scrape, or a query failed; the message says which and what to do."""


# ---- the config ----
def scrape_targets(server_urls: Mapping[str, str]) -> Dict[str, str]:
    """{server id: host:port} from routes.json's server URLs (deploy local records http://127.0.0.1:<port>)."""
    out = {}
    for sid, url in server_urls.items():
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "http" or not parts.hostname or not parts.port or parts.path not in ("", "/"):
            raise ContractError(f"routes.json: servers.{sid}.url {url!r}: a local Prometheus scrapes http://host:port "
                                "(what deploy local writes); give --prometheus off for other targets")
        out[sid] = f"{parts.hostname}:{parts.port}"
    return out


def duration_text(seconds: float) -> str:
    """A Prometheus duration in whole milliseconds ("1000ms"), which every version parses."""
    return f"{max(1, round(seconds * 1000))}ms"


def config_document(targets: Mapping[str, str], interval_s: float = SCRAPE_INTERVAL_S) -> Dict[str, Any]:
    """prometheus.yml: one job, each server a static target labelled server=<id>."""
    if not targets:
        raise ContractError("a local Prometheus needs at least one server to scrape")
    if not interval_s > 0:
        raise ContractError(f"the scrape interval must be a positive number of seconds, got {interval_s}")
    interval = duration_text(interval_s)
    return {
        "global": {"scrape_interval": interval, "scrape_timeout": interval, "evaluation_interval": interval},
        "scrape_configs": [{
            "job_name": JOB, "metrics_path": "/metrics", "scheme": "http",
            "static_configs": [{"targets": [address], "labels": {"server": sid}} for sid, address in targets.items()],
        }],
    }


def write_config(path: Path, targets: Mapping[str, str], interval_s: float = SCRAPE_INTERVAL_S) -> Path:
    return write_atomic(path, yaml.safe_dump(config_document(targets, interval_s), sort_keys=False))


def selector(server: str) -> str:
    """The label matchers of one server's series, the value escaped as PromQL strings are."""
    value = server.replace("\\", "\\\\").replace('"', '\\"')
    return f'{{job="{JOB}",server="{value}"}}'


def window_queries(server: str, range_ms: int) -> Dict[str, str]:
    """The PromQL of `figures`: the P90 the cluster's dashboards use, increase() as a cross-check, the counter
    itself (read at both ends of the window: exact, where increase() extrapolates) and the bucket bounds."""
    sel = selector(server)
    return {
        "p90": f"histogram_quantile({QUANTILE}, sum by (le) (rate({LATENCY_METRIC}_bucket{sel}[{range_ms}ms])))",
        "increase": f"sum(increase({REQUESTS_METRIC}{sel}[{range_ms}ms]))",
        "counter": f"sum({REQUESTS_METRIC}{sel})",
        "buckets": f"sum by (le) ({LATENCY_METRIC}_bucket{sel})",
        "last_scrape": f"timestamp(up{sel})",
    }


def find_binary(name: str) -> Optional[str]:
    """The prometheus executable: `name` as a path, or looked up on PATH; None when there is none."""
    if "/" in name:
        return name if Path(name).is_file() and os.access(name, os.X_OK) else None
    return shutil.which(name)


def binary_version(binary: str) -> str:
    """`prometheus --version`'s first line without its build details: "prometheus, version 2.42.0+ds"."""
    try:
        done = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PrometheusError(f"cannot run {binary} --version: {exc}") from None
    lines = (done.stdout or done.stderr).strip().splitlines()
    return lines[0].split(" (")[0] if lines else "unknown"


# ---- the process ----
class LocalPrometheus:
    """`prometheus` in a subprocess on 127.0.0.1 and a free port, with its config, data and log in a temporary
    folder that `stop` removes. A context manager: it stops whatever happens inside."""

    def __init__(self, binary: str, targets: Mapping[str, str], interval_s: float = SCRAPE_INTERVAL_S,
                 ready_timeout_s: float = READY_TIMEOUT_S) -> None:
        self.binary = binary
        self.targets = dict(targets)
        self.interval_s = interval_s
        self.ready_timeout_s = ready_timeout_s
        self.workdir: Optional[Path] = None
        self.proc: Optional[subprocess.Popen] = None
        self.port = 0
        # Proxies from the environment must not see queries to 127.0.0.1.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def __enter__(self) -> LocalPrometheus:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> LocalPrometheus:
        self.workdir = Path(tempfile.mkdtemp(prefix="modelfleet-prometheus-"))
        config = write_config(self.workdir / "prometheus.yml", self.targets, self.interval_s)
        try:
            for attempt in range(1, PORT_RETRIES + 1):
                self.port = free_port()
                self._spawn(config)
                if self._wait_ready(last_try=attempt == PORT_RETRIES):
                    return self
        except BaseException:
            self.stop()
            raise
        raise AssertionError("unreachable: the last try raises")

    def _spawn(self, config: Path) -> None:
        assert self.workdir is not None
        command = [self.binary, f"--config.file={config}", f"--storage.tsdb.path={self.workdir / 'data'}",
                   f"--web.listen-address={HOST}:{self.port}"]
        with open(self.log_path, "ab") as log:
            try:
                # Its own session: a Ctrl-C in the terminal reaches only the load test, which then stops it.
                self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                             start_new_session=True)
            except OSError as exc:
                raise PrometheusError(f"cannot run {self.binary}: {exc} (install it: apt-get install -y prometheus)") from None

    @property
    def log_path(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "prometheus.log"

    def log_tail(self, lines: int = 5) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:])

    def _wait_ready(self, last_try: bool) -> bool:
        """True once GET /-/ready answers 200; False when the port was taken (try another); raises otherwise."""
        assert self.proc is not None
        deadline = time.monotonic() + self.ready_timeout_s
        while True:
            code = self.proc.poll()
            if code is not None:
                tail = self.log_tail()
                self.proc = None
                if "address already in use" in tail and not last_try:
                    return False
                raise PrometheusError(f"{self.binary} exited with {code} before it was ready on {self.url}: {tail}")
            try:
                with self._opener.open(self.url + "/-/ready", timeout=2) as response:
                    if response.status == 200:
                        return True
            except (OSError, urllib.error.HTTPError):
                pass  # not listening yet, or 503 while it starts
            if time.monotonic() > deadline:
                raise PrometheusError(f"{self.binary} on {self.url} was not ready after {self.ready_timeout_s:g} s: "
                                      f"{self.log_tail()}")
            time.sleep(POLL_S)

    def stop(self) -> None:
        """Terminate, wait, kill on timeout; then remove the temporary folder. Safe to call twice."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    # ---- the HTTP API ----
    def _get(self, path: str, params: Mapping[str, str], what: str) -> Any:
        url = f"{self.url}{path}?{urllib.parse.urlencode(params)}"
        try:
            with self._opener.open(url, timeout=QUERY_TIMEOUT_S) as response:
                body = response.read()
        except urllib.error.HTTPError as exc:
            body = exc.read()
            try:
                detail = json.loads(body)
                message = f"{detail.get('errorType', exc.code)}: {detail.get('error', '')}"
            except ValueError:
                message = f"HTTP {exc.code}: {body[:200]!r}"
            raise PrometheusError(f"Prometheus rejected {what}: {message}") from None
        except OSError as exc:
            raise PrometheusError(f"cannot reach Prometheus at {self.url} for {what}: {exc}") from None
        try:
            data = json.loads(body)
        except ValueError:
            raise PrometheusError(f"Prometheus answered {what} with something other than JSON: {body[:200]!r}") from None
        if data.get("status") != "success":
            raise PrometheusError(f"Prometheus failed {what}: {data.get('errorType')}: {data.get('error')}")
        return data["data"]

    def query(self, expr: str, at: float) -> List[Tuple[Dict[str, str], float]]:
        """An instant query at Unix time `at`: each series' labels and value (NaN as float('nan'))."""
        data = self._get("/api/v1/query", {"query": expr, "time": f"{at:.3f}"}, f"the query {expr!r}")
        if data.get("resultType") == "scalar":
            return [({}, float(data["result"][1]))]
        if data.get("resultType") != "vector":
            raise PrometheusError(f"the query {expr!r} gave a {data.get('resultType')}, not an instant vector")
        return [(item.get("metric", {}), float(item["value"][1])) for item in data["result"]]

    def value(self, expr: str, at: float) -> Optional[float]:
        """The single value of a query that sums to one series; None when it has none (or NaN: nothing to rate)."""
        result = self.query(expr, at)
        if not result or math.isnan(result[0][1]):
            return None
        return result[0][1]

    def scrape_errors(self) -> Dict[str, str]:
        """{server: its target's last scrape error} for targets that are not up."""
        data = self._get("/api/v1/targets", {"state": "active"}, "the list of targets")
        return {t.get("labels", {}).get("server", "?"): t.get("lastError") or t.get("health", "")
                for t in data.get("activeTargets", []) if t.get("health") != "up"}

    # ---- scrapes and windows ----
    def last_scrape(self, server: str, at: float) -> Optional[float]:
        """Unix time of the last scrape of `server` at or before `at` (within Prometheus's 5-minute lookback)."""
        return self.value(window_queries(server, 1)["last_scrape"], at)

    def wait_for_scrapes(self, servers: Sequence[str], after: float, timeout_s: Optional[float] = None) -> Dict[str, float]:
        """Until every server has been scraped after Unix time `after`; each one's first such scrape time."""
        # Prometheus 2.42 applies new targets on a 5 s tick: the first scrape comes up to ~6 s after it starts.
        timeout_s = timeout_s if timeout_s is not None else 5 * self.interval_s + 10
        deadline = time.monotonic() + timeout_s
        while True:
            now = time.time()
            seen = {s: self.last_scrape(s, now) for s in servers}
            if all(t is not None and t > after for t in seen.values()):
                return {s: t for s, t in seen.items() if t is not None}
            if time.monotonic() > deadline:
                late = [s for s, t in seen.items() if t is None or t <= after]
                raise PrometheusError(f"Prometheus did not scrape server(s) {', '.join(late)} within {timeout_s:g} s "
                                      f"(targets {', '.join(self.targets[s] for s in late if s in self.targets)}): "
                                      f"{self.log_tail(3)}")
            time.sleep(POLL_S)

    def settle(self, servers: Sequence[str]) -> None:
        """Before a run: until each server has been scraped after the previous requests, so the last scrape before
        the run (where its window starts) holds all of them and none of the run's."""
        self.wait_for_scrapes(servers, time.time() + SETTLE_S)

    def figures(self, server: str, start: float, end: float) -> Dict[str, Any]:
        """What Prometheus says about `server` over the run from Unix time `start` to `end`: its P90 in ms, the
        request counter's difference between the scrapes that bracket the run, increase() over the same range."""
        t0 = self.last_scrape(server, start)
        if t0 is None:
            raise PrometheusError(f"Prometheus has no scrape of server {server} before the run started")
        t1 = self.wait_for_scrapes([server], end + SETTLE_S)[server]
        # Prometheus stamps samples in whole ms: one more reaches just past t0 and short of the scrape before it.
        range_ms = round((t1 - t0) * 1000) + 1
        q = window_queries(server, range_ms)
        p90 = self.value(q["p90"], t1)
        # A series that did not exist yet at t0 (the server's first requests in the window) counts from 0.
        at_end = self.value(q["counter"], t1)
        counted = at_end - (self.value(q["counter"], t0) or 0.0) if at_end is not None else None
        bounds = sorted(float(labels["le"]) for labels, _ in self.query(q["buckets"], t1)
                        if "le" in labels and labels["le"] != "+Inf")
        out: Dict[str, Any] = {
            "p90_ms": p90 * 1000.0 if p90 is not None else None, "requests_counted": counted,
            "requests_increase": self.value(q["increase"], t1), "time": t1, "first_scrape": t0, "range_s": range_ms / 1000,
            "buckets_s": bounds, "queries": {k: q[k] for k in ("p90", "increase", "counter")},
        }
        if p90 is None:
            errors = self.scrape_errors()
            out["why_none"] = (f"scrapes failed: {errors[server]}" if server in errors
                               else "no requests in the histogram over the window")
        return out


# ---- the load test's step ----
class PrometheusStep:
    """--prometheus auto|off|required for one load test: start (or why not), settle before the open loop, figures
    after it, stop. In auto mode anything that goes wrong is reported and the load test goes on; in required mode
    a missing binary is a bad input (`check`) and any other failure fails the run (the cli's verdict)."""

    def __init__(self, mode: str, binary_name: str, server_urls: Mapping[str, str],
                 interval_s: float = SCRAPE_INTERVAL_S) -> None:
        if mode not in MODES:
            raise ContractError(f"--prometheus must be one of {', '.join(MODES)}, got {mode!r}")
        self.mode = mode
        self.binary_name = binary_name
        self.server_urls = dict(server_urls)
        self.interval_s = interval_s
        self.binary = find_binary(binary_name) if mode != "off" else None
        self.prometheus: Optional[LocalPrometheus] = None
        self.outcome: Dict[str, Any] = {"mode": mode, "status": "off", "reason": "--prometheus off", "servers": {}}
        self.version: Optional[str] = None

    def missing_reason(self) -> str:
        return (f"no prometheus binary ({self.binary_name!r} is not an executable file or on PATH): "
                "install it (apt-get install -y prometheus, or make promtool) or give --prometheus-bin PATH")

    def check(self) -> None:
        """Before anything runs: in required mode, the binary must exist and the targets must be scrapeable."""
        if self.mode == "required":
            if self.binary is None:
                raise ContractError(f"--prometheus required: {self.missing_reason()}")
            scrape_targets(self.server_urls)

    def start(self) -> Optional[str]:
        """Start Prometheus where the mode asks; the line to print when it is skipped (None when it runs or is off)."""
        if self.mode == "off":
            return None
        if self.binary is None:
            return self._skip(self.missing_reason())
        try:
            targets = scrape_targets(self.server_urls)
            remote = sorted({a.rsplit(":", 1)[0] for a in targets.values()} - LOOPBACK)
            if remote and self.mode == "auto":
                # A cluster's servers are scraped by the cluster's Prometheus (the PodMonitor), with these same series.
                return self._skip(f"the servers are not on this machine ({', '.join(remote[:3])}): a local Prometheus "
                                  "scrapes local servers; give --prometheus required to scrape them from here anyway")
            self.version = binary_version(self.binary)
            self.prometheus = LocalPrometheus(self.binary, targets, self.interval_s).start()
        except (PrometheusError, ContractError) as exc:
            self.prometheus = None
            return self._skip(str(exc))
        self.outcome = {"mode": self.mode, "status": "ran", "reason": None, "binary": self.binary,
                        "version": self.version, "scrape_interval_s": self.interval_s, "servers": {}}
        return None

    def _skip(self, reason: str) -> str:
        self.outcome = {"mode": self.mode, "status": "skipped" if self.mode == "auto" else "failed", "reason": reason,
                        "servers": {}}
        return f"Prometheus step {'skipped' if self.mode == 'auto' else 'FAILED'}: {reason}"

    def _fail(self, exc: Exception) -> None:
        self.outcome.update(status="failed", reason=str(exc))

    def settle(self) -> None:
        if self.prometheus is None:
            return
        try:
            self.prometheus.settle(list(self.server_urls))
        except PrometheusError as exc:
            self._fail(exc)

    def after_run(self, start: float, end: float) -> None:
        """The figures of every scraped server over the run (Unix times)."""
        if self.prometheus is None or self.outcome["status"] != "ran":
            return
        try:
            for sid in self.server_urls:
                self.outcome["servers"][sid] = self.prometheus.figures(sid, start, end)
        except PrometheusError as exc:
            self._fail(exc)

    def stop(self) -> None:
        if self.prometheus is not None:
            self.prometheus.stop()
            self.prometheus = None
