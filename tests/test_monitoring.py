"""The monitoring objects `charts synth` writes to dist/monitoring/: valid against the prometheus-operator CRDs
kube-prometheus-stack installs, a PodMonitor that selects the pods the charts really make, rule files that the real
promtool checks and unit-tests (each alert fires where it must and stays quiet where it must not), a dashboard whose
every query promtool parses, and no metric name that neither the server nor kube-state-metrics exports; and the same
objects as the Helm charts dist/helm/monitoring-NNN/, which the real helm lints and renders back to dist/monitoring/."""
from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, Dict, List, Set

import jsonschema
import kubernetes_validate
import pytest
import yaml

import charts  # noqa: F401  (quiets jsii's banner)
from charts import alerting, monitoring
from charts import constants as c
from charts.config import EnvConfig
from charts.grafana import GRID_COLUMNS, targets_of
from charts.synth import release_size_estimate, synth
from contracts import Plan, load
from serving.metrics import Metrics
from tests.crd_schemas import load_crds, served_schemas, validate
from tests.helm_binary import extract_tools, helm

ROOT = Path(__file__).resolve().parent.parent
CRDS = ROOT / "tests" / "crds" / "prometheus-operator-v0.93.0"
DEV = ROOT / "config" / "dev.yaml"
NAMESPACE = yaml.safe_load(DEV.read_text())["namespace"]
ENVIRONMENT = yaml.safe_load(DEV.read_text())["environment"]
MONITORING_NAMESPACE = yaml.safe_load(DEV.read_text())["monitoring_namespace"]
# "cpu-0000" is a prefix of "cpu-0000-b": the pending-pod match must keep their pods apart.
SLO_MS = {"cpu-0000": 100.0, "cpu-0000-b": 250.0, "gpu-0000": None}
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed: `make promtool` installs it (Debian's prometheus package, "
                             "apt-get as root); without it the rule files are not checked")


def _server(sid: str, itype: str, processor: str, models: List[str], slo_ms: Any) -> Dict[str, Any]:
    req: Dict[str, Any] = {"cpu_m": 1800, "memory_mib": 3000}
    if processor == "gpu":
        req["accelerator"] = {"name": "nvidia.com/gpu", "count": 1}
    server = {"id": sid, "instance_type": itype, "processor": processor, "replicas": 1,
              "placements": [{"instance_index": 0, "device_index": 0}], "models": models, "requests": req,
              "memory_budget_mib": 2500, "predicted": {"utilisation": 0.4, "p90_ms": 42.0}}
    if slo_ms is not None:
        server["slo_p90_ms"] = slo_ms
    return server


def slo_plan() -> Dict[str, Any]:
    servers = [_server("cpu-0000", "c5.xlarge", "cpu", ["m-a", "m-b"], SLO_MS["cpu-0000"]),
               _server("cpu-0000-b", "c5.xlarge", "cpu", ["m-c"], SLO_MS["cpu-0000-b"]),
               _server("gpu-0000", "g4dn.xlarge", "gpu", ["m-d", "m-e", "m-f"], SLO_MS["gpu-0000"])]
    return {"schema": 1, "inputs": {}, "options": {"min_replicas": 1}, "solver": {},
            "instances": {"c5.xlarge": 2, "g4dn.xlarge": 1}, "cost_per_hour": 1.2345, "platform_per_hour": 0.3,
            "lower_bound_per_hour": 1.2, "gap": 0.02, "solve_seconds": 0.1, "created_at": "2026-01-01T00:00:00+00:00",
            "servers": servers, "profile_sources": {}}


