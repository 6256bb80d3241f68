"""Planning with latency budgets: catalogues the old yes/no SLO filter refused now plan, every
server predicts a P90 within its models' strictest SLO (by packing/model/latency.py, recomputed here),
and the independent ../shared/tools/check_plan.py accepts every plan."""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Dict, List

import pytest

from contracts import InstanceCatalogue, ModelCatalogue, load, parse
from packing.model.demand import UnplaceableModels, build_demand
from packing.model.latency import ServiceTime, Stream, pod_p90_ms
from packing.model.profiles import resolve_profiles
from packing.model.resources import PackingOptions, node_shapes
from packing.planner import plan_servers
from packing.replanner import replan
from packing.solve.baselines import first_fit_decreasing_by_price
from tests.plan_checks import check_plan

ROOT = Path(__file__).resolve().parents[1]
INSTANCES_YAML = ROOT / "config" / "instances.yaml"
GPU_AND_CPU = ("c5.large", "c5.xlarge", "c5.2xlarge", "g4dn.xlarge")


def profile(dev: float, host: float, p50: float, p90: float) -> dict:
    return {"device_memory_mib": dev, "host_memory_mib": host, "latency_ms": p50, "latency_p90_ms": p90}


# bert-large-sized on a T4 (31 ms) and on cpu (far too slow for 100 ms); a base-sized model at 60 ms on cpu.
LARGE = {"gpu": profile(1300, 700, 31.0, 34.0), "cpu": profile(1300, 1300, 600.0, 640.0)}
BASE = {"gpu": profile(420, 300, 9.0, 10.0), "cpu": profile(420, 420, 60.0, 66.0)}


def catalogue() -> InstanceCatalogue:
    return load(InstanceCatalogue, INSTANCES_YAML)


def plan(model_dicts: List[dict], opts: PackingOptions):
    models = parse(ModelCatalogue, {"models": model_dicts}, "models.yaml").models
    profiles, sources = resolve_profiles(models)
    return models, plan_servers(models, profiles, sources, catalogue(), opts)


def recomputed_p90(server, by_id: Dict[str, dict], request_cpu_ms: float, cores: int) -> float:
    """The pod's P90 from the catalogue's own figures, not from the planner's arrays."""
    streams = []
    for m in server.models:
        p = by_id[m]["profiles"][server.processor]
        extra = request_cpu_ms if server.processor == "cpu" else 0.0
        after = 0.0 if server.processor == "cpu" else request_cpu_ms
        service = ServiceTime(p["latency_ms"], p.get("latency_p90_ms", p["latency_ms"]), extra)
        streams.append(Stream(by_id[m]["rps"] / server.replicas, service, after))
    return pod_p90_ms(cores, streams)


def assert_within_slos(plan_obj, model_dicts: List[dict]) -> None:
    by_id = {m["id"]: m for m in model_dicts}
    cat = catalogue()
    types = cat.by_name()
    for s in plan_obj.servers:
        slos = [by_id[m]["slo_p90_ms"] for m in s.models if by_id[m].get("slo_p90_ms") is not None]
        if not slos:
            continue
        assert s.slo_p90_ms == min(slos)
        assert s.utilisation_cap is not None and s.predicted.utilisation <= s.utilisation_cap * (1 + 1e-6)
        cores = cat.cpu_slice_vcpu if s.processor == "cpu" else types[s.instance_type].cores_per_device
        p90 = recomputed_p90(s, by_id, cat.server_base.request_cpu_ms, cores)
        assert p90 == pytest.approx(s.predicted.p90_ms, rel=1e-3)
        assert p90 <= min(slos) * (1 + 1e-6), (s.id, p90, min(slos))


def test_a_100ms_budget_for_31ms_models_plans(tmp_path):
    """Refused before: M/M/1 at 83% predicted a 386 ms wait for a 31 ms model. At a lower
    utilisation the pod meets 100 ms, so the model plans, on gpu (cpu cannot meet it at all)."""
    rng = random.Random(5)
    models = [{"id": f"large-{i}", "rps": round(rng.uniform(1, 12), 2), "slo_p90_ms": 100.0, "profiles": LARGE}
              for i in range(40)]
    _, result = plan(models, PackingOptions(only_instance_types=GPU_AND_CPU, time_limit_s=10))
    assert {s.processor for s in result.plan.servers} == {"gpu"}
    assert max(s.utilisation_cap for s in result.plan.servers) < 0.83
    assert_within_slos(result.plan, models)
    check_plan(tmp_path, models, None, result.plan.to_json_dict(), 0.83, 0, instances_path=INSTANCES_YAML)


def test_a_300_model_catalogue_at_200ms_loses_no_model(tmp_path):
    """Refused before: 54 of such models 'fit on no instance type'."""
    rng = random.Random(9)
    models = []
    for i in range(300):
        kind = rng.choice([LARGE, BASE])
        models.append({"id": f"m-{i}", "rps": round(rng.uniform(0.2, 6), 2), "slo_p90_ms": 200.0, "profiles": kind})
    _, result = plan(models, PackingOptions(only_instance_types=GPU_AND_CPU, time_limit_s=15))
    assert sum(len(s.models) for s in result.plan.servers) == 300
    assert_within_slos(result.plan, models)
    check_plan(tmp_path, models, None, result.plan.to_json_dict(), 0.83, 0, instances_path=INSTANCES_YAML)


