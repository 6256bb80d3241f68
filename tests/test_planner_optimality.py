"""The planner against an exact brute force, on instances with a known optimum, on the seed
scenario of the reference design, for determinism, and for bad inputs through the CLI.

The brute force (tests/bruteforce.py) shares nothing with the planner's solver but the node
shapes (`packing.model.resources`, a pure function of the catalogue); plans are also checked by the
independent ../shared/tools/check_plan.py.
"""
from __future__ import annotations

import json
import math
import random
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, assume, example, given, settings

from contracts import InstanceCatalogue, ModelCatalogue, ModelSpec, parse
from packing.model.classes import build_classes
from packing.model.demand import UnplaceableModels, build_demand
from packing.model.profiles import resolve_profiles
from packing.model.resources import PackingOptions, node_shapes, nodes_price
from packing.planner import plan_servers
from packing.solve.columngen import ColumnGeneration
from packing.solve.master import BIG_POD_SPLITS, fewest_nodes, integer_master
from packing.solve.rounding import iterated_rounding
from packing.solve.solver import CLASS_RESOLUTION, LOAD_RESOLUTION
from tests.bruteforce import BruteForce, packing_cost, violations
from tests.exact_fill import (
    EXACT_CAP_GIB,
    EXACT_PRICE,
    EXACT_SEEDS,
    EXACT_UTIL,
    exact_fill_case,
    exact_fill_items,
    first_fit_decreasing,
)
from tests.plan_checks import check_plan, write_yaml
from tests.tiny_cases import inf1_type, inline, tiny_cases, tiny_model

ROOT = Path(__file__).resolve().parents[1]
INSTANCES_YAML = ROOT / "config" / "instances.yaml"
COST_TOL = 1e-6


# -- helpers -----------------------------------------------------------------------------------

def solve(model_dicts: List[dict], catalogue_dict: dict, opts: PackingOptions):
    models = parse(ModelCatalogue, {"models": model_dicts}, "models.yaml").models
    catalogue = parse(InstanceCatalogue, catalogue_dict, "instances.yaml")
    profiles, sources = resolve_profiles(models)
    return models, catalogue, plan_servers(models, profiles, sources, catalogue, opts)


def nodes_described(plan) -> List[str]:
    by_node: Dict[Tuple[str, int], List[str]] = {}
    for s in plan.servers:
        for p in s.placements:
            by_node.setdefault((s.instance_type, p.instance_index), []).append(f"{s.id}{s.models}")
    return [f"{t}#{i}: {', '.join(pods)}" for (t, i), pods in sorted(by_node.items())]


# -- small cases ---------------------------------------------------------------------------------

FOUND_HOST_AGGREGATE_1 = {
    "models": [tiny_model(0, 0.8081, inf1=(1125, 1078, 81.0)), tiny_model(1, 6.9318, inf1=(1594, 1024, 48.0)),
               tiny_model(2, 0.2182, inf1=(101, 166, 100.0)), tiny_model(3, 3.369, inf1=(247, 61, 102.0)),
               tiny_model(4, 1.2587, inf1=(651, 67, 104.0)), tiny_model(5, 6.2567, inf1=(61, 1078, 34.0))],
    "catalogue": {"cpu_slice_vcpu": 2, "server_base": {"cpu_m": 100, "memory_mib": 200},
                  "daemonset_overhead": {"cpu_m": 50, "memory_mib": 120}, "platform": {"eks_control_plane": 0.1},
                  "instances": [inf1_type("inf1.t0", 1.825, 8, 8, 1, 4, 2, 16), inf1_type("inf1.t1", 0.182, 8, 3, 4, 4, 2, 10)]},
    "max_util": 0.6, "max_dev_gib": None,
}
FOUND_HOST_AGGREGATE_2 = {
    "models": [tiny_model(0, 4.2931, inf1=(360, 213, 116.0)), tiny_model(1, 17.8935, inf1=(186, 383, 35.0)),
               tiny_model(2, 3.9151, inf1=(644, 383, 106.0)),
               tiny_model(3, 3.1873, inf1=(665, 502, 116.0), cpu=(0, 368, 68.44)),
               tiny_model(4, 5.3388, inf1=(387, 2000, 106.0)), tiny_model(5, 8.9078, inf1=(438, 213, 72.0))],
    "catalogue": {"cpu_slice_vcpu": 2, "server_base": {"cpu_m": 0, "memory_mib": 50},
                  "daemonset_overhead": {"cpu_m": 50, "memory_mib": 0}, "platform": {"eks_control_plane": 0.1},
                  "instances": [
                      {"name": "c5.t0", "processor": "cpu", "price_per_hour": 0.08, "vcpu": 2, "memory_gib": 2,
                       "cores_per_device": 2, "max_pods": 9},
                      {"name": "c5.t1", "processor": "cpu", "price_per_hour": 0.14, "vcpu": 2, "memory_gib": 2,
                       "cores_per_device": 2, "max_pods": 18},
                      inf1_type("inf1.t2", 0.724, 16, 3, 3, 1, 1, 6)]},
    "max_util": 0.83, "max_dev_gib": None,
}


