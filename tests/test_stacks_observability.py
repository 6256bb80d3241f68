"""stacks/observability.py (issue 16): kube-prometheus-stack, AMP, DCGM exporter, neuron-monitor, Fluent Bit, KEDA.

One synth per module (tests/observability_app.py, a process of its own, no AWS credentials) of two real
platforms built as stacks/app.py builds them: `staging` with its reviewed plan (cpu, gpu and inf1 node groups)
and `observability: {amp: true, log_retention_days: 90}` as an override, and `dev` with a plan the planner
makes from cpu-only profiles, with the config's own observability block (amp off, 30 days). cdk-nag runs in
that synth with the project's acknowledgements; checkov, where `.venv-checkov` exists, on its cluster templates.
The serving stacks install the monitoring charts after kube-prometheus-stack and every server release after KEDA.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Set

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
CHECKOV = ROOT / ".venv-checkov" / "bin" / "checkov"
SYSTEM = {"modelfleet.io/pool": "system"}
PLAN_TOLERATION = {"key": "modelfleet.io/plan-node", "operator": "Exists", "effect": "NoSchedule"}
HELM = "Custom::AWSCDK-EKS-HelmChart"

pytestmark = pytest.mark.timeout(600)


def _env() -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update({"AWS_CONFIG_FILE": "/nonexistent/aws-config", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-creds",
                "AWS_EC2_METADATA_DISABLED": "true", "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20"})
    return env


def _run(args: List[str], **kw: Any) -> subprocess.CompletedProcess:
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, env=_env(), **kw)
    assert done.returncode == 0, f"{' '.join(map(str, args))}: {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    return done


# ---- pure parts, no synth ---------------------------------------------------------------------------------

def test_config_observability_block_defaults_and_retention_check():
    from charts.config import CLOUDWATCH_RETENTION_DAYS, EnvConfig
    from contracts.loading import ContractError, parse

    data = yaml.safe_load((ROOT / "config" / "prod.yaml").read_text())
    data.pop("observability", None)
    config = parse(EnvConfig, data, "prod without observability")
    assert (config.observability.amp, config.observability.log_retention_days) == (False, 30)
    for env in ("dev", "staging", "prod"):
        parse(EnvConfig, yaml.safe_load((ROOT / "config" / f"{env}.yaml").read_text()), env)
    assert parse(EnvConfig, {**data, "observability": {"amp": True, "log_retention_days": 731}}, "x").observability.amp
    with pytest.raises(ContractError, match="45 is not a CloudWatch Logs retention period.*30, 60"):
        parse(EnvConfig, {**data, "observability": {"log_retention_days": 45}}, "x")
    with pytest.raises(ContractError, match="retention_days"):
        parse(EnvConfig, {**data, "observability": {"retention_days": 30}}, "x")  # a misspelt key is refused
    assert 30 in CLOUDWATCH_RETENTION_DAYS and 3653 in CLOUDWATCH_RETENTION_DAYS and 45 not in CLOUDWATCH_RETENTION_DAYS


def test_every_cloudwatch_period_maps_to_a_cdk_retention():
    from aws_cdk import aws_logs as logs

    from charts.config import CLOUDWATCH_RETENTION_DAYS
    from stacks.observability import retention_days

    names = {retention_days(d) for d in CLOUDWATCH_RETENTION_DAYS}
    assert len(names) == len(CLOUDWATCH_RETENTION_DAYS) and logs.RetentionDays.INFINITE not in names
    assert retention_days(30) == logs.RetentionDays.ONE_MONTH and retention_days(1827) == logs.RetentionDays.FIVE_YEARS
    with pytest.raises(ValueError, match="log_retention_days 45"):
        retention_days(45)


def test_prometheus_url_names_the_service_of_the_release_the_stacks_install():
    from charts.constants import PROMETHEUS_SERVICE, prometheus_url
    from stacks.observability import PROMETHEUS_RELEASE

    # kube-prometheus-stack names its Service <fullname>-prometheus; fullname is the release name when the
    # release name contains the chart's name (checked with `helm template` of chart 88.5.3).
    assert f"{PROMETHEUS_RELEASE}-prometheus" == PROMETHEUS_SERVICE
    assert prometheus_url("monitoring") == "http://kube-prometheus-stack-prometheus.monitoring.svc:9090"


def test_values_place_controllers_on_system_nodes_and_agents_where_they_belong():
    from stacks.observability import (
        RemoteWrite,
        dcgm_exporter_values,
        fluent_bit_values,
        keda_values,
        kube_prometheus_values,
        neuron_monitor_objects,
    )

    plain = kube_prometheus_values(cluster_name="c")
    for path in (("prometheusOperator",), ("prometheusOperator", "admissionWebhooks", "patch"),
                 ("prometheus", "prometheusSpec"), ("alertmanager", "alertmanagerSpec"), ("grafana",),
                 ("kube-state-metrics",)):
        node = plain
        for key in path:
            node = node[key]
        assert node["nodeSelector"] == SYSTEM, path
    assert plain["prometheus-node-exporter"]["tolerations"] == [{"operator": "Exists"}]  # every node
    assert plain["grafana"]["sidecar"]["dashboards"] == {"enabled": True, "searchNamespace": "ALL"}
    spec = plain["prometheus"]["prometheusSpec"]
    assert "remoteWrite" not in spec and "annotations" not in plain["prometheus"]["serviceAccount"]
    rw = RemoteWrite(url="https://aps/ws/api/v1/remote_write", region="eu-west-1", role_arn="arn:role")
    amp = kube_prometheus_values(cluster_name="c", remote_write=rw)
    assert amp["prometheus"]["prometheusSpec"]["remoteWrite"][0]["sigv4"] == {"region": "eu-west-1"}
    assert amp["prometheus"]["serviceAccount"]["annotations"] == {"eks.amazonaws.com/role-arn": "arn:role"}
    assert keda_values()["nodeSelector"] == SYSTEM
    dcgm = dcgm_exporter_values()
    assert dcgm["nodeSelector"] == {"modelfleet.io/processor": "gpu"} and dcgm["tolerations"] == [PLAN_TOLERATION]
    fb = fluent_bit_values(region="r", log_group_name="/g", role_arn="arn:fb")
    assert fb["cloudWatchLogs"]["autoCreateGroup"] is False and fb["tolerations"] == [{"operator": "Exists"}]
    ds, monitor = neuron_monitor_objects("mon", ["inf2", "inf1"])
    terms = ds["spec"]["template"]["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert terms == [{"matchExpressions": [{"key": "modelfleet.io/processor", "operator": "In",
                                            "values": ["inf1", "inf2"]}]}]
    assert monitor["kind"] == "PodMonitor" and monitor["spec"]["selector"]["matchLabels"] == \
        ds["spec"]["selector"]["matchLabels"] == ds["spec"]["template"]["metadata"]["labels"]


def test_the_stacks_look_for_the_monitoring_charts_charts_synth_writes():
    from charts.monitoring import MONITORING_CHART_PREFIX, monitoring_chart_name
    from stacks.serving import MONITORING_CHART_PREFIX as STACKS_PREFIX

    assert STACKS_PREFIX == MONITORING_CHART_PREFIX and monitoring_chart_name(0).startswith(STACKS_PREFIX)


# ---- the module's synth -----------------------------------------------------------------------------------

@dataclass
class Synth:
    out: Path
    templates: Dict[str, dict]
    manifest: dict
    dists: Dict[str, Path]  # env -> the charts synth output its stacks were built from


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Synth:
    tmp = tmp_path_factory.mktemp("observability")
    _run([PY, "-m", "packing", "generate", "--kind", "mixed", "--models", "8", "--seed", "5", "--out", str(tmp / "m.yaml")])
    catalogue = yaml.safe_load((tmp / "m.yaml").read_text())
    for model in catalogue["models"]:
        model["profiles"] = {"cpu": model["profiles"]["cpu"]}
    (tmp / "cpu.yaml").write_text(yaml.safe_dump(catalogue))
    _run([PY, "-m", "packing", "plan", "--models", str(tmp / "cpu.yaml"), "--out", str(tmp / "cpu-plan.json"),
          "--time-limit", "5", "--quiet"])
    cases = [
        {"env": "staging", "plan": str(ROOT / "plans" / "staging.json"), "dist_cache": str(tmp / "dist-staging"),
         "overrides": {"observability": {"amp": True, "log_retention_days": 90}}},
        {"env": "dev", "plan": str(tmp / "cpu-plan.json"), "dist_cache": str(tmp / "dist-dev")},
    ]
    out = tmp / "cdk.out"
    _run([PY, "-m", "tests.observability_app", str(out), json.dumps(cases)], timeout=540)
    manifest = json.loads((out / "manifest.json").read_text())
    templates = {aid: json.loads((out / art["properties"]["templateFile"]).read_text())
                 for aid, art in manifest["artifacts"].items() if art["type"] == "aws:cloudformation:stack"}
    # stacks.app.ensure_dist writes each environment's output to <dist_cache>/<env>.
    return Synth(out=out, templates=templates, manifest=manifest,
                 dists={c["env"]: Path(c["dist_cache"]) / c["env"] for c in cases})


def _ref(logical_id: str, attribute: str) -> str:
    return f"<{logical_id}.{attribute}>"


def _text(value: Any) -> str:
    """A template string (or Fn::Join of strings and references) as text, each reference as <LogicalId.Attr>."""
    if isinstance(value, str):
        return value
    if "Fn::Join" in value:
        sep, parts = value["Fn::Join"]
        return sep.join(_text(p) for p in parts)
    if "Fn::GetAtt" in value:
        return _ref(*value["Fn::GetAtt"])
    if "Ref" in value:
        return f"<{value['Ref']}>"
    return f"<{next(iter(value))}>"  # another intrinsic (Fn::Select of the OIDC issuer): its name only


def _charts(template: dict) -> Dict[str, dict]:
    return {r["Properties"]["Release"]: r["Properties"] for r in template["Resources"].values() if r["Type"] == HELM}


def _values(chart: dict) -> dict:
    return json.loads(_text(chart["Values"]))


def _ours(template: dict, type_: str) -> Dict[str, dict]:
    return {k: r for k, r in template["Resources"].items() if r["Type"] == type_ and k.startswith("Observability")}


def _one(resources: Dict[str, dict], prefix: str) -> tuple:
    hits = [(k, r) for k, r in resources.items() if k.startswith(prefix)]
    assert len(hits) == 1, (prefix, list(resources))
    return hits[0]


def test_the_accelerated_plan_has_gpu_and_neuron_nodes_and_the_other_none(synth):
    def types(name: str) -> set:
        return {r["Properties"]["InstanceTypes"][0] for r in synth.templates[name]["Resources"].values()
                if r["Type"] == "AWS::EKS::Nodegroup"}

    staging, dev = types("modelfleet-staging-nodes"), types("modelfleet-dev-nodes")
    assert any(t.startswith("g4dn.") for t in staging) and any(t.startswith("inf1.") for t in staging)
    assert dev and all(t.startswith("c5.") for t in dev)


def test_each_chart_pinned_in_its_namespace(synth):
    from stacks.observability import CHARTS
    from stacks.settings import load_env

    expected = {"kube-prometheus-stack": ("88.5.3", "https://prometheus-community.github.io/helm-charts", "monitoring"),
                "dcgm-exporter": ("4.8.2", "https://nvidia.github.io/dcgm-exporter/helm-charts", "monitoring"),
                "aws-for-fluent-bit": ("0.2.0", "https://aws.github.io/eks-charts", "amazon-cloudwatch"),
                "keda": ("2.20.2", "https://kedacore.github.io/charts", "keda")}
    assert {name: (p["version"], p["repository"]) for name, p in CHARTS.items()} == \
        {name: e[:2] for name, e in expected.items()}
    for env in ("staging", "dev"):
        charts = _charts(synth.templates[f"modelfleet-{env}-cluster"])
        # Prometheus runs in the namespace the servers' NetworkPolicy admits for scraping.
        assert load_env(env).config.monitoring_namespace == charts["kube-prometheus-stack"]["Namespace"]
        for release in ("kube-prometheus-stack", "aws-for-fluent-bit", "keda"):
            p = charts[release]
            assert (p["Version"], p["Repository"], p["Namespace"], p["Chart"]) == (*expected[release], release), release
            assert p["Wait"] is True
    gpu = _charts(synth.templates["modelfleet-staging-cluster"])["dcgm-exporter"]
    assert (gpu["Version"], gpu["Repository"], gpu["Namespace"]) == expected["dcgm-exporter"]


def test_controllers_on_system_nodes_in_the_templates(synth):
    charts = _charts(synth.templates["modelfleet-dev-cluster"])
    kps = _values(charts["kube-prometheus-stack"])
    assert kps["prometheusOperator"]["nodeSelector"] == SYSTEM
    assert kps["prometheusOperator"]["admissionWebhooks"]["patch"]["nodeSelector"] == SYSTEM
    assert kps["prometheus"]["prometheusSpec"]["nodeSelector"] == SYSTEM
    assert kps["alertmanager"]["alertmanagerSpec"]["nodeSelector"] == SYSTEM
    assert kps["grafana"]["nodeSelector"] == kps["kube-state-metrics"]["nodeSelector"] == SYSTEM
    spec = kps["prometheus"]["prometheusSpec"]
    assert spec["podMonitorSelectorNilUsesHelmValues"] is False and spec["ruleSelectorNilUsesHelmValues"] is False
    assert spec["serviceMonitorSelectorNilUsesHelmValues"] is False  # the DCGM exporter's ServiceMonitor
    assert (spec["retention"], spec["retentionSize"], spec["storageSpec"]) == ("7d", "15GB", {"emptyDir": {"sizeLimit": "20Gi"}})
    assert kps["grafana"]["sidecar"]["dashboards"] == {"enabled": True, "searchNamespace": "ALL"}
    assert _values(charts["keda"])["nodeSelector"] == SYSTEM
    # Per-node agents on every node: the plan nodes' taints are tolerated.
    assert _values(charts["aws-for-fluent-bit"])["tolerations"] == [{"operator": "Exists"}]
    assert kps["prometheus-node-exporter"]["tolerations"] == [{"operator": "Exists"}]
    # Every chart waits for the system nodes it is placed on.
    group = next(k for k, r in synth.templates["modelfleet-dev-cluster"]["Resources"].items()
                 if r["Type"] == "AWS::EKS::Nodegroup" and r["Properties"]["Labels"] == SYSTEM)
    for key, r in _ours(synth.templates["modelfleet-dev-cluster"], HELM).items():
        assert group in r["DependsOn"], key


def test_dcgm_exporter_only_with_gpu_nodes(synth):
    staging = synth.templates["modelfleet-staging-cluster"]
    gpu = _charts(staging)["dcgm-exporter"]
    values = _values(gpu)
    assert values["nodeSelector"] == {"modelfleet.io/processor": "gpu"}
    assert values["tolerations"] == [PLAN_TOLERATION] and values["serviceMonitor"]["enabled"] is True
    prometheus, _ = _one(_ours(staging, HELM), "ObservabilityPrometheusChart")
    dcgm_key, dcgm = _one(_ours(staging, HELM), "ObservabilityGpuMetricsChart")
    assert prometheus in dcgm["DependsOn"]  # the ServiceMonitor CRD comes with kube-prometheus-stack
    assert "dcgm-exporter" not in _charts(synth.templates["modelfleet-dev-cluster"])


def _manifest_objects(resource: dict) -> List[dict]:
    return json.loads(_text(resource["Properties"]["Manifest"]))


def test_neuron_monitor_only_with_neuron_nodes(synth):
    from stacks.observability import NEURON_MONITOR_IMAGE

    staging = synth.templates["modelfleet-staging-cluster"]
    key, manifest = _one(_ours(staging, "Custom::AWSCDK-EKS-KubernetesResource"), "ObservabilityNeuronMetrics")
    objs = {o["kind"]: o for o in _manifest_objects(manifest)}
    assert set(objs) == {"DaemonSet", "PodMonitor"}
    pod = objs["DaemonSet"]["spec"]["template"]["spec"]
    assert objs["DaemonSet"]["metadata"]["namespace"] == objs["PodMonitor"]["metadata"]["namespace"] == "monitoring"
    assert NEURON_MONITOR_IMAGE == "public.ecr.aws/neuron/neuron-monitor:1.3.0" == pod["containers"][0]["image"]
    expr = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert expr[0]["matchExpressions"] == [{"key": "modelfleet.io/processor", "operator": "In", "values": ["inf1"]}]
    assert pod["tolerations"] == [PLAN_TOLERATION]
    assert pod["containers"][0]["ports"] == [{"name": "metrics", "containerPort": 8000}]
    assert objs["PodMonitor"]["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    prometheus, _ = _one(_ours(staging, HELM), "ObservabilityPrometheusChart")
    assert prometheus in manifest["DependsOn"]  # namespace and PodMonitor CRD first
    dev = json.dumps(synth.templates["modelfleet-dev-cluster"])
    assert "neuron-monitor" not in dev and "NeuronMetrics" not in dev


def test_container_log_group_retention_encryption_and_chart(synth):
    for env, days in (("staging", 90), ("dev", 30)):
        t = synth.templates[f"modelfleet-{env}-cluster"]
        key, group = _one(_ours(t, "AWS::Logs::LogGroup"), "ObservabilityContainerLogsLogGroup")
        name = f"/aws/eks/modelfleet-{env}/containers"
        p = group["Properties"]
        assert (p["LogGroupName"], p["RetentionInDays"]) == (name, days)
        kms_key, key_resource = _one(_ours(t, "AWS::KMS::Key"), "ObservabilityContainerLogsKey")
        assert p["KmsKeyId"] == {"Fn::GetAtt": [kms_key, "Arn"]} and key_resource["Properties"]["EnableKeyRotation"]
        logs_statement = next(s for s in key_resource["Properties"]["KeyPolicy"]["Statement"]
                              if s.get("Sid") == "CloudWatchLogsForTheContainerLogGroup")
        assert logs_statement["Principal"] == {"Service": "logs.us-east-1.amazonaws.com"}
        assert _text(logs_statement["Condition"]["ArnEquals"]["kms:EncryptionContext:aws:logs:arn"]) == \
            f"arn:aws:logs:us-east-1:{'222222222222' if env == 'staging' else '111111111111'}:log-group:{name}"
        values = _values(_charts(t)["aws-for-fluent-bit"])
        cw = values["cloudWatchLogs"]
        assert (cw["enabled"], cw["autoCreateGroup"], cw["logGroupName"], cw["region"]) == (True, False, name, "us-east-1")
        role, _ = _one(_ours(t, "AWS::IAM::Role"), "ObservabilityContainerLogsWriterRole")
        assert values["serviceAccount"]["annotations"] == {"eks.amazonaws.com/role-arn": _ref(role, "Arn")}


def _trust(template: dict, prefix: str) -> Dict[str, str]:
    """The role's trust conditions {"<issuer>:sub": ..., "<issuer>:aud": ...} (the issuer as a placeholder)."""
    _, conditions = _one({k: r for k, r in template["Resources"].items() if r["Type"] == "Custom::AWSCDKCfnJson"},
                         prefix)
    return json.loads(_text(conditions["Properties"]["Value"]))