def load_docs(path: Path) -> List[Dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("monitoring")
    (d / "plan.json").write_text(json.dumps(slo_plan()), encoding="utf-8")
    synth(d / "plan.json", DEV, d / "dist", instances_path=ROOT / "config" / "instances.yaml")
    return d / "dist"


@pytest.fixture(scope="module")
def docs(dist) -> Dict[str, List[Dict[str, Any]]]:
    folder = dist / "monitoring"
    return {str(p.relative_to(folder)): load_docs(p) for p in sorted(folder.rglob("*.yaml"))}


@pytest.fixture(scope="module")
def schemas():
    return served_schemas(CRDS)


def rule_groups(dist: Path, name: str) -> List[Dict[str, Any]]:
    (doc,) = load_docs(dist / "monitoring" / "rules" / f"{name}.yaml")
    return doc["spec"]["groups"]


def dashboard_json(docs) -> Dict[str, Any]:
    (config_map,) = docs["dashboard.yaml"]
    return json.loads(config_map["data"][monitoring.DASHBOARD_FILE])


# ---- layout and schemas ----
def test_synth_writes_the_monitoring_objects_apart_from_the_manifests(dist, docs):
    assert sorted(docs) == ["dashboard.yaml", "podmonitor.yaml", "rules/00-fleet.yaml",
                            *sorted(f"rules/{sid}.yaml" for sid in SLO_MS)]
    kinds = {d["kind"] for p in (dist / "manifests").rglob("*.yaml") for d in load_docs(p)}
    assert not kinds & {"PodMonitor", "PrometheusRule"}, "dist/manifests/ holds only kinds its checks know"
    for path, objs in docs.items():
        for obj in objs:
            labels = obj["metadata"]["labels"]
            assert labels[c.PART_OF_LABEL] == c.PART_OF, path
            if obj["kind"] != "ConfigMap":
                assert obj["metadata"]["namespace"] == NAMESPACE
                assert {k: labels.get(k) for k in c.MONITORING_RELEASE_LABEL} == c.MONITORING_RELEASE_LABEL, path


def test_the_vendored_crds_are_the_release_s():
    crds = load_crds(CRDS)
    assert {d["spec"]["names"]["kind"] for d in crds} == {"PodMonitor", "PrometheusRule"}
    assert {d["metadata"]["annotations"]["operator.prometheus.io/version"] for d in crds} == {"0.93.0"}


def test_objects_validate_against_the_prometheus_operator_crds(docs, schemas):
    seen = set()
    for objs in docs.values():
        for obj in objs:
            if obj["kind"] == "ConfigMap":
                kubernetes_validate.validate(obj, "1.36.0", strict=True)
            else:
                validate(obj, schemas[(obj["apiVersion"], obj["kind"])])
            seen.add(obj["kind"])
    assert seen == {"PodMonitor", "PrometheusRule", "ConfigMap"}


def test_an_unknown_relabel_action_fails_the_schema(docs, schemas):
    """The check has teeth: prometheus-operator's schema refuses a relabel action Prometheus does not have."""
    (pod_monitor,) = docs["podmonitor.yaml"]
    broken = copy.deepcopy(pod_monitor)
    broken["spec"]["podMetricsEndpoints"][0]["relabelings"][0]["action"] = "rename"
    with pytest.raises(jsonschema.ValidationError):
        validate(broken, schemas[(broken["apiVersion"], "PodMonitor")])


def test_pod_monitor_selects_the_server_pods_and_names_their_targets(dist, docs):
    (pod_monitor,) = docs["podmonitor.yaml"]
    spec = pod_monitor["spec"]
    assert spec["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    endpoint = spec["podMetricsEndpoints"][0]
    assert endpoint["path"] == "/metrics"
    deployments = [d for p in (dist / "manifests" / "servers").glob("*.yaml") for d in load_docs(p) if d["kind"] == "Deployment"]
    assert len(deployments) == len(SLO_MS)
    for deployment in deployments:
        template = deployment["spec"]["template"]
        labels = template["metadata"]["labels"]
        assert all(labels.get(k) == v for k, v in spec["selector"]["matchLabels"].items()), labels
        assert all(e["key"] in labels for e in spec["selector"]["matchExpressions"] if e["operator"] == "Exists")
        ports = {p["name"] for ctr in template["spec"]["containers"] for p in ctr.get("ports", [])}
        assert endpoint["port"] in ports
        # Each relabeling copies a label the pod has (Prometheus names it __meta_kubernetes_pod_label_<sanitised>).
        meta = {"__meta_kubernetes_pod_label_" + re.sub(r"[^a-zA-Z0-9_]", "_", k): v for k, v in labels.items()}
        targets = {r["targetLabel"]: meta[r["sourceLabels"][0]] for r in endpoint["relabelings"]}
        assert targets == {"server": deployment["metadata"]["name"], "processor": labels[c.PROCESSOR_LABEL]}


def test_every_server_has_its_rule_and_only_slo_servers_an_slo_alert(dist):
    for sid, slo_ms in SLO_MS.items():
        groups = rule_groups(dist, sid)
        rules = [r for g in groups for r in g["rules"]]
        alerts = {r["alert"] for r in rules if "alert" in r}
        assert {"ModelfleetServerErrors", "ModelfleetThrottling", "ModelfleetModelLoadFailed", "ModelfleetPodsPending"} <= alerts
        assert ("ModelfleetP90OverSLO" in alerts) == (slo_ms is not None)
        records = [r for r in rules if r.get("record") == alerting.SLO_RECORD]
        assert [float(r["expr"][len("vector("):-1]) for r in records] == ([slo_ms / 1000] if slo_ms else [])
        for rule in rules:
            if "alert" in rule:
                assert rule["labels"]["severity"] in ("critical", "warning")
                assert set(rule["annotations"]) == {"summary", "description", "runbook"}
                assert sid in rule["annotations"]["description"]
                slo_text = f"P90 SLO {slo_ms:g} ms" if slo_ms else "no latency SLO"
                assert slo_text in rule["annotations"]["description"], rule["annotations"]["description"]
    (fleet,) = rule_groups(dist, "00-fleet")
    assert fleet["rules"][0]["record"] == alerting.COST_RECORD and fleet["rules"][0]["expr"] == "vector(1.2345)"


# ---- the real promtool ----
def _write_rule_file(path: Path, groups: List[Dict[str, Any]]) -> Path:
    path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False), encoding="utf-8")
    return path


