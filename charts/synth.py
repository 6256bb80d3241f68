"""`charts synth`: plan + environment config -> dist/ (rendered manifests, Helm chart shards, routes.json, the
monitoring objects as plain YAML and as Helm charts).

Objects are built once through cdk8s with placeholders where Helm values go (image, tag, store URI,
role ARN); rendering then puts in either the config's values (dist/manifests/) or `{{ .Values.* }}`
(dist/helm/). Everything is written into a temporary folder beside --out and swapped into place.
"""
from __future__ import annotations

import base64
import gzip
import hashlib
import json
import multiprocessing
import os
import re
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import cdk8s

from charts import constants as c
from charts import naming, yamltext
from charts.autoscaling import QueueScaling, inflight_targets
from charts.cluster import ClusterWide, ClusterWideProps
from charts.config import EnvConfig, helm_values
from charts.monitoring import MONITORING_TEMPLATE_BUDGET_BYTES, monitoring_chart_groups, monitoring_chart_name, monitoring_files
from charts.routes import routes_document
from charts.server import ModelServer, ModelServerProps, StartupBudget
from charts.typecheck import skip_jsii_type_checks, type_checks_on
from charts.validation import check_plan
from contracts import ContractError, InstanceCatalogue, Plan, Server, load

MARKER = ".modelfleet-charts"  # an --out folder without it is never replaced
SERVERS_PER_APP = 25  # cdk8s validates the whole App on every Chart.toJson(): keep Apps small
_SENTINEL = re.compile(r"@@([A-Za-z0-9_.]+)@@")


def placeholder(path: str) -> str:
    return f"@@{path}@@"


_EXPR = re.compile(r"\{\{ \.Values\.([A-Za-z0-9_.]+) \}\}")


def _lookup(values: Dict[str, Any], path: str) -> str:
    node: Any = values
    for part in path.split("."):
        node = node[part]
    return str(node)


def substitute(obj: Any, fn: Callable[[str], Any]) -> Any:
    if isinstance(obj, dict):
        return {k: substitute(v, fn) for k, v in obj.items()}
    if isinstance(obj, list):
        return [substitute(v, fn) for v in obj]
    if isinstance(obj, str) and "@@" in obj:
        return fn(obj)
    return obj


def templated(objs: Sequence[dict]) -> List[dict]:
    """Placeholders -> `{{ .Values.x }}`. yamltext writes such strings double-quoted, so a value renders to a
    YAML string whatever it looks like (a tag "1.0" stays a string)."""
    return [substitute(o, lambda s: _SENTINEL.sub(lambda m: "{{ .Values." + m.group(1) + " }}", s)) for o in objs]


def render_text(template: str, values: Dict[str, Any]) -> str:
    """What Helm makes of a template here: each `{{ .Values.x }}` replaced by its value (the config forbids
    quotes, backslashes and braces in these values, so they stay inside their double quotes)."""
    return _EXPR.sub(lambda m: _lookup(values, m.group(1)), template)


def release_size_estimate(templates: Dict[str, str], manifest: str, values: Dict[str, Any]) -> int:
    """Bytes of the Secret Helm stores a release in: base64(gzip(JSON of chart templates (base64), values and
    the rendered manifest)). The limit is 1 MiB."""
    record = {"chart": {"templates": [{"name": n, "data": base64.b64encode(t.encode()).decode()} for n, t in templates.items()],
                        "values": values},
              "config": values, "manifest": manifest}
    return len(base64.b64encode(gzip.compress(json.dumps(record).encode(), compresslevel=9)))


@dataclass
class SynthResult:
    servers: int
    models: int
    objects: int
    shards: List[Dict[str, Any]] = field(default_factory=list)
    monitoring_charts: List[Dict[str, Any]] = field(default_factory=list)
    largest_object_bytes: int = 0
    largest_object: str = ""
    seconds: float = 0.0

    def to_json(self) -> Dict[str, Any]:
        return self.__dict__.copy()


def load_inputs(plan_path: Path, config_path: Path, instances_path: Path):
    plan = load(Plan, plan_path)
    config = load(EnvConfig, config_path)
    instances = load(InstanceCatalogue, instances_path)
    check_plan(plan, instances, config, label=Path(plan_path).name)
    return plan, config, instances


