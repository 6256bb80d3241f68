"""Autoscaling on the queue: accelerator servers get a KEDA ScaledObject on their requests in flight, cpu
servers keep the CPU HPA (charts/autoscaling.py). Plans come from the real planner over a small catalogue
with a gpu, an inf1 and a cpu server (one gpu model hot enough for three replicas); the targets are held to
Little's law on the catalogue's own figures through packing's latency model, which the charts never import."""
from __future__ import annotations

import copy
import json
import math
import shutil
import subprocess
from pathlib import Path
from typing import Any, Dict, List

import jsonschema
import pytest
import yaml

import charts  # noqa: F401  (quiets jsii's banner)
from charts import autoscaling
from charts.cli import main as charts_main
from charts.config import EnvConfig
from charts.synth import synth
from contracts import ContractError, InstanceCatalogue, ModelCatalogue, Plan, load, parse
from packing.model.latency import erlang_c as packing_erlang_c
from packing.model.latency import wait_of
from packing.model.profiles import resolve_profiles
from packing.model.resources import PackingOptions
from packing.planner import plan_servers
from tests.crd_schemas import served_schemas
from tests.shared_checker import run_check_manifests

ROOT = Path(__file__).resolve().parent.parent
DEV = ROOT / "config" / "dev.yaml"
INSTANCES = ROOT / "config" / "instances.yaml"
KEDA_CRDS = ROOT / "tests" / "crds" / "keda-v2.20.2"
TYPES = ("c5.xlarge", "g4dn.xlarge", "inf1.xlarge")


def profile(p50_ms: float, device_mib: float = 400, host_mib: float = 300) -> dict:
    # p90 = p50: constant service, as a traced model nearly has (the case the target's formula is exact for).
    return {"device_memory_mib": device_mib, "host_memory_mib": host_mib, "latency_ms": p50_ms, "latency_p90_ms": p50_ms}


MODELS = [
    {"id": "gpu-hot", "rps": 200.0, "profiles": {"gpu": profile(10.0)}},  # 2 GPUs' worth: 3 replicas at 0.83
    {"id": "gpu-a", "rps": 30.0, "profiles": {"gpu": profile(10.0)}},
    {"id": "inf-a", "rps": 100.0, "profiles": {"inf1": profile(12.0)}},
    {"id": "cpu-a", "rps": 5.0, "profiles": {"cpu": profile(60.0, device_mib=0)}},
]


def catalogue() -> InstanceCatalogue:
    return load(InstanceCatalogue, INSTANCES)


def make_plan(models: List[dict], **options: Any) -> Plan:
    specs = parse(ModelCatalogue, {"models": models}, "models.yaml").models
    profiles, sources = resolve_profiles(specs)
    opts = PackingOptions(only_instance_types=TYPES, time_limit_s=10, **options)
    return plan_servers(specs, profiles, sources, catalogue(), opts).plan


def write_plan(folder: Path, plan: Plan) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "plan.json"
    path.write_text(json.dumps(plan.to_json_dict()), encoding="utf-8")
    return path


def write_config(folder: Path, **autoscaling_choice: str) -> Path:
    data = yaml.safe_load(DEV.read_text(encoding="utf-8"))
    data["autoscaling"] = autoscaling_choice
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def manifests(dist: Path) -> List[dict]:
    docs: List[dict] = []
    for p in sorted((dist / "manifests").rglob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(p.read_text(encoding="utf-8")) if d]
    return docs