def test_iam_least_privilege(synth):
    for env in ("staging", "dev"):
        t = synth.templates[f"modelfleet-{env}-cluster"]
        policies = _ours(t, "AWS::IAM::Policy")
        for key, policy in policies.items():  # no wildcard anywhere in ours
            for s in policy["Properties"]["PolicyDocument"]["Statement"]:
                actions = s["Action"] if isinstance(s["Action"], list) else [s["Action"]]
                assert all("*" not in a for a in actions) and s["Resource"] != "*", (key, s)
        group, _ = _one(_ours(t, "AWS::Logs::LogGroup"), "ObservabilityContainerLogsLogGroup")
        _, logs_policy = _one(policies, "ObservabilityContainerLogsWriterRoleDefaultPolicy")
        assert logs_policy["Properties"]["PolicyDocument"]["Statement"] == [{
            "Action": ["logs:CreateLogStream", "logs:DescribeLogStreams", "logs:PutLogEvents"], "Effect": "Allow",
            "Resource": {"Fn::GetAtt": [group, "Arn"]}, "Sid": "WriteContainerLogs"}]
        trust = _trust(t, "ObservabilityContainerLogsWriterTrustConditions")
        assert {k.rsplit(":", 1)[1]: v for k, v in trust.items()} == {
            "sub": "system:serviceaccount:amazon-cloudwatch:aws-for-fluent-bit", "aud": "sts.amazonaws.com"}
    t = synth.templates["modelfleet-staging-cluster"]
    workspace, _ = _one(_ours(t, "AWS::APS::Workspace"), "ObservabilityAmpWorkspace")
    _, amp_policy = _one(_ours(t, "AWS::IAM::Policy"), "ObservabilityAmpWriterRoleDefaultPolicy")
    assert amp_policy["Properties"]["PolicyDocument"]["Statement"] == [{
        "Action": "aps:RemoteWrite", "Effect": "Allow", "Resource": {"Fn::GetAtt": [workspace, "Arn"]}, "Sid": "RemoteWrite"}]
    trust = _trust(t, "ObservabilityAmpWriterTrustConditions")
    assert {k.rsplit(":", 1)[1]: v for k, v in trust.items()} == {
        "sub": "system:serviceaccount:monitoring:kube-prometheus-stack-prometheus", "aud": "sts.amazonaws.com"}