def _promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=120)


@needs_promtool
def test_promtool_checks_every_rule_file(dist, tmp_path):
    files = [str(_write_rule_file(tmp_path / f"{p.stem}.yaml", rule_groups(dist, p.stem)))
             for p in sorted((dist / "monitoring" / "rules").glob("*.yaml"))]
    r = _promtool("check", "rules", *files)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("SUCCESS") == len(files), r.stdout


@needs_promtool
def test_promtool_refuses_a_broken_rule(dist, tmp_path):
    """promtool really parses the PromQL: one dropped parenthesis fails the check."""
    groups = rule_groups(dist, "cpu-0000")
    groups[-1]["rules"][0]["expr"] = groups[-1]["rules"][0]["expr"].replace(")", "", 1)
    r = _promtool("check", "rules", str(_write_rule_file(tmp_path / "broken.yaml", groups)))
    assert r.returncode != 0 and "parse error" in (r.stdout + r.stderr).lower(), r.stdout + r.stderr


def _alert(dist: Path, sid: str, name: str) -> Dict[str, Any]:
    return next(r for g in rule_groups(dist, sid) for r in g["rules"] if r.get("alert") == name)


def _fired(dist: Path, sid: str, name: str) -> Dict[str, Any]:
    """What promtool must see firing: the alert's labels with the series' namespace and server, and its annotations."""
    rule = _alert(dist, sid, name)
    return {"exp_labels": {"namespace": NAMESPACE, "server": sid, **rule["labels"]}, "exp_annotations": rule["annotations"]}


def _series(metric: str, values: str, **labels: str) -> Dict[str, str]:
    text = ", ".join(f'{k}="{v}"' for k, v in {"namespace": NAMESPACE, **labels}.items())
    return {"series": f"{metric}{{{text}}}", "values": values}


def _histogram(server: str, per_minute: Dict[str, int], minutes: int = 20) -> List[Dict[str, str]]:
    """Cumulative buckets growing by `per_minute` requests a minute (le -> requests at or under it)."""
    return [_series("modelfleet_request_seconds_bucket", f"0+{n}x{minutes}", server=server, pod=f"{server}-5d8f9b7c6d-x7k2p",
                    model="m", protocol="v1", le=le) for le, n in per_minute.items()]


def _requests(server: str, per_minute: Dict[str, int], minutes: int = 20) -> List[Dict[str, str]]:
    return [_series("modelfleet_requests_total", f"0+{n}x{minutes}", server=server, pod=f"{server}-5d8f9b7c6d-x7k2p",
                    model="m", protocol="v1", code=code) for code, n in per_minute.items()]