def build_cluster(config: EnvConfig) -> List[dict]:
    app = cdk8s.App()
    chart = cdk8s.Chart(app, "cluster", disable_resource_name_hashes=True)
    g = config.gateway
    ClusterWide(chart, "cluster", ClusterWideProps(
        namespace=config.namespace, role_arn=placeholder("roleArn"), monitoring_namespace=config.monitoring_namespace,
        gateway_name=g.name, gateway_class_name=g.class_name, envoy_proxy_name=g.envoy_proxy_name,
        gateway_host=g.host, gateway_port=g.port, internal=g.internal))
    return chart.to_json()


def hpa_maxima(plan: Plan, instances: InstanceCatalogue, config: EnvConfig) -> Dict[str, int]:
    """Each server's HPA maximum: the config's `replicas.hpa_max`, cut to what its node group holds at its
    maximum size. The node groups are the stacks' (one per instance type, max ceil(count x burst_factor) with
    `stacks.burst_factor` of the config); a config without a burst factor gets HPAs that stay at the plan's
    replicas, since no headroom is known."""
    burst = config.stacks.burst_factor or 1.0
    types = instances.by_name()
    return {s.id: naming.hpa_max(s, types[s.instance_type], int(plan.instances.get(s.instance_type, 0)), burst,
                                 config.replicas.hpa_max, instances.cpu_slice_vcpu)
            for s in plan.servers}


def build_servers(plan: Plan, config: EnvConfig, hpa_max: Optional[Dict[str, int]] = None,
                  inflight: Optional[Dict[str, float]] = None) -> Dict[str, List[dict]]:
    """Each server's objects (with placeholders), in plan order. `hpa_max`: per server (hpa_maxima); without
    it, the config's maximum. `inflight`: the servers that scale with KEDA, each with its in-flight target
    (charts.autoscaling.inflight_targets); the others get the CPU HPA."""
    st = config.startup
    startup = StartupBudget(base_seconds=st.base_seconds, seconds_per_model=st.seconds_per_model,
                            load_mib_per_second=st.load_mib_per_second, period_seconds=st.period_seconds)
    out: Dict[str, List[dict]] = {s.id: [] for s in plan.servers}
    for start in range(0, len(plan.servers), SERVERS_PER_APP):
        app = cdk8s.App()
        chart = cdk8s.Chart(app, "servers", disable_resource_name_hashes=True)
        for s in plan.servers[start:start + SERVERS_PER_APP]:
            image = f"{placeholder(f'images.{s.processor}.repository')}:{placeholder(f'images.{s.processor}.tag')}"
            ModelServer(chart, s.id, ModelServerProps(
                server=s, namespace=config.namespace, image=image, store_uri=placeholder("storeUri"),
                gateway_name=config.gateway.name, gateway_host=config.gateway.host,
                hpa_max=(hpa_max or {}).get(s.id, config.replicas.hpa_max),
                cpu_target_percent=config.replicas.cpu_target_percent, startup=startup,
                queue_scaling=QueueScaling(inflight[s.id], c.prometheus_url(config.monitoring_namespace))
                if s.id in (inflight or {}) else None))
        for obj in chart.to_json():
            out[obj["metadata"]["labels"][c.SERVER_LABEL]].append(obj)
    return out


def _build_slice(servers: List[Dict[str, Any]], config: Dict[str, Any], hpa_max: Dict[str, int],
                 inflight: Dict[str, float], type_checks: bool) -> Dict[str, List[dict]]:
    """A worker process's share (spawned: a fresh Python and its own Node)."""
    if not type_checks:
        skip_jsii_type_checks(force=True)
    plan = Plan.model_construct(servers=[Server.model_validate(x) for x in servers])
    return build_servers(plan, EnvConfig.model_validate(config), hpa_max, inflight)