def test_amp_on_and_off(synth):
    staging = synth.templates["modelfleet-staging-cluster"]
    workspace, ws = _one(_ours(staging, "AWS::APS::Workspace"), "ObservabilityAmpWorkspace")
    assert ws["Properties"]["Alias"] == "modelfleet-staging"
    role, _ = _one(_ours(staging, "AWS::IAM::Role"), "ObservabilityAmpWriterRole")
    kps = _values(_charts(staging)["kube-prometheus-stack"])
    assert kps["prometheus"]["prometheusSpec"]["remoteWrite"] == [{
        "url": _ref(workspace, "PrometheusEndpoint") + "api/v1/remote_write", "sigv4": {"region": "us-east-1"},
        "queueConfig": {"maxSamplesPerSend": 1000, "maxShards": 200, "capacity": 2500}}]
    assert kps["prometheus"]["serviceAccount"] == {"create": True, "name": "kube-prometheus-stack-prometheus",
                                                   "annotations": {"eks.amazonaws.com/role-arn": _ref(role, "Arn")}}
    _, chart = _one(_ours(staging, HELM), "ObservabilityPrometheusChart")
    assert any(d.startswith("ObservabilityAmpWriterRole") for d in chart["DependsOn"])  # the role can write first
    dev = synth.templates["modelfleet-dev-cluster"]
    assert not _ours(dev, "AWS::APS::Workspace") and "aps:" not in json.dumps(dev)
    plain = _values(_charts(dev)["kube-prometheus-stack"])
    assert "remoteWrite" not in plain["prometheus"]["prometheusSpec"]
    assert plain["prometheus"]["serviceAccount"] == {"create": True, "name": "kube-prometheus-stack-prometheus"}