def autoscalers_of(docs: List[dict], deployment: str) -> List[dict]:
    return [d for d in docs if d["kind"] in ("HorizontalPodAutoscaler", "ScaledObject")
            and d["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment}]


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    """The plan synthesized with the default choice (dev.yaml: keda for accelerators, hpa for cpu) and with
    every server on the CPU HPA, to compare the two."""
    d = tmp_path_factory.mktemp("autoscaling")
    plan = make_plan(MODELS)
    plan_path = write_plan(d, plan)
    synth(plan_path, DEV, d / "dist", instances_path=INSTANCES)
    all_hpa = write_config(d, accelerator="hpa", cpu="hpa")
    synth(plan_path, all_hpa, d / "dist-hpa", instances_path=INSTANCES)
    return {"plan": plan, "plan_path": plan_path, "dir": d, "docs": manifests(d / "dist"),
            "hpa_docs": manifests(d / "dist-hpa")}


def test_the_plan_has_what_the_tests_need(planned):
    servers = planned["plan"].servers
    assert {s.processor for s in servers} == {"cpu", "gpu", "inf1"}
    assert max(s.replicas for s in servers if s.processor == "gpu") == 3


def test_accelerator_servers_get_a_scaled_object_and_cpu_servers_keep_their_hpa(planned):
    docs = planned["docs"]
    for s in planned["plan"].servers:
        (scaler,) = autoscalers_of(docs, s.id)  # one autoscaler per Deployment, never two
        assert scaler["kind"] == ("HorizontalPodAutoscaler" if s.processor == "cpu" else "ScaledObject"), s.id
        (deployment,) = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == s.id]
        assert "replicas" not in deployment["spec"]
    assert [d["metadata"]["name"] for d in docs if d["kind"] == "HorizontalPodAutoscaler"] == ["cpu-0000"]


def test_min_is_the_plan_s_replicas_and_max_what_the_node_group_holds(planned):
    """max: the node group grows to ceil(nodes x burst_factor); each spare node holds its devices' worth of the
    server's pods; never above replicas.hpa_max (dev: 3, burst 2). The same maximum the HPA has."""
    config = load(EnvConfig, DEV)
    plan, types = planned["plan"], catalogue().by_name()
    hpas = {d["metadata"]["name"]: d for d in planned["hpa_docs"] if d["kind"] == "HorizontalPodAutoscaler"}
    objects = {d["metadata"]["name"]: d for d in planned["docs"] if d["kind"] == "ScaledObject"}
    assert set(objects) == {s.id for s in plan.servers if s.processor != "cpu"}
    for s in plan.servers:
        if s.id not in objects:
            continue
        nodes = plan.instances[s.instance_type]
        spare = math.ceil(nodes * config.stacks.burst_factor) - nodes
        room = s.replicas + spare * (types[s.instance_type].devices // s.requests.accelerator.count)
        spec = objects[s.id]["spec"]
        assert spec["minReplicaCount"] == s.replicas
        assert spec["maxReplicaCount"] == max(s.replicas, min(config.replicas.hpa_max, room))
        assert spec["maxReplicaCount"] == hpas[s.id]["spec"]["maxReplicas"]
        assert spec["minReplicaCount"] == hpas[s.id]["spec"]["minReplicas"]


def test_the_trigger_reads_requests_in_flight_from_prometheus_and_scales_as_the_hpa_does(planned):
    config = load(EnvConfig, DEV)
    hpas = {d["metadata"]["name"]: d for d in planned["hpa_docs"] if d["kind"] == "HorizontalPodAutoscaler"}
    for so in (d for d in planned["docs"] if d["kind"] == "ScaledObject"):
        name, spec = so["metadata"]["name"], so["spec"]
        assert so["apiVersion"] == "keda.sh/v1alpha1" and so["metadata"]["namespace"] == config.namespace
        (trigger,) = spec["triggers"]
        assert trigger["type"] == "prometheus" and trigger["metricType"] == "AverageValue"
        meta = trigger["metadata"]
        assert meta["serverAddress"] == \
            f"http://kube-prometheus-stack-prometheus.{config.monitoring_namespace}.svc:9090"
        assert meta["query"] == f'sum(modelfleet_inflight_requests{{namespace="{config.namespace}",server="{name}"}})'
        assert float(meta["threshold"]) >= 1
        # The HPA's behaviour, and KEDA polling at the HPA controller's 15 s.
        assert spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"] == hpas[name]["spec"]["behavior"]
        assert spec["pollingInterval"] == 15
        assert spec["cooldownPeriod"] == hpas[name]["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"]


def expected_inflight(server, models: List[dict], processor_cores: int, request_cpu_ms: float) -> float:
    """Little's law on the catalogue's figures: the pod's rate scaled to its cap, times service + M/G/c wait
    (packing/model/latency.py) + the host's work per request."""
    rate = sum(m["rps"] for m in models if m["id"] in server.models) / server.replicas
    mean = sum(m["rps"] * m["profiles"][server.processor]["latency_ms"] for m in models if m["id"] in server.models) \
        / server.replicas / rate
    rate_at_cap = rate * server.utilisation_cap / server.predicted.utilisation
    wait = wait_of(processor_cores, rate_at_cap, mean, mean * mean)
    return rate_at_cap * (mean + wait.mean_ms + request_cpu_ms) / 1000.0


def test_the_target_is_little_s_law_at_the_cap(planned):
    cat = catalogue()
    types = cat.by_name()
    objects = {d["metadata"]["name"]: d for d in planned["docs"] if d["kind"] == "ScaledObject"}
    for s in planned["plan"].servers:
        if s.processor == "cpu":
            continue
        want = expected_inflight(s, MODELS, types[s.instance_type].cores_per_device, cat.server_base.request_cpu_ms)
        got = float(objects[s.id]["spec"]["triggers"][0]["metadata"]["threshold"])
        # Rounded down to a tenth; the plan's CPU request (the rate's trace) is rounded up to a millicore.
        assert want - 0.1 - 0.01 <= got <= want + 0.01, (s.id, want, got)


def one_gpu_model(latency_ms: float, utilisation: float) -> List[dict]:
    return [{"id": "solo", "rps": round(utilisation * 1000 / latency_ms, 6), "profiles": {"gpu": profile(latency_ms)}}]


def target_of(plan: Plan) -> float:
    (server,) = plan.servers
    cat = catalogue()
    return autoscaling.inflight_target(server, cat.by_name()[server.instance_type], cat, plan.options)


def test_the_target_grows_with_the_cap_and_falls_with_the_service_time():
    """The same utilisation (0.5) from a fast model at a high rate or a slow one at a low rate: the fast one
    has more requests in the host's part of their journey. A higher cap allows more in flight."""
    fast, slow = target_of(make_plan(one_gpu_model(5.0, 0.5))), target_of(make_plan(one_gpu_model(20.0, 0.5)))
    assert fast > slow
    low_cap = target_of(make_plan(one_gpu_model(5.0, 0.5), max_utilization=0.6))
    assert low_cap < fast
    assert [s.utilisation_cap for s in make_plan(one_gpu_model(5.0, 0.5), max_utilization=0.6).servers] == [0.6]


def test_the_queue_terms_hold_to_known_values():
    # M/D/1 (one stream, constant service): Lq = rho^2 / (2 (1 - rho)), so at 0.5: 0.5 + 0.25.
    assert autoscaling.inflight_at_cap(0.5, 1) == pytest.approx(0.75)
    assert autoscaling.inflight_at_cap(0.5, 1, host_inflight=0.3) == pytest.approx(1.05)
    for streams, offered in ((2, 1.3), (4, 3.32), (8, 2.0)):
        assert autoscaling.erlang_c(streams, offered) == pytest.approx(packing_erlang_c(streams, offered), rel=1e-12)
    assert autoscaling.inflight_at_cap(0.9, 4) > autoscaling.inflight_at_cap(0.8, 4) > autoscaling.inflight_at_cap(0.8, 1) / 2
    for bad in (1.0, 1.2, 0.0):
        with pytest.raises(ValueError, match="cap"):
            autoscaling.inflight_at_cap(bad, 4)


def test_the_target_is_rounded_down_to_a_tenth_and_never_below_one():
    assert autoscaling.rounded_target(2.86) == 2.8 and autoscaling.rounded_target(3.0) == 3.0
    assert autoscaling.rounded_target(0.37) == 1.0
    assert [autoscaling.threshold_text(x) for x in (1.0, 2.8, 12.0)] == ["1", "2.8", "12"]
    idle = make_plan([{"id": "idle", "rps": 1.0, "profiles": {"gpu": profile(10.0)}}], max_utilization=0.3)
    assert target_of(idle) == 1.0  # 0.3 in service, 0.06 waiting, next to nothing on the host


def test_a_cap_that_leaves_the_queue_unbounded_is_one_clear_error(planned, tmp_path, capsys):
    data = json.loads(planned["plan_path"].read_text())
    gpu = next(s for s in data["servers"] if s["processor"] == "gpu")
    gpu["utilisation_cap"] = 1.0
    (tmp_path / "plan.json").write_text(json.dumps(data))
    code = charts_main(["synth", "--plan", str(tmp_path / "plan.json"), "--config", str(DEV), "--out",
                        str(tmp_path / "dist"), "--instances", str(INSTANCES)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("error:") == 1 and "Traceback" not in err
    assert gpu["id"] in err and "--max-utilization" in err and "autoscaling" in err
    assert not (tmp_path / "dist").exists()


def test_the_config_chooses_the_scaler_per_kind_of_processor(planned, tmp_path):
    swapped = write_config(tmp_path, accelerator="hpa", cpu="keda")
    synth(planned["plan_path"], swapped, tmp_path / "dist", instances_path=INSTANCES)
    docs = manifests(tmp_path / "dist")
    for s in planned["plan"].servers:
        (scaler,) = autoscalers_of(docs, s.id)
        assert scaler["kind"] == ("ScaledObject" if s.processor == "cpu" else "HorizontalPodAutoscaler"), s.id
    (cpu_so,) = [d for d in docs if d["kind"] == "ScaledObject"]
    (cpu,) = [s for s in planned["plan"].servers if s.processor == "cpu"]
    # A cpu slice's vCPUs at the cap, in service and waiting; no host term (a cpu pod requests its whole slice).
    assert float(cpu_so["spec"]["triggers"][0]["metadata"]["threshold"]) == \
        autoscaling.rounded_target(autoscaling.inflight_at_cap(cpu.utilisation_cap, catalogue().cpu_slice_vcpu))

    for env in ("dev", "staging", "prod"):
        cfg = load(EnvConfig, ROOT / "config" / f"{env}.yaml")
        assert (cfg.autoscaling.accelerator, cfg.autoscaling.cpu) == ("keda", "hpa")
    bad = write_config(tmp_path, accelerator="prometheus")
    with pytest.raises(ContractError, match="autoscaling.accelerator") as info:
        load(EnvConfig, bad)
    assert "keda" in str(info.value) and "hpa" in str(info.value)


def test_the_queries_parse_with_promtool(planned, tmp_path):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package prometheus): the PromQL is not parsed here")
    queries = [d["spec"]["triggers"][0]["metadata"]["query"] for d in planned["docs"] if d["kind"] == "ScaledObject"]
    assert queries

    def check(exprs: List[str]) -> subprocess.CompletedProcess:
        rules = {"groups": [{"name": "modelfleet-autoscaling", "rules": [
            {"record": f"modelfleet:autoscaling_query_{i}", "expr": e} for i, e in enumerate(exprs)]}]}
        path = tmp_path / "rules.yaml"
        path.write_text(yaml.safe_dump(rules), encoding="utf-8")
        return subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)

    r = check(queries)
    assert r.returncode == 0, r.stdout + r.stderr
    broken = check([queries[0].replace('",server', '" server')])  # the check has teeth: a missing comma fails
    assert broken.returncode != 0


def unknown_fields(value: Any, schema: Dict[str, Any], path: str = "") -> List[str]:
    """Fields the structural schema does not declare: an API server prunes them without a word (jsonschema
    alone lets them pass, since these schemas do not forbid additional properties)."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    if isinstance(value, dict):
        props, extra = schema.get("properties"), schema.get("additionalProperties")
        if props is None and not isinstance(extra, dict):
            return []  # an object the schema leaves open (metadata)
        out: List[str] = []
        for key, item in value.items():
            if props is not None and key in props:
                out += unknown_fields(item, props[key], f"{path}.{key}")
            elif isinstance(extra, dict):
                out += unknown_fields(item, extra, f"{path}.{key}")
            else:
                out.append(f"{path}.{key}")
        return out
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [f for i, item in enumerate(value) for f in unknown_fields(item, schema["items"], f"{path}[{i}]")]
    return []


def test_scaled_objects_validate_against_keda_s_crd(planned):
    schemas = served_schemas(KEDA_CRDS)
    assert set(schemas) == {("keda.sh/v1alpha1", "ScaledObject")}
    schema = schemas[("keda.sh/v1alpha1", "ScaledObject")]
    objects = [d for d in planned["docs"] if d["kind"] == "ScaledObject"]
    assert len(objects) == 3
    for so in objects:
        jsonschema.validate(so, schema)
        assert unknown_fields(so, schema) == []
        # The CRD's CEL rule (jsonschema does not run CEL): min <= max.
        assert so["spec"]["minReplicaCount"] <= so["spec"]["maxReplicaCount"]
    # The checks have teeth.
    wrong_type = copy.deepcopy(objects[0])
    wrong_type["spec"]["minReplicaCount"] = "one"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(wrong_type, schema)
    misspelled = copy.deepcopy(objects[0])
    misspelled["spec"]["pollingIntervall"] = 15
    misspelled["spec"]["triggers"][0]["metricTyp"] = "AverageValue"
    assert sorted(unknown_fields(misspelled, schema)) == [".spec.pollingIntervall", ".spec.triggers[0].metricTyp"]


def test_the_shared_checker_passes_with_keda_s_crd(planned):
    r = run_check_manifests(planned["plan_path"], INSTANCES, planned["dir"] / "dist", planned["dir"],
                            extra_crds=[KEDA_CRDS.name])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ScaledObject" in r.stdout and "HorizontalPodAutoscaler" in r.stdout
