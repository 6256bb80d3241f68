"""`python -m loadtest [MODE ...] --routes routes.json [...]`: the test step.

Modes (any of them, in this order whatever order they are given in):
  smoke  every server (its first model) asked until it answers 2xx, with backoff, for at most --deadline-s; the exit
         code says whether all answered, and each one that did not is named with its last status and error
  seq    every model once, in routes.json's order, one at a time
  rnd    --count models drawn at random (seeded), one at a time
  bmk    closed loop: for each --concurrency N, N clients each sending its next request when the last returns,
         for --step-duration s: the latency-throughput curve
  open   open loop: Poisson arrivals at each model's rps from --models (times --scale, or spread to --rate in all)
         for --duration s; each server's measured P90 against the plan's predicted P90
Default: seq rnd bmk, and open where --models or --rate gives the request rates.

With open, --prometheus auto (the default) also runs a real Prometheus (when the binary is installed) that scrapes
the servers the open loop drives, and the report puts its histogram_quantile P90 over the open loop's window beside
the load test's (loadtest/prometheus.py).

Exit status: 0; 1 when smoke found a server that did not answer, when a mode's error rate exceeds
--max-error-rate, or when no request succeeded; 2 for a bad input (routes.json, plan, catalogue, flag).
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from contracts import ContractError
from loadtest import report as reporting
from loadtest.client import Client, now
from loadtest.prometheus import MODES as PROMETHEUS_MODES
from loadtest.prometheus import PrometheusStep
from loadtest.runner import DEFAULT_CONTEXT, DEFAULT_TEXT, RequestSpec, closed_loop, open_loop, sequential
from loadtest.smoke import failure_lines, smoke
from loadtest.stats import Curve, Sample, poisson_schedule, random_models, summarise
from loadtest.targets import Target, first_per_server, load_plan, load_rates, load_routes, resolve

MODES = ("smoke", "seq", "rnd", "bmk", "open")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m loadtest", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("modes", nargs="*", metavar="MODE", help=f"any of {', '.join(MODES)} (default: seq rnd bmk [open])")
    p.add_argument("--routes", type=Path, required=True, help="routes.json (charts synth for a cluster, deploy local for this machine)")
    p.add_argument("--base-url", default=None,
                   help="override routes.json's base_url (the gateway); '' sends each request straight to its server's url")
    p.add_argument("--models", type=Path, default=None, help="models.yaml: each model's rps, for the open loop")
    p.add_argument("--plan", type=Path, default=None, help="plan.json: $/h and each server's predicted P90")
    p.add_argument("--out", type=Path, default=Path("report"), help="report folder (default report/)")
    p.add_argument("--seed", type=int, default=7, help="seed of rnd, bmk and the open loop's arrivals (default 7)")
    p.add_argument("--count", type=int, default=100, help="rnd: how many random requests (default 100)")
    p.add_argument("--concurrency", default="1,2,4,8", help="bmk: clients per step, comma-separated (default 1,2,4,8)")
    p.add_argument("--step-duration", type=float, default=10.0, help="bmk: seconds per step (default 10)")
    p.add_argument("--scale", type=float, default=1.0, help="open: factor on the catalogue's rps (default 1)")
    p.add_argument("--rate", type=float, default=None,
                   help="open: total req/s, spread over the models in proportion to their rps (uniformly without --models)")
    p.add_argument("--duration", type=float, default=30.0, help="open: seconds of arrivals (default 30)")
    p.add_argument("--open-server", default=None, metavar="ID|auto",
                   help="open: only this server's models get their rates (auto: the plan's busiest one-replica server at "
                        "or below 70%% predicted utilisation), so its pod is sent the rate the plan predicts its P90 at")
    p.add_argument("--prometheus", choices=PROMETHEUS_MODES, default="auto",
                   help="open: a real Prometheus scrapes the open loop's servers every second and the report puts its "
                        "P90 beside the load test's; auto: when the binary is installed (else the report says it was "
                        "skipped and why), required: fail without it (default auto)")
    p.add_argument("--prometheus-bin", default="prometheus", metavar="PATH",
                   help="the prometheus executable, a path or a name on PATH (default prometheus)")
    p.add_argument("--max-requests", type=int, default=100_000, help="most requests of any one mode or bmk step (default 100000)")
    p.add_argument("--time-limit", type=float, default=1800.0, help="seconds for the whole run; modes stop when it passes (default 1800)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per request (default 30)")
    p.add_argument("--deadline-s", type=float, default=300.0,
                   help="smoke: seconds to keep asking a server that does not answer 2xx yet (backoff 1 s doubling to "
                        "30 s); 0 asks each once (default 300)")
    p.add_argument("--max-connections", type=int, default=256, help="open connections per origin at most (default 256)")
    p.add_argument("--max-error-rate", type=float, default=0.01, help="exit 1 when a mode's errors exceed this fraction (default 0.01)")
    p.add_argument("--text", default=DEFAULT_TEXT, help="the input text of every request")
    p.add_argument("--context", default=DEFAULT_CONTEXT,
                   help="the second text of every request (question answering's context; '' sends none)")
    p.add_argument("--header", action="append", default=[], metavar="NAME:VALUE",
                   help="extra header on every request (repeatable); Host:NAME replaces the URL's host name, e.g. to reach "
                        "a gateway by its load balancer's address while its routes match the configured host")
    p.add_argument("--insecure", action="store_true", help="https: do not verify the certificate")
    p.add_argument("--quiet", action="store_true", help="no progress display")
    return p


class Progress:
    """rich progress on stderr (or nothing with --quiet)."""

    def __init__(self, quiet: bool) -> None:
        self.bar = None
        if not quiet:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                                TimeElapsedColumn(), console=Console(stderr=True), refresh_per_second=4)

    def __enter__(self) -> Progress:
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()

    def task(self, description: str, total: Optional[int]) -> Callable[[Sample], None]:
        if self.bar is None:
            return lambda s: None
        bar = self.bar
        task_id = bar.add_task(description, total=total, info="")
        errors = 0

        def tick(sample: Sample) -> None:
            nonlocal errors
            errors += 0 if sample.ok else 1
            bar.update(task_id, advance=1, info=f"{errors} errors" if errors else "")
        return tick

    def print(self, text: str) -> None:
        if self.bar is not None:
            self.bar.console.print(text, markup=False, highlight=False)


def parse_headers(items: Sequence[str]) -> Dict[str, str]:
    out = {}
    for item in items:
        name, sep, value = item.partition(":")
        if not sep or not name.strip() or any(c in item for c in "\r\n"):
            raise ContractError(f"--header takes NAME:VALUE, got {item!r}")
        out[name.strip()] = value.strip()
    return out


def parse_concurrency(text: str) -> List[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ContractError(f"--concurrency must be whole numbers separated by commas, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise ContractError(f"--concurrency must list numbers of 1 or more, got {text!r}")
    return values


def open_rates(targets: Sequence[Target], catalogue: Dict[str, float], scale: float, rate: Optional[float]) -> Dict[str, float]:
    """Per-model req/s for the open loop: the catalogue's rps × scale, or spread to `rate` in all (in proportion
    to the catalogue's rps, uniformly without one)."""
    models = [t.model for t in targets]
    if rate is None:
        return {m: catalogue.get(m, 0.0) * scale for m in models}
    base = {m: catalogue.get(m, 0.0) for m in models} if catalogue else {m: 1.0 for m in models}
    total = sum(base.values())
    return {m: rate * v / total if total > 0 else 0.0 for m, v in base.items()}