def build_servers_parallel(plan: Plan, config: EnvConfig, jobs: int,
                           hpa_max: Optional[Dict[str, int]] = None,
                           inflight: Optional[Dict[str, float]] = None) -> Dict[str, List[dict]]:
    """The same as build_servers, in `jobs` processes (each Node kernel runs single-threaded)."""
    if jobs <= 1 or len(plan.servers) < 4 * SERVERS_PER_APP:
        return build_servers(plan, config, hpa_max, inflight)
    type_checks = type_checks_on()
    servers = [s.model_dump(mode="json") for s in plan.servers]
    step = -(-len(servers) // jobs)
    out: Dict[str, List[dict]] = {}
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_build_slice, servers[i:i + step], config.model_dump(mode="json"), dict(hpa_max or {}),
                               dict(inflight or {}), type_checks)
                   for i in range(0, len(servers), step)]
        for f in futures:
            out.update(f.result())
    return out


def _chart_yaml(name: str, description: str, plan_digest: str) -> str:
    return yamltext.dump({
        "apiVersion": "v2", "name": f"modelfleet-{name}", "description": description, "type": "application",
        "version": "1.0.0", "appVersion": plan_digest[:12],
        "annotations": {"modelfleet.io/plan-sha256": plan_digest},
    })


def _values_yaml(values: Dict[str, Any]) -> str:
    head = ("# The config's values; the stacks pass the real ones (CDK tokens cannot reach inside asset files).\n"
            if values else "# No values: these templates take none.\n")
    return head + yamltext.dump(values)


def _write(root: Path, rel: str, text: str) -> None:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text, encoding="utf-8")


def _write_chart(root: Path, name: str, description: str, plan_digest: str, values: Dict[str, Any],
                 templates: Dict[str, str], manifest: str) -> Dict[str, Any]:
    """dist/helm/<name>/ (Chart.yaml, values.yaml, `templates`: {"templates/...": text}); returns its summary entry,
    `manifest` being what it renders to."""
    _write(root, f"helm/{name}/Chart.yaml", _chart_yaml(name, description, plan_digest))
    _write(root, f"helm/{name}/values.yaml", _values_yaml(values))
    for rel, text in templates.items():
        _write(root, f"helm/{name}/{rel}", text)
    return {"name": name, "template_bytes": sum(len(t.encode()) for t in templates.values()),
            "release_secret_bytes_estimate": release_size_estimate(templates, manifest, values)}


def write_monitoring(root: Path, plan: Plan, plan_digest: str, config: EnvConfig,
                     budget: int = MONITORING_TEMPLATE_BUDGET_BYTES) -> List[Dict[str, Any]]:
    """dist/monitoring/ (plain YAML, for `kubectl apply -R`) and the same objects as dist/helm/monitoring-NNN/ charts
    (charts/monitoring.py), which the stacks install; returns the charts' summary entries."""
    files = monitoring_files(plan, config)
    for rel, text in files.items():
        _write(root, rel, text)
    entries = []
    for i, templates in enumerate(monitoring_chart_groups(files, budget)):
        sources = ["monitoring/" + rel[len("templates/"):] for rel in templates]
        entry = _write_chart(root, monitoring_chart_name(i), f"modelfleet monitoring: {sources[0]} .. {sources[-1]}",
                             plan_digest, {}, templates, "---\n".join(files[f] for f in sources))
        entries.append({**entry, "files": sources})
    return entries


