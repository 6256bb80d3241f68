"""`python -m deploy [start] --runtime local|docker|kubernetes --plan plan.json --store URI`, `python -m deploy stop`,
`python -m deploy status`.

Exit status: 0; 1 when a server did not become ready (everything started is stopped) or stop left a process
running; 2 for a bad input or a missing runtime (no Docker engine, no kubectl context); 130 after Ctrl-C.
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Any, Dict, List, Optional, Sequence, Union

from contracts import ContractError, Plan, load
from deploy import docker, kubernetes, local
from deploy.readiness import DeployError, InputError, Probe, RuntimeMissing
from deploy.state import DEFAULT_STATE_DIR, clear_state, read_state

RUNTIMES = ("local", "docker", "kubernetes")
COMMANDS = ("start", "stop", "status")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m deploy", description="Deploy a plan's servers. With no command, start.")
    sub = parser.add_subparsers(dest="command", metavar="{start,stop,status}")
    s = sub.add_parser("start", help="start the plan's servers (the default command)",
                       description="local: one `python -m serving` process per plan server on 127.0.0.1 (one per server "
                                   "whatever its replicas); docker: one container per server; kubernetes: kubectl apply "
                                   "of dist/manifests to the current context. local and docker wait for readiness and write "
                                   "<state-dir>/routes.json for python -m loadtest.")
    s.add_argument("--runtime", choices=RUNTIMES, default="local", help="where the servers run (default local)")
    s.add_argument("--plan", type=Path, help="plan.json (local, docker)")
    s.add_argument("--store", default="file://out/store", help="artifact store the servers read: file://DIR, a folder or "
                                                                "s3://bucket/prefix (default file://out/store)")
    s.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR, help="where the deployment is recorded (default .modelfleet/)")
    s.add_argument("--timeout", type=float, default=300.0, help="seconds for every server to become ready (default 300)")
    s.add_argument("--workers", type=int, default=None, help="local: inference threads per server (default: the cores shared "
                                                            "among the servers, at least 1)")
    s.add_argument("--processor", default=None, help="local: serve these entries instead of each server's processor (e.g. cpu)")
    s.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="local: extra server setting, e.g. MAX_BATCH_SIZE=4 (repeatable)")
    s.add_argument("--routes-out", type=Path, default=None, help="also copy routes.json here")
    s.add_argument("--image", default=docker.DEFAULT_IMAGE, help=f"docker: image, {{processor}} replaced (default {docker.DEFAULT_IMAGE})")
    s.add_argument("--dist", type=Path, default=Path("dist"), help="kubernetes: charts synth output (default dist/)")
    s.add_argument("--namespace", default="modelfleet", help="kubernetes: the servers' namespace, for --wait (default modelfleet)")
    s.add_argument("--wait", type=float, default=None, metavar="SECONDS",
                   help="kubernetes: wait this long for the servers' Deployments to be Available")
    s.add_argument("--quiet", action="store_true", help="no progress display")
    s.set_defaults(func=run_start)
    for name, func, text in (("stop", run_stop, "stop the recorded deployment: SIGTERM, then SIGKILL after --grace seconds"),
                             ("status", run_status, "show the recorded deployment")):
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR, help="default .modelfleet/")
        if name == "stop":
            p.add_argument("--grace", type=float, default=local.SERVER_GRACE_S + 5.0,
                           help=f"seconds between SIGTERM and SIGKILL (default {local.SERVER_GRACE_S + 5.0:g})")
        p.set_defaults(func=func)
    return parser


class Display:
    """rich progress on stderr: one line per server with its readiness."""

    def __init__(self, quiet: bool, servers: Sequence[str]) -> None:
        self.bar = None
        self.tasks: Dict[str, int] = {}
        if quiet:
            return
        from rich.console import Console
        from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self.bar = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(bar_width=10), TimeElapsedColumn(),
                            TextColumn("{task.fields[info]}"), console=Console(stderr=True), refresh_per_second=4)
        for sid in servers:
            self.tasks[sid] = self.bar.add_task(sid, total=1, info="starting")

    def __enter__(self) -> Display:
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()

    def update(self, sid: str, probe: Probe) -> None:
        if self.bar is not None and sid in self.tasks:
            self.bar.update(self.tasks[sid], completed=1 if probe.state == "ready" else 0, info=probe.message[:100])


def _interrupt(signum: int, frame: Optional[FrameType]) -> None:
    raise KeyboardInterrupt  # SIGTERM during start: the same clean-up as Ctrl-C


def parse_env(items: List[str]) -> Dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ContractError(f"--env takes KEY=VALUE, got {item!r}")
        out[key] = value
    return out


def run_start(args: argparse.Namespace) -> int:
    if args.runtime == "kubernetes":
        try:
            kubernetes.deploy(args.dist, args.namespace, args.wait)
        except DeployError as exc:
            print(f"python -m deploy: error: {exc}", file=sys.stderr)
            return 2 if isinstance(exc, RuntimeMissing) else 1
        return 0
    try:
        if args.plan is None:
            raise ContractError(f"--runtime {args.runtime} needs --plan plan.json")
        if args.timeout <= 0:
            raise ContractError(f"--timeout must be a positive number of seconds, got {args.timeout}")
        if args.workers is not None and args.workers < 1:
            raise ContractError(f"--workers must be 1 or more, got {args.workers}")
        plan = load(Plan, args.plan)
        if not plan.servers:
            raise ContractError(f"{args.plan.name}: no servers to deploy")
        extra = parse_env(args.env)
    except ContractError as exc:
        print(f"python -m deploy: error: {exc}", file=sys.stderr)
        return 2
    servers = [s.id for s in plan.servers]
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        with Display(args.quiet, servers) as display:
            if args.runtime == "docker":
                state = docker.start(plan, args.plan, args.state_dir, args.store, args.image, args.timeout, display.update)
            else:
                opts = local.LocalOptions(args.state_dir, args.store, args.timeout, args.workers, args.processor, extra)
                state = local.start(plan, args.plan, opts, display.update)
    except KeyboardInterrupt:
        print("python -m deploy: interrupted: every server started was stopped", file=sys.stderr)
        return 130
    except (RuntimeMissing, InputError) as exc:
        print(f"python -m deploy: error: {exc}", file=sys.stderr)
        return 2
    except DeployError as exc:
        print(f"python -m deploy: error: {exc}\nEvery server started was stopped.", file=sys.stderr)
        return 1
    except ContractError as exc:
        print(f"python -m deploy: error: {exc}", file=sys.stderr)
        return 2
    finally:
        signal.signal(signal.SIGTERM, previous)
    routes = Path(state["routes"])
    if args.routes_out is not None:
        args.routes_out.parent.mkdir(parents=True, exist_ok=True)
        args.routes_out.write_text(routes.read_text())
    for sid, rec in state["servers"].items():
        where = f"pid {rec['pid']}, log {rec['log']}" if "pid" in rec else f"container {rec['container']}"
        print(f"{sid}: {rec['url']} ({len(rec['models'])} models; {where})")
    replicas = sum(s.replicas for s in plan.servers)
    if args.runtime == "local" and replicas > len(plan.servers):
        print(f"note: the plan has {replicas} replicas in all; locally each server runs as one process")
    print(f"ready: {len(servers)} servers; routes: {routes}\n"
          f"next: python -m loadtest --routes {args.routes_out or routes} --plan {args.plan}\n"
          f"stop: python -m deploy stop{' --state-dir ' + str(args.state_dir) if args.state_dir != DEFAULT_STATE_DIR else ''}")
    return 0


def _recorded(args: argparse.Namespace, command: str) -> Union[Dict[str, Any], None, int]:
    """The recorded deployment, None when there is none, or exit code 2 after saying why it is unreadable."""
    try:
        return read_state(args.state_dir)
    except ContractError as exc:
        print(f"python -m deploy {command}: error: {exc}", file=sys.stderr)
        return 2


def run_stop(args: argparse.Namespace) -> int:
    state = _recorded(args, "stop")
    if isinstance(state, int):
        return state
    if state is None:
        print(f"nothing to stop: no deployment recorded in {args.state_dir}")
        return 0
    outcome = docker.stop(state) if state["runtime"] == "docker" else local.stop(state, args.grace)
    for sid, how in outcome.items():
        print(f"{sid}: {how}")
    left = [sid for sid, how in outcome.items() if how.startswith(("still running", "not stopped"))]
    if left:
        print(f"python -m deploy stop: error: still running: {', '.join(left)}", file=sys.stderr)
        return 1
    clear_state(args.state_dir)
    return 0


def run_status(args: argparse.Namespace) -> int:
    state = _recorded(args, "status")
    if isinstance(state, int):
        return state
    if state is None:
        print(f"no deployment recorded in {args.state_dir}")
        return 1
    if state["runtime"] == "local":
        rows = local.status(state)
        print(json.dumps({"runtime": "local", "routes": state["routes"], "servers": rows}, indent=1))
        return 0 if all(r["running"] for r in rows) else 1
    print(json.dumps(state, indent=1))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0] not in COMMANDS and argv[0] not in ("-h", "--help")):
        argv = ["start", *argv]
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)