# -- tiny random instances against the brute force ---------------------------------------------

@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow])
@given(case=tiny_cases())
@example(case=FOUND_HOST_AGGREGATE_1)
@example(case=FOUND_HOST_AGGREGATE_2)
def test_planner_matches_brute_force(case):
    opts = PackingOptions(max_utilization=case["max_util"], max_device_memory_gib=case["max_dev_gib"])
    catalogue = parse(InstanceCatalogue, case["catalogue"], "instances.yaml")
    models = parse(ModelCatalogue, {"models": case["models"]}, "models.yaml").models
    try:
        shapes = node_shapes(catalogue, opts)
    except ValueError:
        assume(False)  # no usable instance type at all: not what this test is about
    brute = BruteForce(models, shapes, opts.max_utilization)
    for row in brute.need:
        for n in row:
            assert n is None or n.u <= opts.max_utilization, "the strategy must not draw hot models"
    optimum, best_nodes = brute.solve()
    profiles, sources = resolve_profiles(models)
    if math.isinf(optimum):
        # Some model fits no pod of any shape: the planner must say so, then the case is skipped.
        with pytest.raises(UnplaceableModels):
            plan_servers(models, profiles, sources, catalogue, opts)
        assume(False)
    plan = plan_servers(models, profiles, sources, catalogue, opts).plan
    platform = sum(catalogue.platform.values())
    assert plan.platform_per_hour == pytest.approx(platform, abs=COST_TOL)
    assert abs(plan.cost_per_hour - plan.platform_per_hour - optimum) <= COST_TOL, (
        f"planner ${plan.cost_per_hour - plan.platform_per_hour:.6f}/h ({plan.instances}) vs optimum "
        f"${optimum:.6f}/h {best_nodes}; planner nodes: {nodes_described(plan)}; shapes: {shapes}"
    )
    assert plan.lower_bound_per_hour <= optimum + platform + COST_TOL
    assert plan.lower_bound_per_hour <= plan.cost_per_hour + COST_TOL
    assert violations(plan, models, shapes, opts.max_utilization) == [], nodes_described(plan)
    max_dev_mib = case["max_dev_gib"] * 1024 if case["max_dev_gib"] else 0
    with tempfile.TemporaryDirectory() as d:
        check_plan(Path(d), case["models"], case["catalogue"], plan.to_json_dict(), opts.max_utilization, max_dev_mib)


def test_brute_force_on_a_hand_solved_case():
    """Sanity check of the brute force itself: two 1-device nodes vs one 2-device node."""
    catalogue = parse(InstanceCatalogue, {
        "instances": [
            {"name": "one", "processor": "inf1", "price_per_hour": 0.3, "vcpu": 4, "memory_gib": 8, "devices": 1,
             "device_memory_gib": 1, "cores_per_device": 1, "max_pods": 10},
            {"name": "two", "processor": "inf1", "price_per_hour": 0.5, "vcpu": 4, "memory_gib": 8, "devices": 2,
             "device_memory_gib": 1, "cores_per_device": 1, "max_pods": 10},
        ],
    }, "instances.yaml")
    prof = {"inf1": {"device_memory_mib": 600, "host_memory_mib": 100, "latency_ms": 10}}
    models = [ModelSpec(id=f"m{i}", rps=10, profiles=prof) for i in range(3)]
    shapes = node_shapes(catalogue, PackingOptions(max_device_memory_gib=1.0))
    # 600 MiB each, 1024 MiB per device: one model per pod, three pods: "two" + "one" = 0.8.
    assert BruteForce(models, shapes, 0.83).solve()[0] == pytest.approx(0.8)
    assert BruteForce(models[:2], shapes, 0.83).solve()[0] == pytest.approx(0.5)