@needs_promtool
def test_promtool_unit_tests_each_alert_fires_where_it_must_and_not_elsewhere(dist, tmp_path):
    """Series minute by minute for two servers: cpu-0000 (SLO 100 ms) in trouble, cpu-0000-b (SLO 250 ms) healthy.
    A rate over 5m first exists at 1m, so a condition true from the start has held 3 minutes at 4m (no alert:
    `for` is 5m) and 6 minutes at 7m (firing)."""
    bad, good = "cpu-0000", "cpu-0000-b"
    files = [str(_write_rule_file(tmp_path / f"{sid}.yaml", rule_groups(dist, sid))) for sid in (bad, good)]
    # bad: half its requests over 100 ms (P90 about 220 ms); good: P90 about 75 ms, far under its 250 ms.
    latency = _histogram(bad, {"0.05": 0, "0.1": 50, "0.25": 100, "+Inf": 100}) + \
        _histogram(good, {"0.05": 80, "0.1": 100, "0.25": 100, "+Inf": 100})
    # bad: 2% 503 and 10% 429; good: 0.5% 500 and 2% 429, under both thresholds (1% and 5%).
    codes = _requests(bad, {"200": 88, "503": 2, "429": 10}) + _requests(good, {"200": 975, "500": 5, "429": 20})
    pod_of = {bad: f"{bad}-5d8f9b7c6d-x7k2p", good: f"{good}-5d8f9b7c6d-x7k2p"}
    # bad: a model failed on its pod; good: its first pod failed a model at 1m and was replaced at 3m by one that
    # loads everything (gauge 0, counter 0): only the counter's increase over 15m remembers the failure.
    loads = [_series("modelfleet_models_failed", "1x20", server=bad, pod=pod_of[bad]),
             _series("modelfleet_model_load_failures_total", "1x20", server=bad, pod=pod_of[bad]),
             _series("modelfleet_models_failed", "0 1 1", server=good, pod=pod_of[good]),
             _series("modelfleet_model_load_failures_total", "0 1 1", server=good, pod=pod_of[good]),
             _series("modelfleet_models_failed", "_ _ _ 0x30", server=good, pod=f"{good}-5d8f9b7c6d-q9z4w"),
             _series("modelfleet_model_load_failures_total", "_ _ _ 0x30", server=good, pod=f"{good}-5d8f9b7c6d-q9z4w")]
    # Only a pod of cpu-0000-b is Pending; a pod named like cpu-0000's runs. No `server` label: kube-state-metrics'.
    phases = [_series("kube_pod_status_phase", "1x20", pod=pod_of[good], phase="Pending", uid="u1"),
              _series("kube_pod_status_phase", "0x20", pod=pod_of[bad], phase="Pending", uid="u2"),
              _series("kube_pod_status_phase", "1x20", pod=pod_of[bad], phase="Running", uid="u2")]

    def at(minutes: str, name: str, *firing: Dict[str, Any]) -> Dict[str, Any]:
        return {"eval_time": minutes, "alertname": name, "exp_alerts": list(firing)}

    tests = {
        "rule_files": files, "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": latency + codes + loads + phases, "alert_rule_test": [
            at("4m", "ModelfleetP90OverSLO"),  # over the SLO for 3 minutes: pending, not firing
            at("7m", "ModelfleetP90OverSLO", _fired(dist, bad, "ModelfleetP90OverSLO")),
            at("4m", "ModelfleetServerErrors"),
            at("7m", "ModelfleetServerErrors", _fired(dist, bad, "ModelfleetServerErrors")),
            at("7m", "ModelfleetThrottling", _fired(dist, bad, "ModelfleetThrottling")),
            at("5m", "ModelfleetModelLoadFailed", _fired(dist, bad, "ModelfleetModelLoadFailed"),
               _fired(dist, good, "ModelfleetModelLoadFailed")),
            at("19m", "ModelfleetModelLoadFailed", _fired(dist, bad, "ModelfleetModelLoadFailed")),  # good's is 15m+ old
            at("9m", "ModelfleetPodsPending"),
            at("12m", "ModelfleetPodsPending", _fired(dist, good, "ModelfleetPodsPending")),
        ]}]}
    path = tmp_path / "tests.yaml"
    path.write_text(yaml.safe_dump(tests, sort_keys=False), encoding="utf-8")
    r = _promtool("test", "rules", str(path))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout


