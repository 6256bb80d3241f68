"""What kube-prometheus-stack needs to watch the fleet, from a plan: a PodMonitor that scrapes every server pod's
/metrics, a PrometheusRule per server (charts/alerting.py) and one for the fleet, and a Grafana dashboard in a
ConfigMap its sidecar loads. One construct per concern; `monitoring_files` renders them for dist/monitoring/.

They live apart from dist/manifests/ because their kinds are prometheus-operator's CRDs, which kube-prometheus-stack
installs (tests/crds/prometheus-operator-v0.93.0/ holds the ones the tests validate against).

The same objects also go out as Helm chart folders, dist/helm/monitoring-NNN/, which the stacks install as releases
(`monitoring_chart_groups`): their text escaped for Helm (`helm_literal`), since alert annotations and the dashboard's
legends hold `{{ ... }}` that are Prometheus's and Grafana's templates, not Helm's.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Dict, List

import cdk8s
from cdk8s_plus_36 import k8s
from constructs import Construct

from charts import alerting, naming, yamltext
from charts import constants as c
from charts.config import EnvConfig
from charts.grafana import Dashboard, Panel, Target, Threshold, query_variable
from contracts import Plan, Server

MONITORING_API = "monitoring.coreos.com/v1"
POD_MONITOR_NAME = "modelfleet-servers"
METRICS_PATH = "/metrics"
SCRAPE_INTERVAL = "30s"  # kube-prometheus-stack's default; alerting.RATE_WINDOW holds ten of them
SCRAPE_TIMEOUT = "10s"
TOP_MODELS = 10
DASHBOARD_FILE = "modelfleet.json"
# The target labels queries use: the PodMonitor copies these pod labels (prometheus-operator adds namespace, pod).
TARGET_LABELS = {c.SERVER_LABEL: "server", c.PROCESSOR_LABEL: "processor"}


def meta_label_of(pod_label: str) -> str:
    """The service-discovery label Prometheus gives a pod label (every character outside [a-zA-Z0-9_] becomes _)."""
    return "__meta_kubernetes_pod_label_" + "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in pod_label)


def rule_name(server_id: str) -> str:
    return f"{server_id}-rules"


def fleet_rule_name(environment: str) -> str:
    return f"modelfleet-{environment}-fleet-rules"


def dashboard_name(environment: str) -> str:
    return f"modelfleet-{environment}-dashboard"


def _labels(**extra: str) -> Dict[str, str]:
    return {c.PART_OF_LABEL: c.PART_OF, **c.MONITORING_RELEASE_LABEL, **extra}


class MonitoringObject(cdk8s.ApiObject):
    """A prometheus-operator object; its spec is plain JSON (no cdk8s tokens), one patch."""

    def __init__(self, scope: Construct, id: str, *, kind: str, metadata: Dict[str, Any], spec: Dict[str, Any]) -> None:
        super().__init__(scope, id, api_version=MONITORING_API, kind=kind, metadata=metadata)
        self.add_json_patch(cdk8s.JsonPatch.add("/spec", spec))


def pod_monitor_spec(namespace: str) -> Dict[str, Any]:
    """Every server pod of the namespace (they all carry the server label), scraped on its named port."""
    return {
        "selector": {"matchLabels": {c.NAME_LABEL: c.NAME},
                     "matchExpressions": [{"key": c.SERVER_LABEL, "operator": "Exists"}]},
        "namespaceSelector": {"matchNames": [namespace]},
        "podMetricsEndpoints": [{
            "port": c.PORT_NAME, "path": METRICS_PATH, "interval": SCRAPE_INTERVAL, "scrapeTimeout": SCRAPE_TIMEOUT,
            "relabelings": [{"action": "replace", "sourceLabels": [meta_label_of(pod_label)], "targetLabel": target}
                            for pod_label, target in TARGET_LABELS.items()],
        }],
    }


class ServerPodMonitor(Construct):
    def __init__(self, scope: Construct, id: str, namespace: str) -> None:
        super().__init__(scope, id)
        self.pod_monitor = MonitoringObject(self, "pod-monitor", kind="PodMonitor",
                                            metadata={"name": POD_MONITOR_NAME, "namespace": namespace, "labels": _labels()},
                                            spec=pod_monitor_spec(namespace))


class ServerAlertRules(Construct):
    """One server's PrometheusRule: its SLO series and its alerts."""

    def __init__(self, scope: Construct, id: str, server: Server, namespace: str) -> None:
        super().__init__(scope, id)
        self.rule = MonitoringObject(
            self, "rules", kind="PrometheusRule",
            metadata={"name": rule_name(server.id), "namespace": namespace,
                      "labels": _labels(**{c.SERVER_LABEL: server.id, c.PROCESSOR_LABEL: server.processor})},
            spec={"groups": alerting.server_rule_groups(server, namespace)})