async def run(args: argparse.Namespace, modes: List[str], targets: List[Target], rates: Dict[str, float],
              catalogue: Dict[str, float], progress: Progress, server_urls: Optional[Dict[str, str]] = None,
              prometheus: Optional[PrometheusStep] = None) -> reporting.Results:
    results = reporting.Results(models=len(targets), servers=len({t.server for t in targets}))
    spec = RequestSpec(text=args.text, timeout_s=args.timeout, context=args.context or None)
    deadline = time.perf_counter() + args.time_limit
    by_model = {t.model: t for t in targets}
    server_urls = server_urls or {}
    async with Client(max_connections=args.max_connections, verify_tls=not args.insecure, headers=parse_headers(args.header)) as client:
        for mode in modes:
            cpu0 = time.process_time()
            count = 0
            if mode == "smoke":
                chosen = list(first_per_server(targets).values())
                found = await smoke(client, chosen, spec, min(deadline, time.perf_counter() + args.deadline_s),
                                    tick=progress.task("smoke", len(chosen)), seed=args.seed)
                results.smoke = [r.last for r in found]
                results.smoke_tries = {r.target.server: {"attempts": r.attempts, "waited_s": round(r.waited_s, 3),
                                                         "detail": r.detail} for r in found}
                results.smoke_failures = failure_lines(found, server_urls)
                count = sum(r.attempts for r in found)
            elif mode == "seq":
                chosen = targets[: args.max_requests]
                results.seq = await sequential(client, chosen, spec, deadline, progress.task("seq", len(chosen)))
                count = len(results.seq)
                if count < len(targets):
                    results.notes.append(f"seq stopped after {count} of {len(targets)} models (--max-requests or --time-limit)")
            elif mode == "rnd":
                chosen = [by_model[m] for m in random_models(list(by_model), min(args.count, args.max_requests), args.seed)]
                results.rnd = await sequential(client, chosen, spec, deadline, progress.task("rnd", len(chosen)))
                count = len(results.rnd)
            elif mode == "bmk":
                curve = Curve()
                for c in parse_concurrency(args.concurrency):
                    left = deadline - time.perf_counter()
                    if left <= 0:
                        results.notes.append(f"bmk stopped before concurrency {c} (--time-limit)")
                        break
                    samples, window = await closed_loop(client, targets, c, spec, min(args.step_duration, left), args.max_requests,
                                                        args.seed + c, progress.task(f"bmk c={c}", None))
                    curve.points.append((c, summarise(samples, window)))
                    count += len(samples)
                results.bmk = curve
            elif mode == "open":
                duration = max(0.0, min(args.duration, deadline - time.perf_counter()))
                schedule = poisson_schedule(rates, duration, args.seed, args.max_requests)
                if prometheus is not None:  # blocking HTTP polls: off the event loop, which has nothing else to do now
                    await asyncio.to_thread(prometheus.settle)
                unix_offset = time.time() - now()  # the runner's clock to Unix time, which Prometheus's queries take
                samples, window = await open_loop(client, by_model, schedule, spec, drain_s=args.timeout + 1.0,
                                                  tick=progress.task(f"open {sum(rates.values()):.1f} req/s", len(schedule)))
                planned = sum(catalogue.get(m, 0.0) for m in by_model)
                scale = args.scale if args.rate is None else (sum(rates.values()) / planned if planned > 0 else None)
                results.open = reporting.OpenLoopResult(samples, window, scale, duration, rates, catalogue)
                if prometheus is not None:
                    await asyncio.to_thread(prometheus.after_run, window[0] + unix_offset, window[1] + unix_offset)
                count = len(samples)
                if duration < args.duration:
                    results.notes.append(f"open ran {duration:.1f} s of --duration {args.duration:g} s (--time-limit)")
            if count:
                results.cpu_ms_per_request[mode] = (time.process_time() - cpu0) * 1000.0 / count
    return results