@needs_promtool
def test_promtool_unit_test_fails_when_an_alert_is_expected_that_does_not_fire(dist, tmp_path):
    """The unit tests have teeth: healthy series and an expected SLO alert fail."""
    good = "cpu-0000-b"
    tests = {"rule_files": [str(_write_rule_file(tmp_path / "rules.yaml", rule_groups(dist, good)))],
             "evaluation_interval": "1m",
             "tests": [{"interval": "1m", "input_series": _histogram(good, {"0.1": 100, "+Inf": 100}), "alert_rule_test": [
                 {"eval_time": "10m", "alertname": "ModelfleetP90OverSLO",
                  "exp_alerts": [_fired(dist, good, "ModelfleetP90OverSLO")]}]}]}
    path = tmp_path / "tests.yaml"
    path.write_text(yaml.safe_dump(tests, sort_keys=False), encoding="utf-8")
    r = _promtool("test", "rules", str(path))
    assert r.returncode != 0 and "FAILED" in r.stdout + r.stderr, r.stdout + r.stderr


# ---- the dashboard ----
GRAFANA_VARIABLES = {"$namespace": NAMESPACE, "$server": ".*", "$__rate_interval": "5m"}


def dashboard_exprs(docs) -> List[str]:
    out = []
    for target in targets_of(dashboard_json(docs)):
        expr = target["expr"]
        for name in sorted(GRAFANA_VARIABLES, key=len, reverse=True):
            expr = expr.replace(name, GRAFANA_VARIABLES[name])
        assert "$" not in expr, f"a Grafana variable this test does not know: {target['expr']}"
        out.append(expr)
    return out


@needs_promtool
def test_promtool_parses_every_dashboard_query(docs, tmp_path):
    exprs = dashboard_exprs(docs)
    rules = [{"record": f"dashboard:query_{i}", "expr": e} for i, e in enumerate(exprs)]
    r = _promtool("check", "rules", str(_write_rule_file(tmp_path / "dashboard.yaml", [{"name": "dashboard", "rules": rules}])))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{len(rules)} rules found" in r.stdout, r.stdout


def test_dashboard_configmap_panels_and_queries(docs):
    (config_map,) = docs["dashboard.yaml"]
    assert config_map["metadata"]["namespace"] == MONITORING_NAMESPACE
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    board = dashboard_json(docs)
    assert board["uid"] == f"modelfleet-{ENVIRONMENT}"
    panels = [p for p in board["panels"] if p["type"] != "row"]
    cells = set()
    for p in board["panels"]:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= GRID_COLUMNS, p["title"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not mine & cells, f"panel {p['title']!r} overlaps another"
        cells |= mine
    exprs = "\n".join(t["expr"] for p in panels for t in p["targets"])
    for needed in (alerting.COST_RECORD, alerting.SLO_RECORD, "topk(", "histogram_quantile(0.5", "histogram_quantile(0.9",
                   "modelfleet_queue_rows", 'code="429"', "modelfleet_resident_memory_bytes", "modelfleet_memory_budget_bytes"):
        assert needed in exprs, needed
    slo_panels = [p for p in panels if alerting.SLO_RECORD in json.dumps(p["targets"])]
    assert any(p["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"]["mode"] == "line" for p in slo_panels)
    assert {v["name"] for v in board["templating"]["list"]} == {"datasource", "namespace", "server"}


# ---- metric names ----
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset"}


def metric_names(expr: str) -> Set[str]:
    """The metric names a PromQL expression selects: identifiers not called as functions, outside label matchers,
    ranges and label lists."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    s = re.sub(r"\{[^}]*\}", " ", s)
    s = re.sub(r"\[[^\]]*\]", " ", s)
    s = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    names = set()
    for m in re.finditer(r"(?<![\w.])[a-zA-Z_:][a-zA-Z0-9_:]*", s):
        if m.group().lower() in KEYWORDS or s[m.end():].lstrip().startswith("("):
            continue
        names.add(m.group())
    return names


def exported_names() -> Set[str]:
    """Every series name the server's registry writes (counters as _total, histograms as _bucket/_count/_sum)."""
    names = set()
    for family in Metrics(["m"]).registry.collect():
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}.get(family.type, ("",))
        names |= {family.name + s for s in suffixes}
    return names