def test_cdk_nag_has_no_unacknowledged_finding(synth):
    from stacks.nag import report_findings

    report_path = synth.out / "validation-report.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else {"pluginReports": []}
    assert report_findings(report) == []


def test_checkov_passes_every_resource_of_ours(synth, tmp_path):
    if not CHECKOV.exists():
        pytest.skip("no .venv-checkov: `make checkov-env` creates it")
    for env in ("staging", "dev"):
        (tmp_path / f"modelfleet-{env}-cluster.template.json").write_text(
            json.dumps(synth.templates[f"modelfleet-{env}-cluster"]))
    # Not --quiet: the passed checks show that checkov read our resources at all.
    done = subprocess.run([str(CHECKOV), "-d", str(tmp_path), "--framework", "cloudformation", "-o", "json",
                           "--compact"], capture_output=True, text=True, timeout=400,
                          env={**os.environ, "BC_SKIP_MAPPING": "TRUE"})
    reports = json.loads(done.stdout or "[]")
    reports = reports if isinstance(reports, list) else [reports]
    assert reports and all("results" in r for r in reports), done.stderr[-2000:]
    passed = [f["resource"] for r in reports for f in r["results"]["passed_checks"]]
    failed = [(f["check_id"], f["resource"]) for r in reports for f in r["results"]["failed_checks"]]
    assert any(".ObservabilityContainerLogsLogGroup" in p for p in passed)  # checkov did read our resources
    assert [f for f in failed if ".Observability" in f[1]] == []


