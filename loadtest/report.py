"""The report: report.json (everything), report.md (the blog's table and the details) and latency_throughput.png.

The blog's columns: models, sequential response range (min–max ms over `seq`), random response range
(min–max over `rnd`), throughput (req/s: the best closed-loop step of `bmk`, else what `open` completed), P90
under load (the open loop's pooled P90, else the P90 of the bmk step with the best throughput), $/h (the plan's
cost_per_hour). Then the plan's predicted P90 per server against the P90 measured in the open loop, where the
rate a pod was sent is the rate the plan predicted at. Where a local Prometheus scraped the open loop's servers
(loadtest/prometheus.py), its histogram_quantile P90 over the same window beside the load test's.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

from contracts import ContractError, Plan, write_atomic, write_json_atomic
from loadtest.stats import Curve, Sample, Summary, by_key, summarise

BLOG_COLUMNS = ("models", "sequential response range", "random response range", "throughput", "P90 under load", "$/h")
SERVER_COLUMNS = ("server", "models", "replicas (plan)", "planned req/s", "offered req/s", "req/s per pod: planned, sent",
                  "requests", "errors", "predicted P90", "measured P90", "measured / predicted")
# The plan predicts each pod's P90 at its planned rate only (it carries no service times to predict at another):
# a server is compared only where each of its pods was sent that rate, within this fraction.
RATE_MATCH = 0.1
# --open-server auto: a server whose pod runs busy enough for queueing to show, short of saturation.
AUTO_MAX_UTILISATION = 0.7
DEFINITIONS = {
    "percentile": "nearest rank over all successful requests of a measurement, pooled (the value at rank ceil(q*n) "
                  "of the sorted latencies); never an average of per-client or per-window percentiles",
    "latency": "from when the request was due (open loop: its scheduled Poisson arrival; otherwise when it was sent) "
               "to the last byte of the response",
    "throughput": "successful (2xx) requests / wall time of the measured window (its start to the last completion)",
    "errors": "by HTTP status, or timeout / connect / protocol / unfinished without one",
    "client_cpu_ms_per_request": "this process's CPU time during a mode / its requests: the load generator's own cost "
                                 "per request (an upper bound: it includes the progress display)",
}


@dataclass
class OpenLoopResult:
    samples: List[Sample]
    window: Tuple[float, float]
    scale: Optional[float]  # offered / planned rates (None without planned rates)
    duration_s: float
    offered_rps: Dict[str, float]  # per model, this run
    planned_rps: Dict[str, float]  # per model, the catalogue's (unscaled)


@dataclass
class Results:
    """What the modes produced; None for a mode that did not run."""

    models: int
    servers: int
    seq: Optional[List[Sample]] = None
    rnd: Optional[List[Sample]] = None
    bmk: Optional[Curve] = None
    open: Optional[OpenLoopResult] = None
    smoke: Optional[List[Sample]] = None  # each server's last try
    smoke_tries: Dict[str, Dict[str, Any]] = field(default_factory=dict)  # per server: attempts, waited_s, detail
    smoke_failures: List[str] = field(default_factory=list)  # loadtest.smoke.failure_lines
    cpu_ms_per_request: Dict[str, float] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)
    # loadtest.prometheus.PrometheusStep.outcome: status, reason and per server the figures over the open loop
    prometheus: Optional[Dict[str, Any]] = None


def fmt_ms(value: Optional[float]) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.1f} ms" if value < 100 else f"{value:.0f} ms"


def _scale(scale: Optional[float]) -> str:
    return "--rate (no planned rates)" if scale is None else f"{scale:g} × the catalogue's rates"


def pod_rates(offered_rps: float, planned_rps: float, replicas: int, shared_by_replicas: bool) -> Tuple[float, float]:
    """(sent, planned) req/s per pod. The plan shares a server's traffic among its replicas; a run that is not
    (deploy local: one process per server whatever its replicas) sends each process all of it."""
    replicas = max(1, replicas)
    return (offered_rps / replicas if shared_by_replicas else offered_rps), planned_rps / replicas


def rates_match(sent: float, planned: float) -> bool:
    return planned > 0 and abs(sent / planned - 1.0) <= RATE_MATCH


def server_rows(result: OpenLoopResult, plan: Optional[Plan], shared_by_replicas: bool = True) -> List[Dict[str, Any]]:
    """Per server: the open loop's pooled P90 of its requests against the plan's predicted P90, compared (a ratio)
    only where its pods were sent the rate the prediction is for."""
    groups = by_key(result.samples, "server")
    planned_servers = {s.id: s for s in plan.servers} if plan is not None else {}
    server_ids = list(planned_servers) or list(groups)
    server_ids += [s for s in groups if s not in server_ids]
    rows = []
    wall = max(0.0, result.window[1] - result.window[0])
    for sid in server_ids:
        samples = groups.get(sid, [])
        summary = summarise(samples, result.window) if samples else None
        server = planned_servers.get(sid)
        models = list(server.models) if server else sorted({s.model for s in samples})
        predicted = server.predicted.p90_ms if server else None
        measured = summary.latency_ms.get("p90") if summary and summary.latency_ms else None
        planned = sum(result.planned_rps.get(m, 0.0) for m in models)
        offered = sum(result.offered_rps.get(m, 0.0) for m in models)
        sent_pod, planned_pod = pod_rates(offered, planned, server.replicas if server else 1, shared_by_replicas)
        compared = measured is not None and bool(predicted) and rates_match(sent_pod, planned_pod)
        rows.append({
            "server": sid, "models": len(models), "replicas": server.replicas if server else None,
            "planned_rps": planned, "offered_rps": offered, "pod_planned_rps": planned_pod, "pod_sent_rps": sent_pod,
            "requests": summary.requests if summary else 0, "errors": summary.requests - summary.ok if summary else 0,
            "predicted_p90_ms": predicted, "measured_p90_ms": measured, "compared": compared,
            "ratio": measured / predicted if compared else None,
            "throughput_rps": (summary.ok / wall if wall > 0 else 0.0) if summary else 0.0,
            "latency_ms": summary.latency_ms if summary else {},
        })
    return rows


def bucket_of(value_ms: Optional[float], bounds_s: List[float]) -> Optional[Tuple[float, Optional[float]]]:
    """The histogram bucket (lower, upper] in ms that holds `value_ms`; upper None above the last finite bound."""
    if value_ms is None or not bounds_s:
        return None
    lower = 0.0
    for bound in sorted(bounds_s):
        if value_ms <= bound * 1000.0:
            return lower, bound * 1000.0
        lower = bound * 1000.0
    return lower, None


def prometheus_rows(outcome: Dict[str, Any], result: OpenLoopResult) -> List[Dict[str, Any]]:
    """Per scraped server: the load test's P90 of its open-loop requests beside Prometheus's over the same window,
    and the requests each side counted (the load test: those the server answered with any status)."""
    groups = by_key(result.samples, "server")
    rows = []
    for sid, figures in outcome.get("servers", {}).items():
        samples = groups.get(sid, [])
        summary = summarise(samples, result.window) if samples else None
        measured = summary.latency_ms.get("p90") if summary and summary.latency_ms else None
        scraped = figures.get("p90_ms")
        rows.append({
            "server": sid, "load_test_p90_ms": measured, "prometheus_p90_ms": scraped,
            "ratio": scraped / measured if scraped is not None and measured else None,
            "load_test_bucket_ms": bucket_of(measured, figures.get("buckets_s", [])),
            "prometheus_bucket_ms": bucket_of(scraped, figures.get("buckets_s", [])),
            "requests_answered": sum(1 for x in samples if x.status is not None),
            "requests_counted": figures.get("requests_counted"), "requests_increase": figures.get("requests_increase"),
            "range_s": figures.get("range_s"), "time": figures.get("time"), "first_scrape": figures.get("first_scrape"),
            "why_none": figures.get("why_none"), "queries": figures.get("queries", {}),
        })
    return rows


def open_server_rates(rates: Dict[str, float], server_of: Dict[str, str], plan: Optional[Plan],
                      choice: str) -> Tuple[str, Dict[str, float]]:
    """--open-server: the open loop's rates for one server's models only (the others 0). `choice` is a server id, or
    `auto`: of the plan's one-replica servers (one local process is one pod), the busiest whose predicted utilisation
    is at most AUTO_MAX_UTILISATION, else the least busy."""
    if choice == "auto":
        if plan is None:
            raise ContractError("--open-server auto chooses from the plan's servers: give --plan plan.json, or name a server")
        single = [s for s in plan.servers if s.replicas == 1 and any(server_of.get(m) == s.id for m in s.models)]
        if not single:
            raise ContractError("--open-server auto: the plan has no server of one replica among the routes: name a server")
        fitting = [s for s in single if s.predicted.utilisation <= AUTO_MAX_UTILISATION]
        chosen = (max(fitting, key=lambda s: (s.predicted.utilisation, s.id)) if fitting
                  else min(single, key=lambda s: (s.predicted.utilisation, s.id))).id
    else:
        chosen = choice
        if chosen not in set(server_of.values()):
            known = ", ".join(sorted(set(server_of.values()))[:20])
            raise ContractError(f"--open-server {choice!r} is not a server of the routes (they have {known}): name one, or auto")
    return chosen, {m: (r if server_of.get(m) == chosen else 0.0) for m, r in rates.items()}


def build(results: Results, plan: Optional[Plan], meta: Dict[str, Any]) -> Dict[str, Any]:
    """The report as one JSON-able dict."""
    seq = summarise(results.seq) if results.seq else None
    rnd = summarise(results.rnd) if results.rnd else None
    modes: Dict[str, Any] = {}
    if results.seq is not None:
        modes["seq"] = seq.to_dict() if seq else summarise([]).to_dict()
    if results.rnd is not None:
        modes["rnd"] = rnd.to_dict() if rnd else summarise([]).to_dict()
    throughput: Optional[float] = None
    throughput_source = None
    p90_load: Optional[float] = None
    p90_source = None
    if results.bmk is not None:
        modes["bmk"] = [{"concurrency": c, **s.to_dict()} for c, s in results.bmk.points]
        best = results.bmk.best_throughput()
        if best is not None and best[1].ok:
            throughput, throughput_source = best[1].throughput_rps, f"bmk, best step (concurrency {best[0]})"
            p90_load, p90_source = best[1].latency_ms.get("p90"), f"bmk, concurrency {best[0]}"
    if results.open is not None:
        o = results.open
        summary = summarise(o.samples, o.window)
        modes["open"] = {"scale": o.scale, "duration_s": o.duration_s, "offered_rps": sum(o.offered_rps.values()),
                         **summary.to_dict(), "servers": server_rows(o, plan, bool(meta.get("base_url")))}
        if results.prometheus is not None:
            p = results.prometheus
            modes["open"]["prometheus"] = {**{k: v for k, v in p.items() if k != "servers"},
                                           "servers": prometheus_rows(p, o) if p.get("status") == "ran" else []}
        if summary.ok:
            p90_load, p90_source = summary.latency_ms.get("p90"), f"open loop at {_scale(o.scale)}"
            if throughput is None:
                throughput, throughput_source = summary.throughput_rps, "open loop (offered load, not capacity)"
    if results.smoke is not None:
        modes["smoke"] = [{"server": s.server, "model": s.model, "outcome": s.outcome, "ok": s.ok,
                           "latency_ms": s.latency_ms, **results.smoke_tries.get(s.server, {})} for s in results.smoke]
    summary_row = {
        "models": results.models, "servers": results.servers,
        "sequential_ms": _range(seq), "random_ms": _range(rnd),
        "throughput_rps": throughput, "throughput_source": throughput_source,
        "p90_under_load_ms": p90_load, "p90_source": p90_source,
        "cost_per_hour": plan.cost_per_hour if plan is not None else None,
    }
    return {"schema": 1, **meta, "definitions": DEFINITIONS, "summary": summary_row, "modes": modes,
            "client": {"kind": "asyncio HTTP/1.1 with keep-alive pools (standard library)",
                       "cpu_ms_per_request": dict(results.cpu_ms_per_request)},
            "notes": list(results.notes)}


def _range(summary: Optional[Summary]) -> Optional[Dict[str, float]]:
    if summary is None or not summary.latency_ms:
        return None
    return {"min": summary.latency_ms["min"], "max": summary.latency_ms["max"]}


def markdown(report: Dict[str, Any]) -> str:
    s = report["summary"]
    lines = ["# Load test report", ""]
    lines.append(f"Targets: `{report.get('routes', '?')}` ({s['servers']} server{'' if s['servers'] == 1 else 's'}), "
                 f"{'through ' + report['base_url'] if report.get('base_url') else 'direct to each server'}; "
                 f"{report.get('created_at', '')}.")
    lines += ["", "| " + " | ".join(BLOG_COLUMNS) + " |", "|" + " --- |" * len(BLOG_COLUMNS)]
    seq, rnd = s["sequential_ms"], s["random_ms"]
    lines.append("| " + " | ".join([
        str(s["models"]),
        f"{seq['min']:.1f}–{seq['max']:.1f} ms" if seq else "–",
        f"{rnd['min']:.1f}–{rnd['max']:.1f} ms" if rnd else "–",
        f"{s['throughput_rps']:.1f} req/s" if s["throughput_rps"] is not None else "–",
        fmt_ms(s["p90_under_load_ms"]),
        f"${s['cost_per_hour']:.2f}" if s["cost_per_hour"] is not None else "– (no --plan)",
    ]) + " |")
    lines.append("")
    if s["throughput_source"]:
        lines.append(f"Throughput: {s['throughput_source']}. ")
    if s["p90_source"]:
        lines.append(f"P90 under load: {s['p90_source']}.")
    modes = report["modes"]
    if "open" in modes:
        o = modes["open"]
        only = f", server {report['open_server']} only" if report.get("open_server") else ""
        lines += ["", f"## Predicted vs measured P90 per server (open loop at {_scale(o['scale'])}{only}, "
                      f"{o['duration_s']:g} s, {o['offered_rps']:.2f} req/s offered)", "",
                  "| " + " | ".join(SERVER_COLUMNS) + " |", "|" + " --- |" * len(SERVER_COLUMNS)]
        for r in o["servers"]:
            lines.append("| " + " | ".join([
                r["server"], str(r["models"]), "–" if r["replicas"] is None else str(r["replicas"]),
                f"{r['planned_rps']:.2f}", f"{r['offered_rps']:.2f}",
                f"{r['pod_planned_rps']:.2f}, {r['pod_sent_rps']:.2f}" if "pod_sent_rps" in r else "–",
                str(r["requests"]), str(r["errors"]), fmt_ms(r["predicted_p90_ms"]), fmt_ms(r["measured_p90_ms"]),
                f"{r['ratio']:.2f}" if r["ratio"] is not None else "–"]) + " |")
        lines += ["", "The plan predicts each pod's P90 at its planned rate, the server's traffic shared by its replicas "
                      "(a local run has one process per server, which gets all of it). A server is compared only where "
                      f"each pod was sent that rate (within {RATE_MATCH:.0%}); elsewhere the ratio is –, since the plan "
                      "holds no prediction at another rate. The prediction is for requests at the traced sequence length "
                      "(shorter texts are served faster) on the pod's own cores (locally they are shared with the other "
                      "servers and this load generator)."]
        if "prometheus" in o:
            lines += prometheus_markdown(o["prometheus"])
    if "bmk" in modes:
        lines += ["", "## Latency–throughput (closed loop)", "", "| concurrency | requests | errors | throughput | P50 | P90 | P95 | P99 |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for p in modes["bmk"]:
            lat = p["latency_ms"]
            lines.append(f"| {p['concurrency']} | {p['requests']} | {p['requests'] - p['ok']} | {p['throughput_rps']:.1f} req/s | "
                         f"{fmt_ms(lat.get('p50'))} | {fmt_ms(lat.get('p90'))} | {fmt_ms(lat.get('p95'))} | {fmt_ms(lat.get('p99'))} |")
        if report.get("plot"):
            lines += ["", f"![latency–throughput]({report['plot']})"]
    if report.get("plan_plot"):
        lines += ["", "## The plan", "", f"![the packing plan: servers on instances]({report['plan_plot']})"]
    head = ("mode", "requests", "ok", "errors by outcome", "throughput", "min", "P50", "P90", "P95", "P99", "max", "client CPU / request")
    lines += ["", "## Every mode", "", "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    cpu = report["client"]["cpu_ms_per_request"]
    rows: List[Tuple[str, Dict[str, Any]]] = [(m, modes[m]) for m in ("seq", "rnd", "open") if m in modes]
    rows += [(f"bmk c={p['concurrency']}", p) for p in modes.get("bmk", [])]
    for name, m in rows:
        lat = m["latency_ms"]
        errors = ", ".join(f"{k}: {v}" for k, v in m["errors"].items()) or "none"
        key = name.split(" ")[0]
        lines.append(f"| {name} | {m['requests']} | {m['ok']} | {errors} | {m['throughput_rps']:.1f} req/s | {fmt_ms(lat.get('min'))} | "
                     f"{fmt_ms(lat.get('p50'))} | {fmt_ms(lat.get('p90'))} | {fmt_ms(lat.get('p95'))} | {fmt_ms(lat.get('p99'))} | "
                     f"{fmt_ms(lat.get('max'))} | {fmt_ms(cpu.get(key))} |")
    if "smoke" in modes:
        lines += ["", "## Smoke (each server until it answers or the deadline)", "",
                  "| server | model | outcome | tries | latency of the last |", "| --- | --- | --- | --- | --- |"]
        for r in modes["smoke"]:
            lines.append(f"| {r['server']} | {r['model']} | {'ok ' if r['ok'] else 'FAILED '}{r['outcome']} | "
                         f"{r.get('attempts', 1)} | {fmt_ms(r['latency_ms'])} |")
    lines += ["", "## Definitions", ""] + [f"- **{k}**: {v}" for k, v in report["definitions"].items()]
    if report["notes"]:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in report["notes"]]
    return "\n".join(lines) + "\n"


PROMETHEUS_COLUMNS = ("server", "window R", "load test P90", "Prometheus P90", "Prometheus / load test",
                      "bucket of the load test's P90", "requests: load test", "requests: Prometheus counter",
                      "requests: increase()")


def _bucket_text(bucket: Optional[List[Optional[float]]]) -> str:
    if not bucket:
        return "–"
    lower, upper = bucket
    return f"({lower:g}, {upper:g}] ms" if upper is not None else f"> {lower:g} ms"


def prometheus_markdown(p: Dict[str, Any]) -> List[str]:
    """The open loop's Prometheus table, or the one line that says why there is none."""
    if p.get("status") != "ran":
        return ["", f"Prometheus: {p.get('status', 'skipped')}: {p.get('reason')}."]
    lines = ["", "### Prometheus over the same window", "",
             f"A real Prometheus ({p.get('version') or p.get('binary')}) scraped each server every "
             f"{p.get('scrape_interval_s', 0):g} s (labelled server=<id>, as the cluster's PodMonitor labels pods). Its P90 is "
             "`histogram_quantile(0.9, sum by (le) (rate(modelfleet_request_seconds_bucket{server=\"<id>\"}[R])))` at the "
             "first scrape after the open loop's last response, R reaching back just past the last scrape before its "
             "start; the counter is `modelfleet_requests_total` read at those two scrapes, increase() its increase over R.", "",
             "| " + " | ".join(PROMETHEUS_COLUMNS) + " |", "|" + " --- |" * len(PROMETHEUS_COLUMNS)]
    for r in p.get("servers", []):
        increase = r.get("requests_increase")
        lines.append("| " + " | ".join([
            r["server"], f"{r['range_s']:.1f} s" if r.get("range_s") is not None else "–", fmt_ms(r["load_test_p90_ms"]),
            fmt_ms(r["prometheus_p90_ms"]) if r["prometheus_p90_ms"] is not None else f"– ({r.get('why_none')})",
            f"{r['ratio']:.2f}" if r["ratio"] is not None else "–", _bucket_text(r["load_test_bucket_ms"]),
            str(r["requests_answered"]), f"{r['requests_counted']:g}" if r["requests_counted"] is not None else "–",
            f"{increase:.1f}" if increase is not None else "–"]) + " |")
    lines += ["", "histogram_quantile does not see single requests: it finds the histogram bucket that holds the 90th "
                  "percentile (the server's buckets, serving/metrics.py LATENCY_BUCKETS) and interpolates linearly inside "
                  "it, so the two P90s are expected to agree only to within that bucket's width. The server also times a "
                  "request from its arrival to its response, where the load test times it from its scheduled send to the "
                  "last byte, so the server's own times are a little shorter; inside the bucket, the interpolation can still put "
                  "Prometheus's P90 on either side of the load test's."]
    return lines


