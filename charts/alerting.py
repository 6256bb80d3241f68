"""Prometheus rule groups from a plan: per server, alerts on its P90 against its SLO, its 5xx and 429 ratios, models
that failed to load and pods stuck Pending, and a recording rule that states its SLO; for the fleet, the plan's
cost. Pure functions returning the `groups` of a rule file (PrometheusRule `spec.groups`), so promtool can check
and unit-test exactly what the cluster gets.

Queries select by the target labels the PodMonitor sets (`namespace`, `server`, `pod`; charts/monitoring.py)
and by the server's own metric names (serving/metrics.py).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

from contracts import Plan, Server

# Windows and thresholds. The rate window is at least four scrape intervals (SCRAPE_INTERVAL in monitoring.py).
RATE_WINDOW = "5m"
SLO_FOR = "5m"  # the P90 above the SLO this long before the alert fires
ERROR_RATIO_5XX = 0.01  # 5xx answers over all answers of a server
ERROR_FOR = "5m"
THROTTLED_RATIO_429 = 0.05  # 429 (queue full) answers over all answers of a server
THROTTLED_FOR = "5m"
LOAD_FAILURE_WINDOW = "15m"
LOAD_FAILED_FOR = "1m"
PENDING_FOR = "10m"  # longer than a node's start-up: a pod waiting for a new node is not yet a fault

# Metrics the rules and the dashboard read that the server does not export: kube-state-metrics', which
# kube-prometheus-stack installs and scrapes.
KUBE_STATE_METRICS = ("kube_pod_status_phase",)
# Recording rules written here; queries elsewhere (the dashboard) read them.
SLO_RECORD = "modelfleet:slo_p90_seconds"
COST_RECORD = "modelfleet:plan_cost_dollars_per_hour"
RECORDS = (SLO_RECORD, COST_RECORD)

# The characters Kubernetes puts in generated names (apimachinery's rand.SafeEncodeString): a Deployment's pods
# are <deployment>-<pod-template-hash, up to 10 of them>-<5 of them>.
_NAME_CHARS = "[bcdfghjklmnpqrstvwxz2456789]"


def selector(namespace: str, server_id: str, **extra: str) -> str:
    """Label matchers of one server's series; an extra value starting with "~" is a regex match."""
    parts = [f'namespace="{namespace}"', f'server="{server_id}"']
    parts += [f'{k}=~"{v[1:]}"' if v.startswith("~") else f'{k}="{v}"' for k, v in extra.items()]
    return "{" + ", ".join(parts) + "}"


def p90_seconds(matchers: str, by: str = "namespace, server", quantile: float = 0.9, window: str = RATE_WINDOW) -> str:
    """The quantile of request latency over `window`, from the histogram's buckets summed over pods and models."""
    return (f"histogram_quantile({quantile}, sum by ({by}, le) "
            f"(rate(modelfleet_request_seconds_bucket{matchers}[{window}])))")


def code_ratio(namespace: str, server_id: str, code_regex: str, window: str = RATE_WINDOW) -> str:
    """Answers whose status matches `code_regex` over all answers of the server."""
    part = selector(namespace, server_id, code="~" + code_regex)
    whole = selector(namespace, server_id)
    return (f"sum by (namespace, server) (rate(modelfleet_requests_total{part}[{window}]))\n"
            f"/\nsum by (namespace, server) (rate(modelfleet_requests_total{whole}[{window}]))")


def server_pod_regex(server_id: str) -> str:
    """The names of a server's pods (its Deployment is named by its id; charts/server.py), and no other server's:
    two dash-free segments follow the id, so server "a" never matches the pods of a server "a-b"."""
    return f"{server_id}-{_NAME_CHARS}{{1,10}}-{_NAME_CHARS}{{5}}"


def number(value: float) -> str:
    """A PromQL literal that keeps the value (ten significant digits, no exponent for everyday values)."""
    return f"{value:.10g}"


def _fmt_ms(ms: float) -> str:
    return f"{ms:.4g} ms"


def describe_server(server: Server, namespace: str) -> str:
    slo = f"P90 SLO {_fmt_ms(server.slo_p90_ms)}" if server.slo_p90_ms is not None else "no latency SLO"
    return (f"Server {server.id} (namespace {namespace}; {server.replicas} x {server.instance_type}, {server.processor}; "
            f"{len(server.models)} model(s); {slo})")


def _runbook(server: Server, namespace: str, what: str) -> str:
    pods = f"kubectl -n {namespace} get pods -l modelfleet.io/server={server.id}"
    return f"{what} Start with `{pods}` and `kubectl -n {namespace} logs deploy/{server.id}`; its /readyz names every model's state."