def write_dist(root: Path, plan: Plan, plan_digest: str, config: EnvConfig, cluster: List[dict],
               servers: Dict[str, List[dict]], budget: int = c.SHARD_TEMPLATE_BUDGET_BYTES) -> SynthResult:
    values = helm_values(config)
    result = SynthResult(servers=len(plan.servers), models=sum(len(s.models) for s in plan.servers), objects=0)

    def note(objs: Sequence[dict]) -> None:
        result.objects += len(objs)
        for o in objs:
            size = len(json.dumps(o))
            if size > result.largest_object_bytes:
                result.largest_object_bytes, result.largest_object = size, f"{o['kind']}/{o['metadata']['name']}"

    # Cluster-wide: the EnvoyProxy goes apart (Envoy Gateway's own API, in its namespace; no schema for it here).
    note(cluster)
    core = yamltext.dump_all(templated([o for o in cluster if o["kind"] != "EnvoyProxy"]))
    envoy = yamltext.dump_all(templated([o for o in cluster if o["kind"] == "EnvoyProxy"]))
    _write(root, "manifests/00-cluster.yaml", render_text(core, values))
    _write(root, "envoy-gateway/envoyproxy.yaml", render_text(envoy, values))
    _write(root, "helm/cluster/Chart.yaml", _chart_yaml("cluster", "modelfleet cluster-wide objects", plan_digest))
    _write(root, "helm/cluster/values.yaml", _values_yaml({"roleArn": values["roleArn"]}))
    _write(root, "helm/cluster/templates/cluster.yaml", core)
    _write(root, "helm/cluster/templates/envoyproxy.yaml", envoy)

    # Per server: one rendered file for review, one template in its Helm shard.
    texts: Dict[str, str] = {}
    manifests: Dict[str, str] = {}
    for sid, objs in servers.items():
        note(objs)
        texts[sid] = yamltext.dump_all(templated(objs))
        manifests[sid] = render_text(texts[sid], values)
        _write(root, f"manifests/servers/{sid}.yaml", manifests[sid])
    shard_values = {"images": values["images"], "storeUri": values["storeUri"]}
    order = sorted(texts)
    for i, members in enumerate(naming.shard([(sid, len(texts[sid].encode())) for sid in order], budget)):
        name = naming.shard_name(i)
        entry = _write_chart(root, name, f"modelfleet model servers {members[0]} .. {members[-1]}", plan_digest,
                             shard_values, {f"templates/{sid}.yaml": texts[sid] for sid in members},
                             "---\n".join(manifests[sid] for sid in members))
        result.shards.append({"name": name, "servers": members, **entry})

    routes = routes_document(plan, config.namespace, f"http://{config.gateway.host}"
                             + ("" if config.gateway.port == 80 else f":{config.gateway.port}"))
    _write(root, "routes.json", json.dumps(routes, indent=1) + "\n")
    return result


def check_out(out: Path) -> None:
    """An existing --out must be a folder this command wrote (or an empty one): it is replaced whole."""
    if not out.exists():
        return
    if not out.is_dir():
        raise ContractError(f"--out {out}: exists and is not a folder")
    if any(out.iterdir()) and not (out / MARKER).exists():
        raise ContractError(f"--out {out}: not empty and not written by charts synth (no {MARKER}); "
                            "refusing to replace it: pick an empty or new folder")


def _swap_into_place(tmp: Path, out: Path) -> None:
    """Replace `out` by `tmp` with renames."""
    check_out(out)
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, old / "dist")
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def synth(plan_path: Path, config_path: Path, out: Path, instances_path: Path = Path("config/instances.yaml"),
          budget: int = c.SHARD_TEMPLATE_BUDGET_BYTES, progress: Optional[Callable[[str], None]] = None,
          jobs: int = 1, monitoring_budget: int = MONITORING_TEMPLATE_BUDGET_BYTES) -> SynthResult:
    """Validate, build and write dist/ atomically. Raises ContractError (nothing written) on a bad input."""
    t0 = time.perf_counter()
    say = progress or (lambda _msg: None)
    plan, config, instances = load_inputs(plan_path, config_path, instances_path)
    out = Path(out).resolve()
    check_out(out)
    digest = hashlib.sha256(Path(plan_path).read_bytes()).hexdigest()
    say(f"{len(plan.servers)} servers: building")
    cluster = build_cluster(config)
    servers = build_servers_parallel(plan, config, jobs, hpa_maxima(plan, instances, config),
                                     inflight_targets(plan, instances, config.autoscaling))
    say("writing")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.new-", dir=out.parent))
    try:
        result = write_dist(tmp, plan, digest, config, cluster, servers, budget)
        # kube-prometheus-stack's kinds, apart from manifests/ (charts/monitoring.py)
        result.monitoring_charts = write_monitoring(tmp, plan, digest, config, monitoring_budget)
        result.seconds = round(time.perf_counter() - t0, 3)
        (tmp / "summary.json").write_text(json.dumps(
            {"plan_sha256": digest, "environment": config.environment, **result.to_json()}, indent=1) + "\n")
        (tmp / MARKER).write_text("written by `python -m charts synth`; the whole folder is replaced on the next run\n")
        _swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return result
