"""Each runtime's pod environment and routes.json against the others': the charts (a Deployment's env and
dist/routes.json), `deploy local` (a process's environment, its routes.json) and `deploy docker` (the
`docker run` line) build them from contracts/ and differ only where a runtime must (where the store, the
port and the cache are; the gateway)."""
from __future__ import annotations

from pathlib import Path
from typing import Dict

import pytest

import charts  # noqa: F401  (quiets jsii's banner)
from charts.routes import routes_document as cluster_routes
from contracts import Plan
from contracts.pod import POD_ENV_NAMES, pod_env
from contracts.routes import ROUTE_PREFIXES, model_path, routes_for
from deploy import docker
from deploy.local import routes_document as local_routes
from deploy.local import server_env


def _plan() -> Plan:
    def server(sid: str, processor: str, models, accel=None):
        req = {"cpu_m": 1500, "memory_mib": 3000, **({"accelerator": {"name": accel, "count": 1}} if accel else {})}
        return {"id": sid, "instance_type": "c5.xlarge" if processor == "cpu" else "inf1.xlarge", "processor": processor,
                "replicas": 1, "placements": [{"instance_index": 0, "device_index": 0}], "models": models, "requests": req,
                "memory_budget_mib": 2500, "predicted": {"utilisation": 0.4, "p90_ms": 30.0}}
    return Plan.model_validate({
        "schema": 1, "inputs": {}, "options": {}, "solver": {}, "instances": {"c5.xlarge": 1, "inf1.xlarge": 1},
        "cost_per_hour": 1.0, "platform_per_hour": 0.0, "lower_bound_per_hour": 1.0, "gap": 0.0, "solve_seconds": 0.1,
        "created_at": "2026-01-01T00:00:00+00:00", "profile_sources": {},
        "servers": [server("cpu-0000", "cpu", ["m-b", "m-a"]), server("inf1-0000", "inf1", ["m-c"], "aws.amazon.com/neuron")]})


def _chart_env(server, store_uri: str) -> Dict[str, str]:
    """The env of the server's Deployment as the charts build it (MODEL_IDS read back from its ConfigMap)."""
    import cdk8s

    from charts.server import ModelServer, ModelServerProps

    chart = cdk8s.Chart(cdk8s.App(), "t", disable_resource_name_hashes=True)
    ModelServer(chart, server.id, ModelServerProps(server=server, namespace="ns", image="img:1", store_uri=store_uri,
                                                   gateway_name="gw", gateway_host="h.example", hpa_max=2))
    objs = chart.to_json()
    (cm,) = [o for o in objs if o["kind"] == "ConfigMap"]
    (dep,) = [o for o in objs if o["kind"] == "Deployment"]
    (ctr,) = dep["spec"]["template"]["spec"]["containers"]
    env = {}
    for e in ctr["env"]:
        ref = e.get("valueFrom", {}).get("configMapKeyRef")
        env[e["name"]] = cm["data"][ref["key"]] if ref else e["value"]
    return env


def _docker_env(server, store_uri: str) -> Dict[str, str]:
    cmd = docker.run_command(server, "modelfleet-serving:{processor}", store_uri, 18080, {})
    pairs = [cmd[i + 1] for i, part in enumerate(cmd) if part == "--env" and "=" in cmd[i + 1]]
    return dict(p.split("=", 1) for p in pairs)


@pytest.mark.parametrize("index", [0, 1])
def test_every_runtime_gives_a_server_the_same_pod_contract(index: int, tmp_path: Path) -> None:
    plan = _plan()
    server = plan.servers[index]
    store = (tmp_path / "store").resolve()
    store.mkdir()
    cluster = _chart_env(server, "s3://bucket/store")
    local = server_env({"PORT": "1", "MODEL_IDS": "stale", "HOME": "/home/x"}, server, store.as_uri(), 18080,
                       tmp_path / "cache", workers=2)
    container = _docker_env(server, store.as_uri())
    contract = pod_env(server, "s3://bucket/store")
    assert tuple(contract) == POD_ENV_NAMES
    assert list(cluster) == list(POD_ENV_NAMES) == list(container)  # the same variables, in the same order
    assert set(POD_ENV_NAMES) <= set(local) and local["HOME"] == "/home/x"  # the shell's own variables pass through
    assert local["MODEL_IDS"] == ",".join(server.models)  # the shell's stale value does not leak in
    assert cluster == contract
    # Where the runtimes must differ: the store's address, the port, the cache folder, the drain time on one machine.
    own = {"STORE_URI", "PORT", "MODEL_CACHE_DIR", "GRACE_SECONDS"}
    for env in (local, container):
        assert {k: env[k] for k in POD_ENV_NAMES if k not in own} == {k: v for k, v in contract.items() if k not in own}
    assert container["PORT"] == cluster["PORT"] == "8080" and local["PORT"] == "18080"
    assert container["STORE_URI"] == "file:///store" and local["STORE_URI"] == store.as_uri()
    assert container["MODEL_CACHE_DIR"] == cluster["MODEL_CACHE_DIR"] and local["MODEL_CACHE_DIR"] == str(tmp_path / "cache")


def test_routes_of_the_cluster_and_of_this_machine_differ_only_in_where(tmp_path: Path) -> None:
    plan = _plan()
    cluster = cluster_routes(plan, "ns", "http://models.example")
    local = local_routes({"cpu-0000": "http://127.0.0.1:1111", "inf1-0000": "http://127.0.0.1:2222"}, plan)
    assert cluster["models"] == local["models"] == {
        "m-b": {"server": "cpu-0000", "path": "/predictions/m-b"}, "m-a": {"server": "cpu-0000", "path": "/predictions/m-a"},
        "m-c": {"server": "inf1-0000", "path": "/predictions/m-c"}}
    assert list(cluster["models"]) == ["m-b", "m-a", "m-c"]  # plan order
    assert {s: v["models"] for s, v in cluster["servers"].items()} == {s: v["models"] for s, v in local["servers"].items()}
    assert (cluster["base_url"], local["base_url"]) == ("http://models.example", "")
    assert cluster["servers"]["inf1-0000"]["url"] == "http://inf1-0000.ns.svc.cluster.local:8080"
    assert local["servers"]["inf1-0000"]["url"] == "http://127.0.0.1:2222"
    assert routes_for(plan, "", lambda s: f"http://{s.id}").model_dump(mode="json")["servers"]["cpu-0000"]["url"] == "http://cpu-0000"
    assert model_path("m-a") == ROUTE_PREFIXES[0] + "m-a"