def choose_modes(given: Sequence[str], has_rates: bool) -> List[str]:
    unknown = [m for m in given if m not in MODES]
    if unknown:
        raise ContractError(f"unknown mode {unknown[0]!r}: choose from {', '.join(MODES)}")
    if not given:
        given = ["seq", "rnd", "bmk"] + (["open"] if has_rates else [])
    return [m for m in MODES if m in given]


def check_args(args: argparse.Namespace) -> None:
    for name in ("count", "max_requests", "max_connections"):
        if getattr(args, name) < 1:
            raise ContractError(f"--{name.replace('_', '-')} must be 1 or more, got {getattr(args, name)}")
    if not args.deadline_s >= 0:
        raise ContractError(f"--deadline-s must be 0 or more seconds, got {args.deadline_s}")
    for name in ("step_duration", "duration", "time_limit", "timeout", "scale"):
        if not getattr(args, name) > 0:
            raise ContractError(f"--{name.replace('_', '-')} must be a positive number, got {getattr(args, name)}")
    if args.rate is not None and not args.rate > 0:
        raise ContractError(f"--rate must be a positive number of req/s, got {args.rate}")
    if not 0 <= args.max_error_rate <= 1:
        raise ContractError(f"--max-error-rate must be a fraction in [0, 1], got {args.max_error_rate}")


def prometheus_step(args: argparse.Namespace, modes: Sequence[str], targets: Sequence[Target], rates: Dict[str, float],
                    server_urls: Dict[str, str]) -> Optional[PrometheusStep]:
    """The Prometheus step of an open loop (None without one, or with --prometheus off): it scrapes only the servers
    the open loop sends to, so the other servers' scrapes do not load the machine under measurement."""
    if "open" not in modes or args.prometheus == "off":
        return None
    driven = {t.server for t in targets if rates.get(t.model, 0.0) > 0}
    step = PrometheusStep(args.prometheus, args.prometheus_bin, {sid: url for sid, url in server_urls.items() if sid in driven})
    step.check()
    return step