def test_a_model_that_fits_nowhere_is_named():
    models = [
        ModelSpec(id="small-one", rps=1, profiles={"inf1": {"device_memory_mib": 300, "host_memory_mib": 100, "latency_ms": 5}}),
        ModelSpec(id="enormous-model", rps=1, profiles={"inf1": {"device_memory_mib": 50000, "host_memory_mib": 100,
                                                                 "latency_ms": 5}}),
        ModelSpec(id="cpu-only-model", rps=1, profiles={"cpu": {"device_memory_mib": 0, "host_memory_mib": 100, "latency_ms": 5}}),
    ]
    catalogue = parse(InstanceCatalogue, {"instances": [
        {"name": "inf1.small", "processor": "inf1", "price_per_hour": 0.2, "vcpu": 4, "memory_gib": 8, "devices": 1,
         "device_memory_gib": 8, "cores_per_device": 4, "max_pods": 10}]}, "instances.yaml")
    profiles, sources = resolve_profiles(models)
    with pytest.raises(UnplaceableModels) as exc:
        plan_servers(models, profiles, sources, catalogue, PackingOptions())
    msg = str(exc.value)
    assert "enormous-model" in msg and "50000 MiB" in msg
    assert "cpu-only-model" in msg and "no profile" in msg
    assert "small-one" not in msg


# -- regressions found by the property test ------------------------------------------------------

@pytest.mark.parametrize("n", [3, 30, 100])
def test_pods_fit_their_nodes_one_by_one(n):
    """n models whose pods take 900 MiB of host memory each; a node allocates 1484 MiB (2 GiB less
    7.5% VM overhead, kube-reserved and eviction), so no pod
    holds two of them and no node holds two pods: n nodes, the cheapest being n x inf1.one ($0.90).
    inf1.two ($1.00, 2 devices) looks like n/2 nodes to a model that only sums host memory over a
    shape (n x 900 <= n/2 x 2 x 1484), but needs n as well. At commit 66fdd1e: n = 30 stops with
    "the node-level integer program found no solution (Infeasible)", n = 100 gives 100 x inf1.two."""
    model_dicts = [{"id": f"m{i}", "rps": 1.0, "profiles": {"inf1": inline(100, 900, 10)}} for i in range(n)]
    catalogue_dict = {"instances": [inf1_type("inf1.two", 1.0, 4, 2, 2, 1, 4, 5), inf1_type("inf1.one", 0.9, 4, 2, 1, 1, 4, 5)]}
    opts = PackingOptions(time_limit_s=20.0)
    models, catalogue, result = solve(model_dicts, catalogue_dict, opts)
    shapes = node_shapes(catalogue, opts)
    # floor(1484.4) less a MiB per pod for rounding requests up to whole MiB
    assert [(s.slots, s.host_alloc_mib, s.pod_base_mib) for s in shapes] == [(2, 1482.0, 0.0), (1, 1483.0, 0.0)]
    if n <= 6:
        assert BruteForce(models, shapes, opts.max_utilization).solve()[0] == pytest.approx(0.9 * n)
    assert violations(result.plan, models, shapes, opts.max_utilization) == []
    assert result.plan.instances == {"inf1.one": n}, result.plan.instances


def test_pricing_is_not_shared_between_shapes_with_different_host_memory():
    """inf1.t0 and inf1.t1 have the same device, core and load caps but not the same host
    memory; a pod priced for inf1.t0 (five models, 3508 MiB) must not become an inf1.t1 column
    (2487 MiB allocatable): at commit 903fe78 the planner stopped with "a pod of 3508 MiB cannot
    fit a inf1.t1 node"."""
    case = json.loads(json.dumps(FOUND_HOST_AGGREGATE_1))
    case["models"][2] = tiny_model(2, 4.8545, inf1=(101, 166, 100.0))
    opts = PackingOptions(max_utilization=case["max_util"])
    models, catalogue, result = solve(case["models"], case["catalogue"], opts)
    shapes = node_shapes(catalogue, opts)
    assert violations(result.plan, models, shapes, opts.max_utilization) == []
    optimum = BruteForce(models, shapes, opts.max_utilization).solve()[0]
    assert result.plan.cost_per_hour - result.plan.platform_per_hour == pytest.approx(optimum, abs=COST_TOL)