class FleetRules(Construct):
    def __init__(self, scope: Construct, id: str, plan: Plan, namespace: str, environment: str) -> None:
        super().__init__(scope, id)
        self.rule = MonitoringObject(
            self, "rules", kind="PrometheusRule",
            metadata={"name": fleet_rule_name(environment), "namespace": namespace, "labels": _labels()},
            spec={"groups": alerting.fleet_rule_groups(plan, namespace, environment)})


# ---- the dashboard ----
_FLEET = 'namespace="$namespace"'
_SEL = 'namespace="$namespace", server=~"$server"'
_RATE = "$__rate_interval"


def _by_server(metric: str, matchers: str = _SEL, fn: str = "") -> str:
    inner = f"{metric}{{{matchers}}}"
    return f"sum by (server) ({fn}({inner}[{_RATE}]))" if fn else f"sum by (server) ({inner})"


def _ratio_to_slo() -> str:
    return (f"{alerting.p90_seconds('{' + _SEL + '}', window=_RATE)}\n/ on (namespace, server) group_left\n"
            f"max by (namespace, server) ({alerting.SLO_RECORD}{{{_SEL}}})")


def fleet_dashboard(plan: Plan, namespace: str, environment: str) -> Dict[str, Any]:
    """The fleet on one page: cost, traffic, latency against each server's SLO, queues, refusals and memory."""
    red_at = lambda v: [Threshold(None, "green"), Threshold(v, "red")]  # noqa: E731
    instances = ", ".join(f"{n} x {t}" for t, n in sorted(plan.instances.items()))
    board = Dashboard(
        uid=f"modelfleet-{environment}"[:40], title=f"modelfleet ({environment})", tags=["modelfleet"],
        description=f"Generated by `python -m charts synth` from a plan of {len(plan.servers)} servers: do not edit here.")
    board.variable(query_variable("namespace", "Namespace", "label_values(modelfleet_models_loaded, namespace)",
                                  default=namespace))
    board.variable({**query_variable("server", "Server", 'label_values(modelfleet_models_loaded{namespace="$namespace"}, server)',
                                     multi=True), "allValue": ".*"})

    board.row("Fleet")
    board.add(Panel("Plan cost ($/h)", "stat", [Target(f"sum({alerting.COST_RECORD}{{{_FLEET}}})")], unit="currencyUSD",
                    decimals=2, width=6, height=4,
                    description=f"Instances and platform, as planned: {instances}; platform ${plan.platform_per_hour:.2f}/h."))
    board.add(Panel("Requests per second", "stat",
                    [Target(f"sum(rate(modelfleet_requests_total{{{_FLEET}}}[{_RATE}]))")], unit="reqps", width=6, height=4))
    board.add(Panel("Models failed to load", "stat", [Target(f"sum(modelfleet_models_failed{{{_FLEET}}})")],
                    thresholds=red_at(1), width=6, height=4, description="/readyz of each pod says which and why."))
    board.add(Panel("Pods Pending", "stat", [Target(f'sum(kube_pod_status_phase{{{_FLEET}, phase="Pending"}})')],
                    thresholds=red_at(1), width=6, height=4, description="From kube-state-metrics, every pod of the namespace."))

    board.row("Traffic")
    board.add(Panel("Request rate by server", "timeseries",
                    [Target(_by_server("modelfleet_requests_total", fn="rate"), "{{server}}")], unit="reqps"))
    board.add(Panel(f"Top {TOP_MODELS} models by request rate", "bargauge",
                    [Target(f"topk({TOP_MODELS}, sum by (server, model) (rate(modelfleet_requests_total{{{_SEL}}}[5m])))",
                            "{{model}} ({{server}})", instant=True)],
                    unit="reqps", options={"orientation": "horizontal", "displayMode": "basic"}))
    board.add(Panel("429 (queue full) by server", "timeseries",
                    [Target(_by_server("modelfleet_requests_total", _SEL + ', code="429"', fn="rate"), "{{server}}")],
                    unit="reqps", description="Refused because a model's queue held QUEUE_SIZE rows."))
    board.add(Panel("5xx by server", "timeseries",
                    [Target(_by_server("modelfleet_requests_total", _SEL + ', code=~"5.."', fn="rate"), "{{server}} {{code}}")],
                    unit="reqps", description="503: model not loaded or shutting down; 504: deadline passed."))

    board.row("Latency against SLO")
    board.add(Panel("P90 / SLO by server", "timeseries", [Target(_ratio_to_slo(), "{{server}}")], unit="percentunit",
                    thresholds=red_at(1.0), threshold_line=True, width=24,
                    description="Each server's P90 as a share of its plan SLO (slo_p90_ms): above the red line it misses it. "
                                "Servers without an SLO have no line."))
    board.add(Panel("P50 and P90 by server, with each server's SLO", "timeseries", [
        Target(alerting.p90_seconds("{" + _SEL + "}", by="server", quantile=0.5, window=_RATE), "{{server}} P50"),
        Target(alerting.p90_seconds("{" + _SEL + "}", by="server", window=_RATE), "{{server}} P90"),
        Target(f"max by (server) ({alerting.SLO_RECORD}{{{_SEL}}})", "{{server}} SLO")],
        unit="s", width=24, description="Pick servers in the Server variable to see each one's P50 and P90 against its SLO."))

    board.row("Queues and memory")
    board.add(Panel("Queue depth by server (rows waiting)", "timeseries",
                    [Target(_by_server("modelfleet_queue_rows"), "{{server}}")], width=8))
    board.add(Panel("In-flight requests by server", "timeseries",
                    [Target(_by_server("modelfleet_inflight_requests"), "{{server}}")], width=8))
    board.add(Panel("Resident memory / budget by pod", "timeseries", [Target(
        f"max by (server, pod) (modelfleet_resident_memory_bytes{{{_SEL}}})\n/\n"
        f"max by (server, pod) (modelfleet_memory_budget_bytes{{{_SEL}}} > 0)", "{{pod}}")],
        unit="percentunit", thresholds=red_at(1.0), threshold_line=True, width=8,
        description="Each pod's resident memory against its MEMORY_BUDGET_MIB (the plan's memory_budget_mib)."))
    return board.to_json()


