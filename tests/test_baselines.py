"""The baselines of packing/solve/baselines.py on hand-made cases with known answers, the reference
design's fixed packing on the seed scenario, and the planner against first-fit decreasing."""
from __future__ import annotations

import math
from typing import Optional

import pytest
import yaml

from contracts import InstanceCatalogue, ModelCatalogue, parse
from packing.generate import mixed_catalogue, seed_scenario
from packing.model.demand import build_demand
from packing.model.profiles import resolve_profiles
from packing.model.resources import PackingOptions, node_shapes
from packing.planner import plan_servers
from packing.solve.baselines import first_fit_decreasing_by_price, reference_fixed_packing
from tests.baseline_fixtures import COST_TOL, INSTANCES_YAML, PLATFORM, catalogue, demand_of, ffd, instance, model, violations

# -- first-fit decreasing by price: hand-made cases ----------------------------------------------

THREE_SHAPES = catalogue(instance("inf1.tiny", 0.2, 1, device_gib=2, memory_gib=16, vcpu=4),
                         instance("inf1.one", 0.5, 1, memory_gib=16, vcpu=4),
                         instance("inf1.four", 1.6, 4, memory_gib=64))


def test_one_model_buys_one_node_of_the_cheapest_shape_per_pod_slot():
    opts = PackingOptions()
    # 3000 MiB does not fit inf1.tiny's 2 GiB chip; of the two that hold it, inf1.four is the
    # cheaper per pod slot (0.40 against 0.50 $/h), though the dearer node.
    big = ffd([model("big", 3000)], THREE_SHAPES, opts)
    assert big.instances == {"inf1.four": 1}
    assert big.cost_per_hour == pytest.approx(1.6 + PLATFORM, abs=COST_TOL)
    assert big.pods == 1
    small = ffd([model("small", 500)], THREE_SHAPES, opts)
    assert small.instances == {"inf1.tiny": 1}
    assert small.cost_per_hour == pytest.approx(0.2 + PLATFORM, abs=COST_TOL)


def test_pods_fill_a_node_before_the_next_is_bought():
    # 1500 MiB each: one model per 2 GiB pod; four pods fill one inf1.four, the fifth buys another.
    opts = PackingOptions(max_device_memory_gib=2.0)
    result = ffd([model(f"m{k}", 1500) for k in range(5)], catalogue(instance("inf1.four", 1.6, 4, memory_gib=64)), opts)
    assert result.instances == {"inf1.four": 2}
    assert result.pods == 5
    assert sorted(len(s.models) for s in result.servers) == [1] * 5


def test_node_host_memory_limits_the_pods_on_a_node():
    # 4 GiB nodes: 4096 - (255 + 11 x 10) - 100 = 3631 MiB allocatable; a pod of 300 + 1200 MiB
    # leaves room for two per node, though the node has four chips.
    cat = catalogue(instance("inf1.host", 1.0, 4, memory_gib=4, max_pods=10))
    opts = PackingOptions(max_device_memory_gib=2.0)
    result = ffd([model(f"m{k}", 1500, host=1200) for k in range(4)], cat, opts)
    assert result.instances == {"inf1.host": 2}
    assert result.pods == 4


def test_first_fit_decreasing_misses_an_exact_fill():
    """Memory 640, 512, 384, 384, 384, 256 MiB into 1280 MiB pods (5, 4, 3, 3, 3, 2 tenths of a
    pod): two pods hold them exactly ({5, 3, 2}, {4, 3, 3}); FFD puts 5 and 4 together, then 3, 3, 3,
    and the 2 is left for a third pod. The planner finds the two."""
    cat = catalogue(instance("inf1.one", 0.25, 1, memory_gib=32))
    opts = PackingOptions(max_utilization=0.8, max_device_memory_gib=1.25)
    dicts = [model(f"m{k}", mem) for k, mem in enumerate([384, 640, 256, 384, 512, 384])]
    result = ffd(dicts, cat, opts)
    assert result.pods == 3 and result.instances == {"inf1.one": 3}
    by_memory = sorted(sorted(int(dicts[m]["profiles"]["inf1"]["device_memory_mib"]) for m in s.models)
                       for s in result.servers)
    assert by_memory == [[256], [384, 384, 384], [512, 640]]
    models = parse(ModelCatalogue, {"models": dicts}, "models.yaml").models
    profiles, sources = resolve_profiles(models)
    plan = plan_servers(models, profiles, sources, cat, opts).plan
    assert plan.instances == {"inf1.one": 2}
    assert plan.cost_per_hour < result.cost_per_hour