@pytest.mark.parametrize("excess", [1e-7, 1e-6])
def test_utilisation_cap_holds_to_the_stated_tolerance(excess):
    """Capacities are compared with a relative tolerance of 1e-9. Two models of utilisation 0.3
    and 0.3 + excess on a 0.6 cap do not fit one pod; at commits 903fe78 and 78a34d7 the planner
    (found by the property test) put such pods at up to 0.600001, which check_plan.py rejects."""
    model_dicts = [
        {"id": "a", "rps": 300.0, "profiles": {"inf1": inline(100, 100, 1.0)}},
        {"id": "b", "rps": 300.0 + excess * 1000, "profiles": {"inf1": inline(100, 100, 1.0)}},
    ]
    catalogue_dict = {"instances": [{"name": "inf1.one", "processor": "inf1", "price_per_hour": 0.2, "vcpu": 4,
                                     "memory_gib": 8, "devices": 1, "device_memory_gib": 8, "cores_per_device": 1,
                                     "max_pods": 10}]}
    opts = PackingOptions(max_utilization=0.6)
    models, catalogue, result = solve(model_dicts, catalogue_dict, opts)
    shapes = node_shapes(catalogue, opts)
    assert BruteForce(models, shapes, 0.6).solve()[0] == pytest.approx(0.4)
    assert violations(result.plan, models, shapes, 0.6) == []
    assert result.plan.instances == {"inf1.one": 2}


# -- exact fill: pairs that fill a device exactly ----------------------------------------------



def test_first_fit_decreasing_misses_the_exact_fill():
    """The exact-fill instances are not trivial: first-fit decreasing needs more devices on some."""
    ffd = {(seed, pairs): first_fit_decreasing(exact_fill_items(seed, pairs)) for seed, pairs in EXACT_SEEDS}
    assert all(n >= pairs for (_, pairs), n in ffd.items())
    assert any(n > pairs for (_, pairs), n in ffd.items()), ffd


@pytest.mark.parametrize("seed,pairs", EXACT_SEEDS)
def test_exact_fill_is_found(seed, pairs, tmp_path):
    model_dicts, catalogue_dict = exact_fill_case(seed, pairs)
    opts = PackingOptions(max_utilization=EXACT_UTIL, max_device_memory_gib=EXACT_CAP_GIB)
    _, catalogue, result = solve(model_dicts, catalogue_dict, opts)
    plan = result.plan
    assert plan.instances == {"inf1.one": pairs}, f"optimum is {pairs} devices (one per pair); FFD: " \
        f"{first_fit_decreasing(exact_fill_items(seed, pairs))}"
    assert plan.cost_per_hour == pytest.approx(pairs * EXACT_PRICE + 0.1, abs=COST_TOL)
    assert plan.gap <= 1e-4
    assert plan.lower_bound_per_hour <= plan.cost_per_hour + COST_TOL
    assert all(len(s.models) == 2 for s in plan.servers)
    models = parse(ModelCatalogue, {"models": model_dicts}, "models.yaml").models
    assert violations(plan, models, node_shapes(catalogue, opts), EXACT_UTIL) == []
    check_plan(tmp_path, model_dicts, catalogue_dict, plan.to_json_dict(), EXACT_UTIL, EXACT_CAP_GIB * 1024)


# -- the seed scenario of the reference design --------------------------------------------------

SEED_MODELS = 3040
SEED_PROFILE = {"device_memory_mib": 380, "host_memory_mib": 400, "latency_ms": 22}
SEED_RPS = 2.05


def seed_models() -> List[dict]:
    return [{"id": f"model-{k:04d}", "rps": SEED_RPS, "profiles": {"inf1": dict(SEED_PROFILE)}} for k in range(SEED_MODELS)]


def require_instances_yaml() -> None:
    if not INSTANCES_YAML.is_file():
        pytest.skip("config/instances.yaml is not there yet")


