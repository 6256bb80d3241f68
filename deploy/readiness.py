"""Waiting for servers to become ready: poll each one's /readyz (serving/app.py) until every one is ready, one
fails, or the deadline passes. Never sleeps longer than the poll interval; every wait has a deadline."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from http.client import HTTPConnection
from typing import Callable, Dict, List, Optional
from urllib.parse import urlsplit

POLL_S = 0.2


class DeployError(Exception):
    """A deployment step failed; the message says which server, why, and where its log is."""


class InputError(DeployError):
    """A bad input found before anything started: the store cannot be opened or lacks planned models' entries, or the
    plan names a model id that is no DNS label."""


class RuntimeMissing(DeployError):
    """The runtime asked for is not there (no Docker engine, no kubectl or context): nothing was started."""


@dataclass(frozen=True)
class Probe:
    """One /readyz answer: state is ready, loading (or not answering yet), or failed."""

    state: str
    message: str


def probe(url: str, timeout_s: float = 2.0) -> Probe:
    """GET url/readyz. Not answering yet counts as loading (the process may still be importing)."""
    parts = urlsplit(url)
    conn = HTTPConnection(parts.hostname, parts.port, timeout=timeout_s)
    try:
        conn.request("GET", "/readyz")
        response = conn.getresponse()
        body = response.read()
        status = response.status
    except OSError as exc:
        return Probe("loading", f"not answering yet ({exc.__class__.__name__})")
    finally:
        conn.close()
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        data = {}
    return classify(status, data if isinstance(data, dict) else {})


def classify(status: int, data: Dict[str, object]) -> Probe:
    """/readyz's answer as ready / loading / failed. A degraded server (some of its models failed to load) is a
    failed deployment: the plan put those models there."""
    state = str(data.get("status", ""))
    message = str(data.get("message", "")) or f"/readyz answered {status}"
    failed = data.get("failed")
    if isinstance(failed, dict) and failed:
        reasons = "; ".join(f"{m}: {why}" for m, why in list(failed.items())[:5])
        message = f"{message} [{reasons}]"
    if status == 200 and state == "ready":
        return Probe("ready", message)
    if state in ("degraded", "failed", "shutting down"):
        return Probe("failed", message)
    if status == 200:  # an unknown 200: treat as ready only if it says so
        return Probe("ready" if state in ("", "ok") else "loading", message)
    return Probe("loading", message)


def wait_ready(urls: Dict[str, str], alive: Callable[[str], Optional[str]], timeout_s: float,
               on_update: Callable[[str, Probe], None] = lambda sid, p: None, log_of: Callable[[str], str] = lambda sid: "",
               clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> None:
    """Until every server in `urls` ({server: base url}) is ready. `alive(server)` returns None while the server's
    process or container runs, else why it is gone. Raises DeployError naming the first server that failed or
    died, or those still not ready at the deadline."""
    deadline = clock() + timeout_s
    pending: List[str] = list(urls)
    last: Dict[str, Probe] = {}
    while pending:
        still: List[str] = []
        for sid in pending:
            gone = alive(sid)
            if gone is not None:
                raise DeployError(f"server {sid} exited before it was ready ({gone}); see its log {log_of(sid)}")
            p = probe(urls[sid])
            if p != last.get(sid):
                on_update(sid, p)
            last[sid] = p
            if p.state == "failed":
                raise DeployError(f"server {sid} did not become ready: {p.message}; see its log {log_of(sid)}")
            if p.state != "ready":
                still.append(sid)
        pending = still
        if not pending:
            return
        if clock() > deadline:
            waiting = "; ".join(f"{sid} ({last[sid].message}; log {log_of(sid)})" for sid in pending)
            raise DeployError(f"not ready within {timeout_s:g} s: {waiting}")
        sleep(POLL_S)


def log_tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])