def test_the_name_extraction_finds_what_a_query_selects():
    assert metric_names('sum by (server, le) (rate(a_b_bucket{x="y{z}"}[5m])) / on (server) group_left max(c:d) > 0.5') \
        == {"a_b_bucket", "c:d"}


def test_every_metric_a_rule_or_the_dashboard_reads_is_exported_or_known(dist, docs):
    rules = [r for p in sorted((dist / "monitoring" / "rules").glob("*.yaml")) for g in rule_groups(dist, p.stem)
             for r in g["rules"]]
    recorded = {r["record"] for r in rules if "record" in r}
    assert recorded == set(alerting.RECORDS)
    used = set().union(*(metric_names(r["expr"]) for r in rules), *(metric_names(e) for e in dashboard_exprs(docs)))
    exported = exported_names()
    unknown = used - exported - set(alerting.KUBE_STATE_METRICS) - recorded
    assert not unknown, f"not exported by serving/metrics.py nor a known kube-state-metrics metric: {sorted(unknown)}"
    # Not vacuous: the queries read the server's histogram, counters and gauges, and kube-state-metrics.
    assert {"modelfleet_request_seconds_bucket", "modelfleet_requests_total", "modelfleet_models_failed",
            "modelfleet_model_load_failures_total", "modelfleet_inflight_requests", "kube_pod_status_phase"} <= used


def test_pending_pods_match_their_server_only():
    pattern = alerting.server_pod_regex("cpu-0000")
    assert re.fullmatch(pattern, "cpu-0000-5d8f9b7c6d-x7k2p")
    assert re.fullmatch(pattern, "cpu-0000-6fb9c-2xq8z")
    for other in ("cpu-0000-b-5d8f9b7c6d-x7k2p", "cpu-00001-5d8f9b7c6d-x7k2p", "cpu-0000-5d8f9b7c6d"):
        assert not re.fullmatch(pattern, other), other


# ---- as Helm charts, with the real helm ----
@pytest.fixture(scope="module")
def helm_tools(tmp_path_factory):
    return extract_tools(tmp_path_factory.mktemp("helm-tools"))


def _helm_ok(tools, *args: str) -> str:
    r = helm(tools, *args)
    assert r.returncode == 0, f"helm {' '.join(args)}:\n{r.stdout}{r.stderr}"
    return r.stdout


def _key(obj: Dict[str, Any]) -> tuple:
    return obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"]


def render_monitoring_charts(tools, dist: Path) -> List[Dict[str, Any]]:
    """`helm lint --strict` and `helm template` (release namespace: the servers') of every monitoring chart."""
    charts_ = sorted(p for p in (dist / "helm").iterdir() if p.name.startswith(monitoring.MONITORING_CHART_PREFIX))
    assert charts_, sorted(p.name for p in (dist / "helm").iterdir())
    rendered: List[Dict[str, Any]] = []
    for chart in charts_:
        meta = yaml.safe_load((chart / "Chart.yaml").read_text())
        assert meta["name"] == f"modelfleet-{chart.name}"
        _helm_ok(tools, "lint", "--strict", "--kube-version", "1.36.0", str(chart))
        text = _helm_ok(tools, "template", chart.name, str(chart), "--namespace", NAMESPACE, "--kube-version", "1.36.0")
        rendered += [d for d in yaml.safe_load_all(text) if d]
    return rendered


def test_real_helm_renders_the_monitoring_chart_to_exactly_dist_monitoring(dist, docs, helm_tools):
    raw = "".join(p.read_text() for p in (dist / "monitoring").rglob("*.yaml"))
    assert "{{server}}" in raw  # Grafana's legends: what Helm would try to evaluate unescaped
    assert [p.name for p in (dist / "helm").iterdir() if p.name.startswith("monitoring-")] == ["monitoring-000"]
    rendered = render_monitoring_charts(helm_tools, dist)
    expected = [o for objs in docs.values() for o in objs]
    assert sorted(rendered, key=_key) == sorted(expected, key=_key)
    (config_map,) = [o for o in rendered if o["kind"] == "ConfigMap"]
    legends = {t.get("legendFormat") for t in targets_of(json.loads(config_map["data"][monitoring.DASHBOARD_FILE]))}
    assert "{{server}}" in legends and "{{model}} ({{server}})" in legends
    rules = [r for o in rendered if o["kind"] == "PrometheusRule" for g in o["spec"]["groups"] for r in g["rules"]]
    assert any("annotations" in r for r in rules)
    summary = json.loads((dist / "summary.json").read_text())["monitoring_charts"]
    assert [e["name"] for e in summary] == ["monitoring-000"] and len(summary[0]["files"]) == len(docs)