def _alert(name: str, expr: str, for_: str, severity: str, summary: str, description: str, runbook: str,
           labels: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
    return {"alert": name, "expr": expr, "for": for_,
            "labels": {"severity": severity, **(labels or {})},
            "annotations": {"summary": summary, "description": description, "runbook": runbook}}


def server_alerts(server: Server, namespace: str) -> List[Dict[str, Any]]:
    sid, who = server.id, describe_server(server, namespace)
    alerts = []
    if server.slo_p90_ms is not None:
        slo_s = server.slo_p90_ms / 1000.0
        alerts.append(_alert(
            "ModelfleetP90OverSLO", f"{p90_seconds(selector(namespace, sid))}\n> {number(slo_s)}", SLO_FOR, "critical",
            f"{sid}: P90 latency above its {_fmt_ms(server.slo_p90_ms)} SLO for {SLO_FOR}",
            f"{who}: the P90 of its requests over {RATE_WINDOW} has been above {_fmt_ms(server.slo_p90_ms)} for {SLO_FOR}. "
            f"The plan predicted {_fmt_ms(server.predicted.p90_ms)} at utilisation {server.predicted.utilisation:.2f}.",
            _runbook(server, namespace, "Compare its request rate with the plan's (more traffic than planned: re-plan, or "
                                        "let the autoscaler add pods); look at queue depth and batch sizes on the dashboard.")))
    alerts.append(_alert(
        "ModelfleetServerErrors", f"{code_ratio(namespace, sid, '5..')}\n> {number(ERROR_RATIO_5XX)}", ERROR_FOR, "critical",
        f"{sid}: more than {ERROR_RATIO_5XX:.0%} of requests answered 5xx",
        f"{who}: over {ERROR_RATIO_5XX:.0%} of its answers have been 5xx (500 internal, 503 model not loaded or shutting "
        f"down, 504 deadline passed) for {ERROR_FOR}.",
        _runbook(server, namespace, "503: a model failed or is still loading; 504: requests wait longer than "
                                    "REQUEST_TIMEOUT_MS (overload); 500: see the pod logs.")))
    alerts.append(_alert(
        "ModelfleetThrottling", f"{code_ratio(namespace, sid, '429')}\n> {number(THROTTLED_RATIO_429)}", THROTTLED_FOR, "warning",
        f"{sid}: more than {THROTTLED_RATIO_429:.0%} of requests refused with 429",
        f"{who}: over {THROTTLED_RATIO_429:.0%} of its answers have been 429 (a model's queue full, QUEUE_SIZE rows) "
        f"for {THROTTLED_FOR}: it gets more traffic than its pods serve.",
        _runbook(server, namespace, "Check whether the HPA is at its maximum and nodes are Pending; re-plan with the "
                                    "observed rates.")))
    # The gauge catches a failure older than the window; the counter's increase catches a pod that failed, was
    # restarted and now loads again (its gauge back at 0). Both sides keep namespace and server only, so `or` joins.
    failed = selector(namespace, sid)
    alerts.append(_alert(
        "ModelfleetModelLoadFailed",
        f"max by (namespace, server) (modelfleet_models_failed{failed}) > 0\nor\n"
        f"max by (namespace, server) (increase(modelfleet_model_load_failures_total{failed}[{LOAD_FAILURE_WINDOW}])) > 0",
        LOAD_FAILED_FOR, "critical",
        f"{sid}: a model failed to load",
        f"{who}: at least one of its models failed to load (or failed within {LOAD_FAILURE_WINDOW}); its requests get 503.",
        _runbook(server, namespace, "/readyz lists each failed model and why (no store entry, sha256 mismatch, over "
                                    "MEMORY_BUDGET_MIB); fix the store or the plan and restart the pods.")))
    # Pending pods from kube-state-metrics. kube_pod_labels would join on the pod's modelfleet.io/server label, but
    # kube-state-metrics exports pod labels only on its --metric-labels-allowlist, which kube-prometheus-stack
    # leaves empty; the pod name is always there and the Deployment's name is the server id.
    pending = f'{{namespace="{namespace}", phase="Pending", pod=~"{server_pod_regex(sid)}"}}'
    alerts.append(_alert(
        "ModelfleetPodsPending", f"sum by (namespace) (kube_pod_status_phase{pending}) > 0", PENDING_FOR, "warning",
        f"{sid}: pods Pending for {PENDING_FOR}",
        f"{who}: some of its pods have been Pending for {PENDING_FOR}: it runs below its planned replicas.",
        _runbook(server, namespace, "`kubectl describe pod` says why: no node of its instance type with room (node "
                                    "group at its maximum, or a plan whose requests exceed allocatable), or no device free."),
        labels={"server": sid}))
    return alerts


def server_rule_groups(server: Server, namespace: str) -> List[Dict[str, Any]]:
    """The groups of one server's rule file: its SLO as a series (if it has one), and its alerts."""
    groups = []
    if server.slo_p90_ms is not None:
        groups.append({"name": f"modelfleet.{server.id}.slo", "rules": [{
            "record": SLO_RECORD, "expr": f"vector({number(server.slo_p90_ms / 1000.0)})",
            "labels": {"namespace": namespace, "server": server.id}}]})
    groups.append({"name": f"modelfleet.{server.id}.alerts", "rules": server_alerts(server, namespace)})
    return groups


def fleet_rule_groups(plan: Plan, namespace: str, environment: str) -> List[Dict[str, Any]]:
    """The plan's cost ($/h: instances and platform) as a series, for the dashboard and for cost-per-request queries."""
    return [{"name": "modelfleet.fleet", "rules": [{
        "record": COST_RECORD, "expr": f"vector({number(plan.cost_per_hour)})",
        "labels": {"namespace": namespace, "environment": environment}}]}]