def plot(report: Dict[str, Any], path: Path) -> Optional[Path]:
    """Latency (P50, P90, P99) against throughput for each bmk step, and the open loop's point; None when neither ran."""
    modes = report["modes"]
    points = [p for p in modes.get("bmk", []) if p["ok"]]
    open_mode = modes.get("open") if modes.get("open", {}).get("ok") else None
    if not points and open_mode is None:
        return None
    with png_figure(path, (7, 4.5)) as ax:
        if points:
            x = [p["throughput_rps"] for p in points]
            for name, style in (("p50", "o-"), ("p90", "s-"), ("p99", "^--")):
                ax.plot(x, [p["latency_ms"][name] for p in points], style, label=f"closed loop {name.upper()}")
            for p in points:
                ax.annotate(f"c={p['concurrency']}", (p["throughput_rps"], p["latency_ms"]["p90"]), textcoords="offset points",
                            xytext=(4, 4), fontsize=8)
        if open_mode is not None:
            ax.plot([open_mode["throughput_rps"]], [open_mode["latency_ms"]["p90"]], "r*", markersize=12,
                    label=f"open loop P90 ({_scale(open_mode['scale'])})")
        ax.set_xlabel("throughput (successful req/s)")
        ax.set_ylabel("latency (ms)")
        ax.set_title(f"Latency–throughput: {report['summary']['models']} models on {report['summary']['servers']} servers")
        ax.set_ylim(bottom=0)
        ax.set_xlim(left=0)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    return path