@pytest.mark.slow
def test_seed_scenario_on_inf1_6xlarge(tmp_path, capsys):
    """40 x inf1.6xlarge = $47.20/h, 19 models per server, through the CLI as the issue ran it."""
    require_instances_yaml()
    from packing.cli import main

    models_path = write_yaml(tmp_path / "models.yaml", {"models": seed_models()})
    out = tmp_path / "plan.json"
    rc = main(["plan", "--models", str(models_path), "--instances", str(INSTANCES_YAML), "--out", str(out),
               "--only-instance-types", "inf1.6xlarge", "--max-device-memory-gib", "7.4",
               "--max-utilization", "0.83", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    plan = json.loads(out.read_text())
    assert plan["instances"] == {"inf1.6xlarge": 40}
    assert plan["cost_per_hour"] == pytest.approx(47.20 + plan["platform_per_hour"], abs=COST_TOL)
    catalogue = parse(InstanceCatalogue, yaml.safe_load(INSTANCES_YAML.read_text()), "instances.yaml")
    assert plan["platform_per_hour"] == pytest.approx(sum(catalogue.platform.values()), abs=COST_TOL)
    assert len(plan["servers"]) == 160
    assert {len(s["models"]) for s in plan["servers"]} == {19}
    assert plan["lower_bound_per_hour"] <= plan["cost_per_hour"] + COST_TOL
    check_plan(tmp_path, seed_models(), None, plan, 0.83, 7.4 * 1024, instances_path=INSTANCES_YAML)


@pytest.mark.slow
def test_seed_scenario_over_the_full_catalogue():
    """Host memory binds on inf1.6xlarge (4 x 8,300 MiB pods of 19 models): the full catalogue
    may choose other inf1 sizes, never a dearer plan."""
    require_instances_yaml()
    catalogue = parse(InstanceCatalogue, yaml.safe_load(INSTANCES_YAML.read_text()), "instances.yaml")
    models = parse(ModelCatalogue, {"models": seed_models()}, "models.yaml").models
    profiles, sources = resolve_profiles(models)
    opts = PackingOptions(max_utilization=0.83, max_device_memory_gib=7.4)
    plan = plan_servers(models, profiles, sources, catalogue, opts).plan
    platform = sum(catalogue.platform.values())
    assert plan.cost_per_hour <= 47.20 + platform + COST_TOL, plan.instances
    assert plan.lower_bound_per_hour <= plan.cost_per_hour + COST_TOL
    assert sum(len(s.models) for s in plan.servers) == SEED_MODELS
    assert violations(plan, models, node_shapes(catalogue, opts), 0.83) == []


# -- determinism -------------------------------------------------------------------------------

def mixed_models(seed: int, n: int) -> List[dict]:
    rng = random.Random(seed)
    out = []
    for k in range(n):
        profiles = {}
        if rng.random() < 0.8:
            profiles["inf1"] = {"device_memory_mib": rng.randint(150, 2500), "host_memory_mib": rng.randint(100, 1500),
                                "latency_ms": round(rng.uniform(3, 40), 2)}
        if not profiles or rng.random() < 0.5:
            profiles["cpu"] = {"device_memory_mib": 0, "host_memory_mib": rng.randint(100, 1500),
                               "latency_ms": round(rng.uniform(10, 120), 2)}
        out.append({"id": f"mixed-{k:03d}", "rps": round(rng.uniform(0.05, 8), 3), "profiles": profiles})
    return out


@pytest.mark.parametrize("n", [8, 90])  # every pattern listed; column generation
def test_the_gap_splits_into_rounding_and_bound(n):
    """solver.rounding_loss and solver.bound_weakness put the LP between plan and bound: they add up
    to the gap, and where the bound with whole nodes lies above the LP (whose nodes are fractional),
    the whole gap is rounding's."""
    require_instances_yaml()
    catalogue_dict = yaml.safe_load(INSTANCES_YAML.read_text())
    plan = solve(mixed_models(9, n), catalogue_dict, PackingOptions(max_utilization=0.83, time_limit_s=4.0))[2].plan
    sol = plan.solver
    assert sol["name"] == ("exact-enumeration+highs" if n <= 60 else "column-generation+highs")
    assert sol["rounding_loss"] + sol["bound_weakness"] == pytest.approx(plan.gap, abs=3e-6)
    middle = max(sol["lp_per_hour"], plan.lower_bound_per_hour)
    assert plan.cost_per_hour * (1 - sol["rounding_loss"]) == pytest.approx(middle, abs=1e-4)
    assert sol["bound_weakness"] >= -1e-6, (sol["lp_per_hour"], plan.lower_bound_per_hour)


def test_a_started_integer_master_is_never_dearer_than_its_start():
    """The integer master started from iterated rounding (packing.solve.solver.RESTRICTED_INTEGER_MASTER) keeps
    that plan as its incumbent, with the fewest nodes the master's rows allow for it."""
    require_instances_yaml()
    catalogue = parse(InstanceCatalogue, yaml.safe_load(INSTANCES_YAML.read_text()), "instances.yaml")
    models = parse(ModelCatalogue, {"models": mixed_models(9, 120)}, "models.yaml").models
    profiles, _ = resolve_profiles(models)
    opts = PackingOptions(max_utilization=0.83)
    dem = build_demand(models, profiles, node_shapes(catalogue, opts), opts)
    cls = build_classes(dem, opts.max_utilization, CLASS_RESOLUTION, LOAD_RESOLUTION)
    cg = ColumnGeneration(cls, dem.shapes, opts.min_replicas)
    cg.run(time.perf_counter() + 2.0)
    rounded = iterated_rounding(cg, time.perf_counter() + 1.0)
    shapes = dem.shapes
    need = fewest_nodes(cg.patterns, rounded, shapes)
    for t, n in need.items():  # one node fewer of any shape breaks one of its rows
        mine = [(cg.patterns[j], m) for j, m in rounded.items() if cg.patterns[j].shape == t]
        pods = sum(p.replicas * m for p, m in mine)
        host = sum(p.replicas * p.host_per_pod * m for p, m in mine)
        assert pods <= shapes[t].slots * n and host <= shapes[t].host_alloc_mib * n * (1 + 1e-9)
        if n > 0:
            big = [sum(p.replicas * m for p, m in mine if p.host_per_pod > shapes[t].host_alloc_mib / q * (1 + 1e-9))
                   / (q - 1) for q in BIG_POD_SPLITS]
            assert max([pods / shapes[t].slots, host / shapes[t].host_alloc_mib] + big) > n - 1
    ip = integer_master(cg.patterns, cls.count, shapes, time_limit=1.0, start=rounded)
    assert ip.cost <= nodes_price(need, shapes) + 1e-9
    placed = np.zeros(len(cls), int)
    for j, m in ip.servers.items():
        for i, a in cg.patterns[j].counts:
            placed[i] += a * m
    assert (placed >= cls.count).all()


def test_same_inputs_give_the_same_plan():
    require_instances_yaml()
    catalogue_dict = yaml.safe_load(INSTANCES_YAML.read_text())
    model_dicts = mixed_models(5, 8)
    opts = PackingOptions(max_utilization=0.83)

    def once() -> dict:
        plan = solve(model_dicts, catalogue_dict, opts)[2].plan.to_json_dict()
        plan.pop("solve_seconds")
        plan.pop("created_at")
        return plan

    first, second = once(), once()
    assert json.dumps(first, sort_keys=True) == json.dumps(second, sort_keys=True)


def test_same_inputs_give_the_same_plan_file(tmp_path, capsys):
    require_instances_yaml()
    from packing.cli import main

    models_path = write_yaml(tmp_path / "models.yaml", {"models": mixed_models(9, 8)})
    plans = []
    for k in range(2):
        out = tmp_path / f"plan{k}.json"
        rc = main(["plan", "--models", str(models_path), "--instances", str(INSTANCES_YAML), "--out", str(out), "--quiet"])
        assert rc == 0, capsys.readouterr().err
        plan = json.loads(out.read_text())
        plan.pop("solve_seconds")
        plan.pop("created_at")
        plans.append(plan)
    assert plans[0] == plans[1]


# -- a plan no dearer than a known one -----------------------------------------------------------

# A packing of mixed_models(5, 30) that the planner of commit 903fe78 found ($0.796/h of instances).
WITNESS_30 = [
    ("c5.2xlarge", [["mixed-008", "mixed-011", "mixed-016", "mixed-021"], ["mixed-002", "mixed-005", "mixed-010", "mixed-017"],
                    ["mixed-012", "mixed-013", "mixed-018", "mixed-024"], ["mixed-004", "mixed-015", "mixed-019", "mixed-025"]]),
    ("inf1.xlarge", [["mixed-001", "mixed-003", "mixed-006", "mixed-014", "mixed-020", "mixed-022", "mixed-026", "mixed-027",
                      "mixed-028"]]),
    ("inf1.xlarge", [["mixed-000", "mixed-007", "mixed-009", "mixed-023", "mixed-029"]]),
]


@pytest.mark.xfail(strict=False, reason="known gap (issue 2 note): with enumeration out of reach, rounding this "
                   "cpu+inf1 mix finds $0.796/h only on some runs ($0.80-$0.88/h seen), depending on the time it gets")
def test_thirty_mixed_models_cost_no_more_than_a_known_packing():
    """30 mixed models over config/instances.yaml: the packing above is feasible (checked here,
    independently) at $0.796/h; the planner must not return a dearer plan. (It returned $2.496/h,
    c5.12xlarge + 2 x inf1.xlarge, four cpu pods on a 24-slice node, with a 10 s or a 60 s limit.)"""
    require_instances_yaml()
    catalogue_dict = yaml.safe_load(INSTANCES_YAML.read_text())
    opts = PackingOptions(max_utilization=0.83, time_limit_s=10.0)
    models, catalogue, result = solve(mixed_models(5, 30), catalogue_dict, opts)
    shapes = node_shapes(catalogue, opts)
    witness = packing_cost(WITNESS_30, models, shapes, 0.83)
    assert witness == pytest.approx(0.796)
    plan = result.plan
    assert violations(plan, models, shapes, 0.83) == []
    assert plan.cost_per_hour - plan.platform_per_hour <= witness + COST_TOL, (plan.instances, nodes_described(plan))


# -- bad inputs through the CLI ------------------------------------------------------------------

GOOD_MODELS = [
    {"id": "bert-a", "rps": 2.0, "profiles": {"inf1": {"device_memory_mib": 400, "host_memory_mib": 300, "latency_ms": 10}}},
    {"id": "bert-b", "rps": 1.0, "profiles": {"inf1": {"device_memory_mib": 500, "host_memory_mib": 300, "latency_ms": 12}}},
]
GOOD_CATALOGUE = {
    "instances": [{"name": "inf1.xlarge", "processor": "inf1", "price_per_hour": 0.228, "vcpu": 4, "memory_gib": 8,
                   "devices": 1, "device_memory_gib": 8, "cores_per_device": 4, "max_pods": 38}],
    "server_base": {"cpu_m": 500, "memory_mib": 700},
    "platform": {"eks_control_plane": 0.1},
}


def squash(text: str) -> str:
    """Without any whitespace: the console may wrap a long message anywhere."""
    return "".join(text.split())


def with_model(k: int, **changes) -> List[dict]:
    models = json.loads(json.dumps(GOOD_MODELS))
    models[k].update(changes)
    return models


def cli_files(tmp_path: Path, models: Any = None, catalogue: Any = None) -> Tuple[Path, Path]:
    m = tmp_path / "models.yaml"
    i = tmp_path / "instances.yaml"
    if isinstance(models, str):
        m.write_text(models, encoding="utf-8")
    else:
        write_yaml(m, {"models": models if models is not None else GOOD_MODELS})
    write_yaml(i, catalogue if catalogue is not None else GOOD_CATALOGUE)
    return m, i


def run_cli(capsys, argv: List[str]) -> Tuple[int, str]:
    from packing.cli import main

    capsys.readouterr()
    rc = main(argv)
    return rc, capsys.readouterr().err


BAD_INPUTS = {
    # name: (models, catalogue, extra argv, the pieces the message must contain)
    "negative rps": (with_model(1, rps=-3), None, [], ["models.yaml: models[1].rps: must be >= 0, got -3"]),
    "unknown field": (with_model(0, rsp=3), None, [], ["models.yaml: models[0].rsp:", "not a known field"]),
    "non-DNS id": (with_model(0, id="Bert_Base"), None, [], ["models.yaml: models[0].id:", "DNS label", "'Bert_Base'"]),
    "duplicate ids": (with_model(1, id="bert-a"), None, [], ["models.yaml", "models[1].id", "'bert-a'", "models[0]"]),
    "invalid YAML": ("models:\n  - {id: bert-a, rps: 1\n  - {id: bert-b}\n", None, [], ["models.yaml: not valid YAML", "line"]),
    "unknown instance type": (None, None, ["--only-instance-types", "inf1.xlarge,inf9.huge"],
                              ["--only-instance-types", "inf9.huge", "not in the instance catalogue"]),
    "fits nowhere": (with_model(1, profiles={"inf1": {"device_memory_mib": 50000, "host_memory_mib": 300, "latency_ms": 5}}),
                     None, [], ["bert-b", "inf1", "needs 50000 MiB"]),
    "accelerator without devices": (None, {"instances": [{"name": "inf1.odd", "processor": "inf1", "price_per_hour": 0.3,
                                                          "vcpu": 4, "memory_gib": 8, "device_memory_gib": 8,
                                                          "cores_per_device": 4, "max_pods": 38}]},
                                    [], ["instances.yaml: instances[0]", "inf1.odd", "devices"]),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS), ids=list(BAD_INPUTS))
def test_bad_input_is_named_and_writes_nothing(case, tmp_path, capsys):
    models, catalogue, extra, pieces = BAD_INPUTS[case]
    m, i = cli_files(tmp_path, models, catalogue)
    out = tmp_path / "out" / "plan.json"
    rc, err = run_cli(capsys, ["plan", "--models", str(m), "--instances", str(i), "--out", str(out), "--quiet", *extra])
    assert rc == 2, err
    for piece in pieces:
        assert squash(piece) in squash(err), f"{piece!r} not in {err!r}"
    assert not out.exists()
    assert not out.with_suffix(".png").exists()


def test_missing_file_is_named(tmp_path, capsys):
    _, i = cli_files(tmp_path)
    missing = tmp_path / "nowhere" / "models.yaml"
    out = tmp_path / "plan.json"
    rc, err = run_cli(capsys, ["plan", "--models", str(missing), "--instances", str(i), "--out", str(out)])
    assert rc == 2
    assert squash(f"{missing}: no such file") in squash(err)
    assert not out.exists()


@pytest.mark.parametrize("argv", [
    ["--max-utilization", "0"],
    ["--max-utilization", "1.5"],
    ["--max-device-memory-gib", "7.4", "--memory-headroom", "0.1"],
], ids=["utilization-0", "utilization-1.5", "both-memory-options"])
def test_bad_options_exit_2(argv, tmp_path, capsys):
    from packing.cli import main

    m, i = cli_files(tmp_path)
    out = tmp_path / "plan.json"
    with pytest.raises(SystemExit) as exc:
        main(["plan", "--models", str(m), "--instances", str(i), "--out", str(out), *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert argv[0] in err or argv[-2] in err
    assert not out.exists()


def test_existing_plan_is_left_alone_on_bad_input(tmp_path, capsys):
    m, i = cli_files(tmp_path)
    out = tmp_path / "plan.json"
    rc, err = run_cli(capsys, ["plan", "--models", str(m), "--instances", str(i), "--out", str(out), "--quiet"])
    assert rc == 0, err
    before, stamp = out.read_bytes(), out.stat().st_mtime_ns
    write_yaml(m, {"models": with_model(1, rps=-3)})
    rc, err = run_cli(capsys, ["plan", "--models", str(m), "--instances", str(i), "--out", str(out), "--quiet"])
    assert rc == 2
    assert "models[1].rps" in err
    assert out.read_bytes() == before
    assert out.stat().st_mtime_ns == stamp
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".plan.json.")]  # no temporary left behind


def test_alike_models_hot_everywhere_each_get_a_server():
    """Hot models with the same replicas share a class; each must still get its own server. (A
    100,000-model catalogue once lost one: the class's pure-hot servers were counted once.)"""
    catalogue = {"cpu_slice_vcpu": 2, "platform": {},
                 "instances": [inf1_type("inf1.t", 0.5, 8, 16, 4, 8, 4, 40)]}
    hot = [tiny_model(i, 40.0, inf1=(300, 300, 100.0)) for i in range(3)]  # load 1.0 a device: 2 replicas
    rng = random.Random(5)
    small = [tiny_model(i, 0.5, inf1=(rng.uniform(200, 900), 300, rng.uniform(15, 30))) for i in range(3, 80)]
    models, catalogue, result = solve(hot + small, catalogue, PackingOptions(time_limit_s=10))
    placed = [m for s in result.plan.servers for m in s.models]
    assert sorted(placed) == sorted(m.id for m in models)
    for i in range(3):
        (server,) = [s for s in result.plan.servers if f"m{i}" in s.models]
        assert server.models == [f"m{i}"] and server.replicas == 2