def test_helm_literal_keeps_prometheus_templates_through_the_real_helm(helm_tools, tmp_path):
    """Alert text in Prometheus's own template language, `{{ $labels.server }}` and `{{ $value | humanize }}`, comes
    out of Helm as written; unescaped, Helm refuses it (so the escape is what makes it through)."""
    rule = {"apiVersion": monitoring.MONITORING_API, "kind": "PrometheusRule",
            "metadata": {"name": "escaped", "namespace": NAMESPACE},
            "spec": {"groups": [{"name": "g", "rules": [{
                "alert": "A", "expr": 'sum by (server) (up{job="x"}) > 0',
                "annotations": {"summary": "{{ $labels.server }} at {{ $value | humanizePercentage }}",
                                "description": "{{- $labels.pod -}} {{{ odd }}} }} and {{\"quoted\"}}"}}]}]}}
    text = yaml.safe_dump(rule, sort_keys=False)
    chart = tmp_path / "chart"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: escaped\nversion: 1.0.0\n")
    (chart / "templates" / "rule.yaml").write_text(monitoring.helm_literal(text))
    (rendered,) = [d for d in yaml.safe_load_all(_helm_ok(helm_tools, "template", "x", str(chart))) if d]
    assert rendered == rule
    (chart / "templates" / "rule.yaml").write_text(text)
    unescaped = helm(helm_tools, "template", "x", str(chart))
    assert unescaped.returncode != 0 and "labels" in unescaped.stderr, unescaped.stdout + unescaped.stderr


def test_monitoring_charts_split_under_a_budget_and_together_render_everything(helm_tools, tmp_path, docs):
    (tmp_path / "plan.json").write_text(json.dumps(slo_plan()), encoding="utf-8")
    budget = 8 * 1024  # the dashboard alone is larger: a chart of its own, then the rules in several charts
    result = synth(tmp_path / "plan.json", DEV, tmp_path / "dist", instances_path=ROOT / "config" / "instances.yaml",
                   monitoring_budget=budget)
    names = sorted(p.name for p in (tmp_path / "dist" / "helm").iterdir() if p.name.startswith("monitoring-"))
    assert names == [e["name"] for e in result.monitoring_charts] and len(names) >= 3, names
    files = [f for e in result.monitoring_charts for f in e["files"]]
    assert sorted(files) == sorted(f"monitoring/{rel}" for rel in docs)  # every object once
    for entry in result.monitoring_charts:
        assert entry["template_bytes"] <= budget or len(entry["files"]) == 1, entry
    rendered = render_monitoring_charts(helm_tools, tmp_path / "dist")
    assert sorted(rendered, key=_key) == sorted((o for objs in docs.values() for o in objs), key=_key)


def test_a_large_fleet_s_monitoring_charts_stay_far_below_helm_s_release_limit():
    """400 servers (some 1.7 MB of rules): more than one chart at the default budget, each release Secret
    (base64 of gzip of templates and manifest) under a quarter of Helm's 1 MiB."""
    base = slo_plan()
    servers = [_server(f"cpu-{i:04d}", "c5.xlarge", "cpu", [f"m-{i}-a", f"m-{i}-b"], 100.0 + i) for i in range(400)]
    plan = Plan.model_validate({**base, "servers": servers, "instances": {"c5.xlarge": 200}})
    files = monitoring.monitoring_files(plan, load(EnvConfig, DEV))
    groups = monitoring.monitoring_chart_groups(files)
    assert len(groups) >= 2 and sum(len(g) for g in groups) == len(files)
    for group in groups:
        sources = ["monitoring/" + rel[len("templates/"):] for rel in group]
        assert sum(len(t.encode()) for t in group.values()) <= monitoring.MONITORING_TEMPLATE_BUDGET_BYTES
        size = release_size_estimate(group, "---\n".join(files[f] for f in sources), {})
        assert size < c.HELM_RELEASE_LIMIT_BYTES / 4, (sources[0], size)