@contextlib.contextmanager
def png_figure(path: Path, figsize: Tuple[float, float], dpi: int = 110) -> Iterator[Any]:
    """One pyplot axes to draw on; when the block ends without an error the figure is laid out and written to `path`
    as a PNG, atomically, and it is closed either way (pyplot keeps every open figure). The report's plot and the
    latency benchmark's use it."""
    import matplotlib

    matplotlib.use("Agg")  # no display here, and none needed
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=figsize, dpi=dpi)
    try:
        yield ax
        fig.tight_layout()
        png = io.BytesIO()
        fig.savefig(png, format="png")
        write_atomic(path, png.getvalue())
    finally:
        plt.close(fig)


def write(report: Dict[str, Any], out: Path, plan_picture: Optional[Path] = None) -> Dict[str, Path]:
    """report.json, report.md and (when bmk or open ran) latency_throughput.png under `out`; with
    `plan_picture` (the plan's plot from `packing plan`), a copy of it as plan.png, shown first."""
    out.mkdir(parents=True, exist_ok=True)
    png = plot(report, out / "latency_throughput.png")
    report = dict(report, plot=png.name if png else None)
    if plan_picture is not None and plan_picture.is_file():
        write_atomic(out / "plan.png", plan_picture.read_bytes())
        report["plan_plot"] = "plan.png"
    paths = {"json": write_json_atomic(out / "report.json", report), "md": write_atomic(out / "report.md", markdown(report))}
    if png:
        paths["png"] = png
    return paths


def to_json(report: Dict[str, Any]) -> str:
    return json.dumps(report, indent=2)