def test_exact_fill_pairs_are_found_when_sorted_by_the_largest_need():
    """Pairs whose halves sum to exactly the memory and load caps: sorted by memory alone, first
    fit misses some (tests/test_planner_optimality.py); sorted by the largest normalised need,
    each half's partner is the first pod it fits, so FFD pairs them exactly."""
    cat = catalogue(instance("inf1.one", 0.25, 1, memory_gib=32))
    opts = PackingOptions(max_utilization=0.8, max_device_memory_gib=2.0)
    pairs = [(384, 20.0), (1024, 30.0), (896, 44.0), (1664, 8.0)]  # (MiB, rps); partners: (2048 - MiB, 80 - rps)
    dicts = []
    for k, (mem, rps) in enumerate(pairs):
        dicts += [model(f"a{k}", mem, rps), model(f"b{k}", 2048 - mem, 80 - rps)]
    result = ffd(dicts, cat, opts)
    assert result.pods == len(pairs)
    assert sorted(sorted(dicts[m]["id"][1:] for m in s.models) for s in result.servers) == [[str(k)] * 2 for k in range(4)]


def test_hot_model_gets_its_own_server_with_its_replicas():
    cat = catalogue(instance("inf1.four", 1.6, 4, memory_gib=64))
    # rps 200: utilisation 2.0 on one chip, so ceil(2.0 / 0.8) = 3 pods of its own.
    dicts = [model("hot", 500, rps=200), model("cool", 500, rps=1)]
    result = ffd(dicts, cat, PackingOptions(max_utilization=0.8))
    servers = {tuple(s.models): s for s in result.servers}
    assert servers[(0,)].replicas == 3 and servers[(1,)].replicas == 1
    assert result.instances == {"inf1.four": 1} and result.pods == 4
    # With two replicas at least, a server's first two pods are on different nodes.
    two = ffd(dicts, cat, PackingOptions(max_utilization=0.8, min_replicas=2))
    servers = {tuple(s.models): s for s in two.servers}
    assert servers[(0,)].replicas == 3 and servers[(1,)].replicas == 2
    assert two.instances == {"inf1.four": 2} and two.pods == 5


def test_hot_model_takes_its_own_pods_where_they_cost_less_than_a_share_elsewhere():
    # On inf1.slow (one core a chip) 40 rps x 40 ms is 1.6 of a chip: hot, 2 pods at 0.10 $/h each.
    # On inf1.fast it is 0.4, half a pod at 2.00 $/h: 1.00 $/h. Its own pods win. The 4 rps model
    # is not hot on inf1.slow and goes there too, on a pod of its own kind.
    cat = catalogue(instance("inf1.slow", 0.1, 1, cores=1, vcpu=4), instance("inf1.fast", 2.0, 1, vcpu=4))
    result = ffd([model("busy", 500, rps=40), model("calm", 500, rps=4)], cat, PackingOptions(max_utilization=0.8))
    assert result.instances == {"inf1.slow": 3}
    assert sorted((s.replicas, tuple(s.models)) for s in result.servers) == [(1, (1,)), (2, (0,))]
    # Dearer slow chips (0.60 $/h: 2 pods cost 1.20 $/h) send it to half a fast pod instead.
    cat = catalogue(instance("inf1.slow", 0.6, 1, cores=1, vcpu=4), instance("inf1.fast", 2.0, 1, vcpu=4))
    result = ffd([model("busy", 500, rps=40)], cat, PackingOptions(max_utilization=0.8))
    assert result.instances == {"inf1.fast": 1}