# ---- the serving stacks: monitoring charts and server releases, in order -----------------------------------

def _stacks_before(synth: Synth, stack: str) -> Set[str]:
    """Every stack CloudFormation deploys before `stack` (its dependencies in the cloud assembly, transitively)."""
    artifacts = synth.manifest["artifacts"]
    seen: Set[str] = set()
    todo = list(artifacts[stack].get("dependencies", []))
    while todo:
        dep = todo.pop()
        if dep not in seen and artifacts.get(dep, {}).get("type") == "aws:cloudformation:stack":
            seen.add(dep)
            todo += artifacts[dep].get("dependencies", [])
    return seen


def _after(synth: Synth, stack: str, resource: dict, first_stack: str, first: str) -> bool:
    """Whether CloudFormation creates `resource` (of `stack`) only once `first` (of `first_stack`) is complete: a
    DependsOn within a stack, a stack dependency across stacks."""
    if stack == first_stack:
        return first in resource.get("DependsOn", [])
    return first_stack in _stacks_before(synth, stack)


def _releases(template: dict, prefix: str) -> Dict[str, dict]:
    return {r["Properties"]["Release"]: r for r in template["Resources"].values()
            if r["Type"] == HELM and r["Properties"]["Release"].startswith(prefix)}


def _asset_folder(synth: Synth, release: dict) -> Path:
    """The staged folder in cdk.out that a release's chart asset uploads (named by the asset's hash)."""
    (digest,) = set(re.findall(r"([0-9a-f]{64})\.zip", json.dumps(release["Properties"]["ChartAssetURL"])))
    return synth.out / f"asset.{digest}"