def test_tiered_budgets_keep_strict_models_off_slow_pods(tmp_path):
    """50, 100 and 250 ms budgets over fast and slow models: no pod's strictest budget is broken
    by a slow neighbour, and the plan costs at least the plan without budgets."""
    rng = random.Random(3)
    models = []
    for i in range(120):
        kind = rng.choice([LARGE, BASE])
        slo = rng.choice([50.0, 100.0, 250.0])
        models.append({"id": f"t-{i}", "rps": round(rng.uniform(0.5, 8), 2), "slo_p90_ms": slo, "profiles": kind})
    opts = PackingOptions(only_instance_types=GPU_AND_CPU, time_limit_s=15)
    _, with_slo = plan(models, opts)
    assert_within_slos(with_slo.plan, models)
    check_plan(tmp_path, models, None, with_slo.plan.to_json_dict(), 0.83, 0, instances_path=INSTANCES_YAML)
    # The bound must hold for the plan without budgets too only in one direction: budgets never
    # make a plan cheaper than the cheapest plan without them can be.
    free = [{k: v for k, v in m.items() if k != "slo_p90_ms"} for m in models]
    _, without = plan(free, opts)
    assert with_slo.plan.lower_bound_per_hour >= without.plan.lower_bound_per_hour * (1 - 1e-6) - 1e-6
    assert with_slo.plan.lower_bound_per_hour <= with_slo.plan.cost_per_hour + 1e-6


def test_a_model_slower_than_its_budget_everywhere_gets_a_clear_error():
    models = [{"id": "too-slow", "rps": 1.0, "slo_p90_ms": 20.0, "profiles": LARGE},
              {"id": "fine", "rps": 1.0, "slo_p90_ms": 200.0, "profiles": BASE}]
    with pytest.raises(UnplaceableModels) as exc:
        plan(models, PackingOptions(only_instance_types=GPU_AND_CPU, time_limit_s=5))
    msg = str(exc.value)
    assert "too-slow" in msg and "fine" not in msg
    assert "gpu: its p90 alone, 34 ms" in msg and "SLO p90 of 20 ms" in msg
    assert "cpu: its p90 alone, 640 ms" in msg


def test_first_fit_decreasing_honours_the_tier_caps():
    models = parse(ModelCatalogue, {"models": [
        {"id": f"f-{i}", "rps": 6.0, "slo_p90_ms": 80.0, "profiles": LARGE} for i in range(12)]}, "m.yaml").models
    profiles, _ = resolve_profiles(models)
    opts = PackingOptions(only_instance_types=GPU_AND_CPU)
    dem = build_demand(models, profiles, node_shapes(catalogue(), opts), opts)
    result = first_fit_decreasing_by_price(dem, dem.shapes, opts, platform=0.0)
    for b in result.servers:
        load = float(dem.u[list(b.models), b.shape].sum()) / b.replicas
        assert load <= dem.shapes[b.shape].utilisation_cap * (1 + 1e-9)
        assert dem.shapes[b.shape].utilisation_cap < 0.83


def test_replanning_keeps_every_pod_within_its_budget(tmp_path):
    rng = random.Random(21)
    models = [{"id": f"r-{i}", "rps": round(rng.uniform(0.5, 5), 2), "slo_p90_ms": rng.choice([100.0, 300.0]),
               "profiles": rng.choice([LARGE, BASE])} for i in range(60)]
    opts = PackingOptions(only_instance_types=GPU_AND_CPU, time_limit_s=8)
    _, first = plan(models, opts)
    # Traffic doubles on a third of the models: their pods must cool down or split.
    for m in models[::3]:
        m["rps"] = round(m["rps"] * 2, 2)
    specs = parse(ModelCatalogue, {"models": models}, "m.yaml").models
    profiles, sources = resolve_profiles(specs)
    second = replan(first.plan, "0" * 64, specs, profiles, sources, catalogue(), opts)
    assert_within_slos(second.plan, models)
    check_plan(tmp_path, models, None, json.loads(json.dumps(second.plan.to_json_dict())), 0.83, 0,
               instances_path=INSTANCES_YAML)


def _two_tier_models() -> List[dict]:
    """Three fast models under a tight budget and three slow ones under a loose one, all on inf1:
    no pod may hold both (the slow ones alone break 30 ms), so there are two tiers, yet their pods
    fit one 4-chip node."""
    fast = {"inf1": profile(300, 300, 20.0, 24.0)}
    slow = {"inf1": profile(300, 300, 90.0, 100.0)}
    strict = [{"id": f"strict-{i}", "rps": 20.0, "slo_p90_ms": 30.0, "profiles": fast} for i in range(3)]
    loose = [{"id": f"loose-{i}", "rps": 2.0, "slo_p90_ms": 1000.0, "profiles": slow} for i in range(3)]
    return strict + loose


def test_slo_tiers_of_one_instance_type_share_its_nodes(tmp_path):
    models = _two_tier_models()
    opts = PackingOptions(only_instance_types=("inf1.6xlarge",), time_limit_s=8)
    _, result = plan(models, opts)
    caps = {s.id: s.utilisation_cap for s in result.plan.servers}
    assert len(set(caps.values())) == 2, caps  # two tiers ...
    assert result.plan.instances == {"inf1.6xlarge": 1}  # ... on one node
    assert_within_slos(result.plan, models)
    check_plan(tmp_path, models, None, result.plan.to_json_dict(), 0.83, 0, instances_path=INSTANCES_YAML)


def test_a_replan_of_tiered_servers_on_shared_nodes_moves_nothing():
    models = _two_tier_models()
    opts = PackingOptions(only_instance_types=("inf1.6xlarge",), time_limit_s=8)
    specs, first = plan(models, opts)
    profiles, sources = resolve_profiles(specs)
    again = replan(first.plan, "0" * 64, specs, profiles, sources, catalogue(), opts)
    assert again.plan.previous.models_moved == 0 and again.plan.previous.servers_restarted == 0
    assert again.plan.instances == first.plan.instances
    places = lambda p: {s.id: [(x.instance_index, x.device_index) for x in s.placements] for s in p.servers}  # noqa: E731
    assert places(again.plan) == places(first.plan)