def verdict(results: reporting.Results, max_error_rate: float) -> List[str]:
    """Why the run failed (empty: it passed)."""
    problems = []
    p = results.prometheus
    if p is not None and p.get("mode") == "required":
        if p["status"] != "ran":
            problems.append(f"--prometheus required: {p['reason']}")
        problems += [f"--prometheus required: no P90 from Prometheus for server {sid}: {f.get('why_none')}"
                     for sid, f in p["servers"].items() if f.get("p90_ms") is None]
    if results.smoke is not None:
        problems += results.smoke_failures or [f"smoke: server {s.server} did not answer {s.model} ({s.outcome})"
                                               for s in results.smoke if not s.ok]
    measured: Dict[str, List[Sample]] = {}
    if results.seq:
        measured["seq"] = results.seq
    if results.rnd:
        measured["rnd"] = results.rnd
    if results.open is not None:
        measured["open"] = results.open.samples
    if results.bmk is not None:
        for c, s in results.bmk.points:
            if s.requests and s.error_rate > max_error_rate:
                problems.append(f"bmk c={c}: {s.requests - s.ok} of {s.requests} requests failed {dict(s.errors)}")
    for mode, samples in measured.items():
        s = summarise(samples)
        if s.requests and s.error_rate > max_error_rate:
            problems.append(f"{mode}: {s.requests - s.ok} of {s.requests} requests failed {dict(s.errors)}")
    total_ok = sum(1 for samples in measured.values() for x in samples if x.ok)
    total_ok += sum(s.ok for _, s in results.bmk.points) if results.bmk else 0
    total_ok += sum(1 for x in results.smoke if x.ok) if results.smoke else 0
    if not total_ok:
        problems.append("no request succeeded")
    return problems


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        check_args(args)
        routes = load_routes(args.routes)
        targets = resolve(routes, args.base_url)
        if not targets:
            raise ContractError(f"{args.routes.name}: no models to test")
        plan = load_plan(args.plan)
        catalogue = load_rates(args.models)
        modes = choose_modes(args.modes, bool(catalogue) or args.rate is not None)
        rates = open_rates(targets, catalogue, args.scale, args.rate) if "open" in modes else {}
        open_server = None
        if "open" in modes and args.open_server:
            open_server, rates = reporting.open_server_rates(rates, {t.model: t.server for t in targets}, plan, args.open_server)
        if "open" in modes and not sum(rates.values()) > 0:
            raise ContractError("open: no request rates: give --models models.yaml (with rps for the routes' models) or --rate R")
        if "bmk" in modes:
            parse_concurrency(args.concurrency)
        parse_headers(args.header)
        prometheus = prometheus_step(args, modes, targets, rates, {sid: s.url for sid, s in routes.servers.items()})
    except ContractError as exc:
        print(f"python -m loadtest: error: {exc}", file=sys.stderr)
        return 2
    base = routes.base_url if args.base_url is None else args.base_url
    with Progress(args.quiet) as progress:
        servers = len({t.server for t in targets})
        progress.print(f"load test of {len(targets)} model(s) on {servers} server{'' if servers == 1 else 's'} "
                       f"({'through ' + base if base else 'direct to each server'}): {' '.join(modes)}")
        try:
            skipped = prometheus.start() if prometheus is not None else None
            if skipped:
                print(f"python -m loadtest: {skipped}", file=sys.stderr)
            results = asyncio.run(run(args, modes, targets, rates, catalogue, progress,
                                      {sid: s.url for sid, s in routes.servers.items()}, prometheus))
        except KeyboardInterrupt:
            print("python -m loadtest: interrupted: no report written", file=sys.stderr)
            return 130
        finally:
            if prometheus is not None:
                prometheus.stop()
    if prometheus is not None:
        results.prometheus = prometheus.outcome
    meta = {"created_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "routes": str(args.routes), "base_url": base,
            "plan": str(args.plan) if args.plan else None, "models_file": str(args.models) if args.models else None,
            "modes_run": modes, "seed": args.seed, "open_server": open_server}
    report = reporting.build(results, plan, meta)
    paths = reporting.write(report, args.out, args.plan.with_suffix(".png") if args.plan else None)
    print(reporting.markdown(dict(report, plot=paths["png"].name if "png" in paths else None)).split("\n## Every mode")[0].rstrip())
    print("\nreport: " + ", ".join(str(p) for p in paths.values()))
    problems = verdict(results, args.max_error_rate)
    for problem in problems:
        print(f"FAILED: {problem}", file=sys.stderr)
    return 1 if problems else 0
