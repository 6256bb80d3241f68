"""The local runtime: one `python -m serving` process per plan server, on 127.0.0.1 and a free port.

One process per server, whatever the plan's replicas: on one machine more copies of the same models would only
compete for the same cores (the report says so). Each process gets the pod contract's environment (SERVER_ID,
MODEL_IDS, STORE_URI, MEMORY_BUDGET_MIB from the plan, PORT, MODEL_CACHE_DIR, PROCESSOR) plus HOST=127.0.0.1 and
WORKERS (default: the machine's cores shared among the servers), starts in its own session (a Ctrl-C in the
terminal reaches only `deploy`, which then stops them in order), and logs to <state-dir>/logs/<server>.log.

routes.json for this machine: `base_url` is "" (there is no gateway), each model's `path` is
/predictions/<model-id>, and each server's `url` is http://127.0.0.1:<port>; the load test sends a model's
requests to its server's url + path when base_url is empty.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional

from contracts import Plan, Server, check_dns_label, write_json_atomic
from contracts.net import HOST, free_port
from contracts.pod import POD_ENV_NAMES, pod_env
from contracts.routes import routes_for
from deploy.readiness import DeployError, InputError, Probe, log_tail, wait_ready
from deploy.state import clear_state, read_state, write_state
from store import FileStore, StoreError, open_store

ROOT = Path(__file__).resolve().parent.parent  # where `python -m serving` is importable
# Pod-contract and tuning variables of this shell must not leak into the servers (each gets its own).
SERVER_ENV = POD_ENV_NAMES + ("HOST", "MAX_BATCH_SIZE", "MAX_DELAY_MS", "QUEUE_SIZE", "REQUEST_TIMEOUT_MS", "MAX_BODY_BYTES",
                              "WORKERS", "STORE_RETRY_MAX_SECONDS", "LOG_LEVEL", "ACCESS_LOG")
SERVER_GRACE_S = 10.0  # the servers' GRACE_SECONDS here: drain time after SIGTERM
PORT_RETRIES = 3  # a free port taken by someone else between choosing and binding: try another


def default_workers(servers: int, cpus: Optional[int] = None) -> int:
    """Inference threads per server: the cores shared among the servers, at least one."""
    cpus = cpus if cpus is not None else len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cpus // max(1, servers))


def server_env(base: Mapping[str, str], server: Server, store_uri: str, port: int, cache_dir: Path, workers: int,
               processor: Optional[str] = None, extra: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """The environment of one server process: this one's, less the pod-contract and tuning variables, plus the
    pod contract's (contracts.pod) and what only this runtime sets (HOST, WORKERS)."""
    env = {k: v for k, v in base.items() if k not in SERVER_ENV}
    env.update(pod_env(server, store_uri, port=port, cache_dir=str(cache_dir), processor=processor,
                       grace_seconds=SERVER_GRACE_S))
    env.update({"HOST": HOST, "WORKERS": str(workers), "PYTHONUNBUFFERED": "1"})
    env.update(extra or {})
    return env


def routes_document(urls: Mapping[str, str], plan: Plan) -> Dict[str, Any]:
    """routes.json for this machine: no gateway (base_url ""), each server's direct URL."""
    return routes_for(plan, "", lambda s: urls[s.id]).model_dump(mode="json")


def normalise_store(uri: str) -> str:
    """A folder path or file://rel/dir becomes an absolute file:// URI (the servers run from the project root);
    an s3:// URI is kept as it is. A URI the store cannot open is a DeployError."""
    try:
        opened = open_store(uri)
    except StoreError as exc:
        raise InputError(f"--store: {exc}") from None
    return opened.root.resolve().as_uri() if isinstance(opened, FileStore) else uri