def test_monitoring_charts_are_released_in_the_servers_namespace_after_kube_prometheus_stack(synth):
    from stacks.settings import load_env

    for env in ("staging", "dev"):
        serving_name, cluster_name = f"modelfleet-{env}-serving", f"modelfleet-{env}-cluster"
        serving = synth.templates[serving_name]
        charts = sorted(p.name for p in (synth.dists[env] / "helm").glob("monitoring-*"))
        releases = _releases(serving, "modelfleet-monitoring-")
        assert charts and sorted(releases) == [f"modelfleet-{name}" for name in charts], (charts, sorted(releases))
        prometheus, chart = _one(_ours(synth.templates[cluster_name], HELM), "ObservabilityPrometheusChart")
        assert chart["Properties"]["Wait"] is True  # complete means its CRDs and the operator's webhook are there
        namespace_manifest, _ = _one({k: r for k, r in serving["Resources"].items()
                                      if r["Type"] == "Custom::AWSCDK-EKS-KubernetesResource"}, "ClusterWide")
        for name, release in releases.items():
            assert release["Properties"]["Namespace"] == load_env(env).config.namespace, name
            assert _after(synth, serving_name, release, serving_name, namespace_manifest), name  # the Namespace first
            assert _after(synth, serving_name, release, cluster_name, prometheus), name
            # The asset is the monitoring chart folder charts synth wrote, as written.
            staged = _asset_folder(synth, release)
            folder = synth.dists[env] / "helm" / name[len("modelfleet-"):]
            assert yaml.safe_load((staged / "Chart.yaml").read_text()) == yaml.safe_load((folder / "Chart.yaml").read_text())
            assert sorted(str(p.relative_to(staged)) for p in staged.rglob("*.yaml")) == \
                sorted(str(p.relative_to(folder)) for p in folder.rglob("*.yaml"))
            assert "{{ \"{{\" }}server}}" in (staged / "templates" / "dashboard.yaml").read_text()  # escaped for Helm


def test_every_server_release_comes_after_keda(synth):
    """Accelerator servers' charts hold KEDA ScaledObjects: the KEDA chart (its CRD) is complete first."""
    for env in ("staging", "dev"):
        serving_name, cluster_name = f"modelfleet-{env}-serving", f"modelfleet-{env}-cluster"
        keda, chart = _one(_ours(synth.templates[cluster_name], HELM), "ObservabilityKedaChart")
        assert chart["Properties"]["Release"] == "keda" and chart["Properties"]["Wait"] is True
        releases = _releases(synth.templates[serving_name], "modelfleet-servers-")
        assert len(releases) == len(list((synth.dists[env] / "helm").glob("servers-*"))) >= 1
        for name, release in releases.items():
            assert _after(synth, serving_name, release, cluster_name, keda), name
        # The check tells orders apart: the cluster stack does not wait for the serving stack.
        assert not _after(synth, cluster_name, chart, serving_name, next(iter(releases.values()))["Properties"]["Release"])