class FleetDashboard(Construct):
    """The dashboard in a ConfigMap of the monitoring namespace; the Grafana sidecar loads it by its label."""

    def __init__(self, scope: Construct, id: str, plan: Plan, namespace: str, monitoring_namespace: str,
                 environment: str) -> None:
        super().__init__(scope, id)
        text = json.dumps(fleet_dashboard(plan, namespace, environment), sort_keys=True, separators=(",", ":"))
        self.config_map = k8s.KubeConfigMap(
            self, "dashboard", data={DASHBOARD_FILE: text},
            metadata=k8s.ObjectMeta(name=dashboard_name(environment), namespace=monitoring_namespace,
                                    labels={c.PART_OF_LABEL: c.PART_OF, **c.GRAFANA_DASHBOARD_LABEL}))


# ---- assembly ----
@dataclass(frozen=True)
class MonitoringObjects:
    pod_monitor: Dict[str, Any]
    fleet_rules: Dict[str, Any]
    server_rules: Dict[str, Dict[str, Any]]  # server id -> its PrometheusRule
    dashboard: Dict[str, Any]


def build_monitoring(plan: Plan, config: EnvConfig) -> MonitoringObjects:
    app = cdk8s.App()
    chart = cdk8s.Chart(app, "monitoring", disable_resource_name_hashes=True)
    ns, env = config.namespace, config.environment
    pod_monitor = ServerPodMonitor(chart, "pod-monitor", ns)
    fleet = FleetRules(chart, "fleet", plan, ns, env)
    rules = {s.id: ServerAlertRules(chart, f"rules-{s.id}", s, ns) for s in plan.servers}
    dashboard = FleetDashboard(chart, "dashboard", plan, ns, config.monitoring_namespace, env)
    docs = {(d["kind"], d["metadata"]["name"]): d for d in chart.to_json()}

    def doc(obj: cdk8s.ApiObject) -> Dict[str, Any]:
        return docs[(obj.kind, obj.name)]
    return MonitoringObjects(pod_monitor=doc(pod_monitor.pod_monitor), fleet_rules=doc(fleet.rule),
                             server_rules={sid: doc(r.rule) for sid, r in rules.items()},
                             dashboard=doc(dashboard.config_map))