def check_entries(plan: Plan, store_uri: str, processor: Optional[str] = None) -> None:
    """A file store must hold an entry for every planned model and processor: otherwise one clear error before anything
    starts. (An s3:// store is left to the servers, which wait for it and report each model.)"""
    opened = open_store(store_uri)
    if not isinstance(opened, FileStore):
        return
    if not opened.root.is_dir():
        raise InputError(f"--store {store_uri}: no such folder: trace the models first (python -m tracing trace --store ...)")
    for s in plan.servers:
        for m in s.models:
            try:
                check_dns_label(m)
            except ValueError as exc:
                raise InputError(f"plan: server {s.id}: model id {exc}") from None
    missing = [(s.id, m, processor or s.processor) for s in plan.servers for m in s.models
               if not opened.path(f"models/{m}/{processor or s.processor}.json").is_file()]
    if missing:
        listed = ", ".join(f"{m} ({p}, server {sid})" for sid, m, p in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise InputError(f"the store {store_uri} has no entry for {len(missing)} planned model(s): {listed}{more}: trace them "
                           f"(python -m tracing trace --processor ...) or deploy another plan")


# ---- processes ----
@dataclass
class Started:
    server_id: str
    proc: Optional[subprocess.Popen]
    pid: int
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"


def spawn(server: Server, env: Dict[str, str], port: int, log: Path) -> Started:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        out.write(f"--- deploy: starting {server.id} on {HOST}:{port} at {_now()}\n".encode())
        out.flush()
        proc = subprocess.Popen([sys.executable, "-m", "serving"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    return Started(server.id, proc, proc.pid, port, log)


def process_gone(pid: int, create_time: Optional[float] = None) -> Optional[str]:
    """None while process `pid` runs (and, with `create_time`, is the same process), else why it is not running."""
    try:
        done, status = os.waitpid(pid, os.WNOHANG)  # reaps it where it is our child
        if done == pid:
            return _exit_text(status)
    except ChildProcessError:
        pass
    try:
        import psutil

        p = psutil.Process(pid)
        if create_time is not None and abs(p.create_time() - create_time) > 1.0:
            return "its pid now belongs to another process"
        if p.status() == psutil.STATUS_ZOMBIE:
            return "exited"
    except Exception:  # psutil.NoSuchProcess and friends: gone
        return "exited"
    return None


def _exit_text(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit status {os.WEXITSTATUS(status)}"


def create_time_of(pid: int) -> Optional[float]:
    try:
        import psutil

        return psutil.Process(pid).create_time()
    except Exception:
        return None


def stop_processes(servers: Mapping[str, Mapping[str, Any]], grace_s: float, report: Callable[[str], None] = print,
                   clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> Dict[str, str]:
    """SIGTERM each recorded server (its whole process group), wait up to `grace_s` for all, SIGKILL those left.
    Returns {server: how it ended}."""
    outcome: Dict[str, str] = {}
    running: Dict[str, Mapping[str, Any]] = {}
    for sid, rec in servers.items():
        gone = process_gone(rec["pid"], rec.get("create_time"))
        if gone is not None:
            outcome[sid] = f"was not running ({gone})"
            continue
        _signal(rec["pid"], signal.SIGTERM)
        running[sid] = rec
    deadline = clock() + grace_s
    while running:
        for sid in list(running):
            gone = process_gone(running[sid]["pid"], running[sid].get("create_time"))
            if gone is not None:
                outcome[sid] = f"stopped ({gone})"
                del running[sid]
        if not running:
            break
        if clock() > deadline:
            for sid, rec in running.items():
                _signal(rec["pid"], signal.SIGKILL)
                report(f"{sid} did not stop within {grace_s:g} s of SIGTERM: killed")
            kill_deadline = clock() + 5.0
            while running and clock() < kill_deadline:
                for sid in list(running):
                    if process_gone(running[sid]["pid"], running[sid].get("create_time")) is not None:
                        outcome[sid] = "killed (SIGKILL)"
                        del running[sid]
                sleep(0.05)
            for sid in running:
                outcome[sid] = "still running after SIGKILL"
            break
        sleep(0.05)
    return outcome


def _signal(pid: int, sig: int) -> None:
    """The process group where the server leads one (it was started in its own session), else the process."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass


@contextlib.contextmanager
def ignoring_interrupts() -> Iterator[None]:
    """SIGINT and SIGTERM ignored inside (main thread only; elsewhere signals cannot be set and are not delivered)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# ---- start ----
@dataclass
class LocalOptions:
    state_dir: Path
    store_uri: str
    timeout_s: float = 300.0
    workers: Optional[int] = None
    processor: Optional[str] = None
    extra_env: Optional[Dict[str, str]] = None
    stop_grace_s: float = SERVER_GRACE_S + 5.0


def start(plan: Plan, plan_path: Path, opts: LocalOptions, on_update: Callable[[str, Probe], None] = lambda s, p: None,
          on_spawn: Callable[[Started], None] = lambda s: None) -> Dict[str, Any]:
    """Start every server, wait for all to be ready, write routes.json; returns the state. On any failure or
    interruption (KeyboardInterrupt) everything started is stopped before the exception propagates."""
    existing = read_state(opts.state_dir)
    if existing is not None:
        live = [sid for sid, rec in existing["servers"].items()
                if rec.get("pid") and process_gone(rec["pid"], rec.get("create_time")) is None]
        if live or existing.get("runtime") != "local":
            raise DeployError(f"{opts.state_dir}: a {existing.get('runtime')} deployment is already recorded"
                              f"{' (running: ' + ', '.join(live) + ')' if live else ''}: run python -m deploy stop "
                              f"--state-dir {opts.state_dir} first")
    state_dir = opts.state_dir
    store_uri = normalise_store(opts.store_uri)
    check_entries(plan, store_uri, opts.processor)
    workers = opts.workers or default_workers(len(plan.servers))
    state: Dict[str, Any] = {"runtime": "local", "created_at": _now(), "plan": str(plan_path), "store": store_uri,
                             "routes": str(state_dir / "routes.json"), "workers": workers, "servers": {}}
    started: Dict[str, Started] = {}
    servers = {s.id: s for s in plan.servers}
    attempts: Dict[str, int] = {}

    def launch(server: Server) -> None:
        port = free_port()
        env = server_env(os.environ, server, store_uri, port, (state_dir / "cache" / server.id).resolve(), workers,
                         opts.processor, opts.extra_env)
        s = spawn(server, env, port, (state_dir / "logs" / f"{server.id}.log").resolve())
        started[server.id] = s
        attempts[server.id] = attempts.get(server.id, 0) + 1
        state["servers"][server.id] = {"pid": s.pid, "create_time": create_time_of(s.pid), "port": port, "url": s.url,
                                       "log": str(s.log), "models": list(server.models)}
        write_state(state_dir, state)
        on_spawn(s)

    def alive(sid: str) -> Optional[str]:
        s = started[sid]
        gone = process_gone(s.pid)
        if gone is None:
            return None
        text = _read(s.log)
        if "address already in use" in text.lower() and attempts[sid] < PORT_RETRIES:
            launch(servers[sid])  # lost a race for the port: another one
            urls[sid] = started[sid].url
            return None
        return f"{gone}; last lines of its log:\n{log_tail(text)}\n"

    urls: Dict[str, str] = {}
    try:
        for server in plan.servers:
            launch(server)
            urls[server.id] = started[server.id].url
        wait_ready(urls, alive, opts.timeout_s, on_update, log_of=lambda sid: str(started[sid].log))
    except BaseException:
        with ignoring_interrupts():  # a second Ctrl-C must not leave servers behind: stopping is bounded anyway
            outcome = stop_processes(state["servers"], opts.stop_grace_s, report=lambda m: None)
        left = {sid: rec for sid, rec in state["servers"].items() if outcome.get(sid, "").startswith("still running")}
        if left:  # keep a record of what could not be stopped
            write_state(state_dir, dict(state, servers=left))
        else:
            clear_state(state_dir)
        raise
    routes = routes_document({sid: started[sid].url for sid in servers}, plan)
    write_json_atomic(state_dir / "routes.json", routes)
    state["ready_at"] = _now()
    write_state(state_dir, state)
    return state


def stop(state: Dict[str, Any], grace_s: float, report: Callable[[str], None] = print) -> Dict[str, str]:
    return stop_processes(state["servers"], grace_s, report)


def status(state: Dict[str, Any]) -> List[Dict[str, Any]]:
    rows = []
    for sid, rec in state["servers"].items():
        gone = process_gone(rec["pid"], rec.get("create_time"))
        rows.append({"server": sid, "pid": rec["pid"], "url": rec["url"], "models": len(rec["models"]),
                     "running": gone is None, "detail": gone or "running", "log": rec["log"]})
    return rows


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