def test_first_fit_decreasing_on_a_mixed_catalogue_is_feasible_with_replicas():
    cat = parse(InstanceCatalogue, yaml.safe_load(INSTANCES_YAML.read_text()), "instances.yaml")
    dicts = mixed_catalogue(400, seed=5, traffic="zipf")["models"]
    for opts in (PackingOptions(), PackingOptions(min_replicas=2)):
        dem, shapes = demand_of(dicts, cat, opts)
        result = first_fit_decreasing_by_price(dem, shapes, opts, PLATFORM)
        assert violations(result, dem, shapes, opts) == []


# -- the reference design's fixed packing ----------------------------------------------------------

def seed_case(only: Optional[tuple] = None):
    cat = parse(InstanceCatalogue, yaml.safe_load(INSTANCES_YAML.read_text()), "instances.yaml")
    opts = PackingOptions(max_utilization=0.83, max_device_memory_gib=7.4, only_instance_types=only)
    models = parse(ModelCatalogue, seed_scenario(), "models.yaml").models
    profiles, _ = resolve_profiles(models)
    shapes = node_shapes(cat, opts)
    return build_demand(models, profiles, shapes, opts), shapes, opts, float(sum(cat.platform.values()))


def test_reference_packing_is_forty_inf1_6xlarge_on_the_seed_scenario():
    for only in (("inf1.6xlarge",), None):
        dem, shapes, opts, platform = seed_case(only)
        ref = reference_fixed_packing(dem, shapes, opts, platform)
        assert ref is not None
        assert ref.instances == {"inf1.6xlarge": 40}
        assert ref.pods == 160 == math.ceil(3040 / 19)
        assert ref.cost_per_hour == pytest.approx(47.20 + platform, abs=COST_TOL)
    # 20 x 380 MiB = 7600 MiB is more than a 7.4 GiB chip holds: the fixed packing does not apply.
    assert reference_fixed_packing(dem, shapes, opts, platform, per_device=20) is None
    # Nor where the instance type is not offered.
    dem, shapes, opts, platform = seed_case(("inf1.xlarge",))
    assert reference_fixed_packing(dem, shapes, opts, platform) is None


def test_first_fit_decreasing_matches_the_reference_on_inf1_6xlarge():
    dem, shapes, opts, platform = seed_case(("inf1.6xlarge",))
    result = first_fit_decreasing_by_price(dem, shapes, opts, platform)
    assert result.instances == {"inf1.6xlarge": 40}
    assert {len(s.models) for s in result.servers} == {19}


def test_reference_packing_does_not_apply_to_a_mixed_catalogue():
    cat = parse(InstanceCatalogue, yaml.safe_load(INSTANCES_YAML.read_text()), "instances.yaml")
    dem, shapes = demand_of(mixed_catalogue(200, seed=3)["models"], cat, PackingOptions())
    assert reference_fixed_packing(dem, shapes, PackingOptions(), PLATFORM) is None


# -- the planner against first-fit decreasing -----------------------------------------------------

def test_planner_is_never_dearer_than_first_fit_decreasing():
    cat = parse(InstanceCatalogue, yaml.safe_load(INSTANCES_YAML.read_text()), "instances.yaml")
    models = parse(ModelCatalogue, mixed_catalogue(300, seed=7, traffic="zipf"), "models.yaml").models
    profiles, sources = resolve_profiles(models)
    opts = PackingOptions(time_limit_s=10)
    result = plan_servers(models, profiles, sources, cat, opts)
    platform = float(sum(cat.platform.values()))
    baseline = first_fit_decreasing_by_price(result.demand, result.demand.shapes, opts, platform)
    plan = result.plan
    assert plan.cost_per_hour <= baseline.cost_per_hour + COST_TOL, (plan.instances, baseline.instances)
    assert plan.lower_bound_per_hour <= baseline.cost_per_hour + COST_TOL