def monitoring_files(plan: Plan, config: EnvConfig) -> Dict[str, str]:
    """dist/-relative path -> YAML text: monitoring/podmonitor.yaml, monitoring/rules/<server-id>.yaml (the fleet's:
    00-fleet.yaml), monitoring/dashboard.yaml. `kubectl apply -R -f dist/monitoring/` once kube-prometheus-stack runs."""
    objs = build_monitoring(plan, config)
    files = {"monitoring/podmonitor.yaml": yamltext.dump(objs.pod_monitor),
             "monitoring/rules/00-fleet.yaml": yamltext.dump(objs.fleet_rules),
             "monitoring/dashboard.yaml": yamltext.dump(objs.dashboard)}
    files.update({f"monitoring/rules/{sid}.yaml": yamltext.dump(doc) for sid, doc in objs.server_rules.items()})
    return files


# ---- as Helm charts ----
MONITORING_CHART_PREFIX = "monitoring-"
# Template bytes per monitoring chart. Helm keeps a release in a Secret of at most 1 MiB holding
# base64(gzip(templates (base64) + rendered manifest)); measured with charts.synth.release_size_estimate on a
# 2,100-server fleet (8.8 MB of rules), one chart of everything came to 1.15 MB, about 0.13 byte per template byte:
# 1 MiB of templates makes a release of about 140 kB, a quarter of the limit with room to spare.
MONITORING_TEMPLATE_BUDGET_BYTES = 1024 * 1024


def monitoring_chart_name(index: int) -> str:
    return f"{MONITORING_CHART_PREFIX}{index:03d}"


def helm_literal(text: str) -> str:
    """`text` as a Helm template that renders to exactly `text`: each `{{` becomes the action `{{ "{{" }}`, which
    prints it. A `}}` outside an action is plain text to Go templates, so it needs nothing."""
    return text.replace("{{", '{{ "{{" }}')


def monitoring_chart_groups(files: Dict[str, str], budget: int = MONITORING_TEMPLATE_BUDGET_BYTES) -> List[Dict[str, str]]:
    """monitoring_files' output as the templates of consecutive charts, each at most `budget` bytes of templates
    (a larger file gets a chart of its own): [{"templates/<path under monitoring/>": escaped text}, ...]. The
    PodMonitor, the dashboard and the fleet's rules come first, then the servers' rules by server id, so that a
    server keeps its chart across small plan changes."""
    first = ["monitoring/podmonitor.yaml", "monitoring/dashboard.yaml", "monitoring/rules/00-fleet.yaml"]
    order = [f for f in first if f in files] + sorted(f for f in files if f not in first)
    templates = {f"templates/{rel[len('monitoring/'):]}": helm_literal(files[rel]) for rel in order}
    return [{rel: templates[rel] for rel in group}
            for group in naming.shard([(rel, len(text.encode())) for rel, text in templates.items()], budget)]
