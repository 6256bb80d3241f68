"""Emptying part-filled servers into the others' free room (packing/place/fleet.py, repair.tighten_plan):
hand-made cases with known answers, and random plans checked by the same independent rules the
first-fit baseline is checked by."""
from __future__ import annotations

import math
from typing import List

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from packing.improve.repair import tighten_plan
from packing.model.resources import PackingOptions
from packing.place.assemble import BuiltServer, Solved, place_on_nodes
from packing.solve.baselines import BaselineResult, BaselineServer
from tests.baseline_fixtures import PLATFORM, catalogue, demand_of, instance, model, violations

OPTS = PackingOptions(max_utilization=0.8, max_device_memory_gib=4.0)


def one_server_each(dem, shapes) -> Solved:
    """The emptiest plan there is: every model on a server of its own, on its cheapest shape."""
    built = []
    for m in range(len(dem.model_ids)):
        t = min((t for t in range(len(shapes)) if dem.eligible[m, t]), key=lambda t: (shapes[t].price / shapes[t].slots, t))
        built.append(BuiltServer(t, int(dem.replicas[m, t]), [m], host_per_pod=shapes[t].pod_base_mib + float(dem.h[m, t])))
    return Solved(built, place_on_nodes(built, shapes, spread=OPTS.min_replicas), 0.0, {})


def as_baseline(solved: Solved, shapes) -> BaselineResult:
    """The plan in the baseline's form, so `violations` checks it."""
    servers = [BaselineServer(s.shape, s.replicas, list(s.models), [n for n, _ in s.placements]) for s in solved.built]
    instances = {shapes[t].name: n for t, n in solved.nodes.items() if n}
    cost = sum(shapes[t].price * n for t, n in solved.nodes.items()) + PLATFORM
    return BaselineResult("tightened", instances, cost, 0.0, sum(s.replicas for s in servers), servers)


def price(solved: Solved, shapes) -> float:
    return sum(shapes[t].price * n for t, n in solved.nodes.items())


def test_four_models_of_40_percent_end_on_two_servers():
    cat = catalogue(instance("inf1.one", 0.25, 1, device_gib=4, memory_gib=16))
    models = [model(f"m{i}", 0.4 * 4096, rps=1.0) for i in range(4)]
    dem, shapes = demand_of(models, cat, OPTS)
    solved = tighten_plan(one_server_each(dem, shapes), dem, shapes, OPTS, math.inf, lambda _m: None)
    assert sorted(len(s.models) for s in solved.built) == [2, 2]
    assert sorted(m for s in solved.built for m in s.models) == [0, 1, 2, 3]
    assert solved.nodes == {0: 2}
    assert solved.info["servers_emptied"] == 2
    assert violations(as_baseline(solved, shapes), dem, shapes, OPTS) == []


def test_a_hot_models_own_server_neither_moves_nor_takes_others():
    # 40 ms on 4 cores: utilisation rps / 100. 120 rps is hot (1.2 > 0.8): two replicas of its own.
    cat = catalogue(instance("inf1.one", 0.25, 1, device_gib=4, memory_gib=16))
    models = [model("hot", 100.0, rps=120.0), model("small", 100.0, rps=1.0)]
    dem, shapes = demand_of(models, cat, OPTS)
    assert dem.hot[0, 0] and not dem.hot[1, 0]
    solved = tighten_plan(one_server_each(dem, shapes), dem, shapes, OPTS, math.inf, lambda _m: None)
    assert sorted(sorted(s.models) for s in solved.built) == [[0], [1]]
    assert solved.info["servers_emptied"] == 0


def test_host_memory_of_the_node_is_respected():
    # Two pods per node, 3 GiB of host memory for them: device memory leaves room, host memory
    # does not, so the small servers cannot all merge.
    cat = catalogue(instance("inf1.two", 0.5, 2, device_gib=4, memory_gib=4, max_pods=10))
    models = [model(f"m{i}", 500.0, rps=1.0, host=900.0) for i in range(4)]
    dem, shapes = demand_of(models, cat, OPTS)
    before = one_server_each(dem, shapes)
    before_price = price(before, shapes)
    solved = tighten_plan(before, dem, shapes, OPTS, math.inf, lambda _m: None)
    assert violations(as_baseline(solved, shapes), dem, shapes, OPTS) == []
    assert price(solved, shapes) <= before_price


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    items=st.lists(st.tuples(st.integers(20, 3000), st.integers(0, 160), st.integers(10, 2500)), min_size=1, max_size=24),
    slots=st.integers(1, 4),
    host_gib=st.sampled_from([4, 8, 16]),
)
def test_tightening_any_plan_keeps_every_rule_and_never_costs_more(items: List[tuple], slots: int, host_gib: int):
    cat = catalogue(instance("inf1.one", 0.25, 1, device_gib=4, memory_gib=8),
                    instance("inf1.many", 0.2 * slots + 0.1, slots, device_gib=4, memory_gib=host_gib * slots))
    models = [model(f"m{i}", float(mem), rps=float(rps), host=float(host)) for i, (mem, rps, host) in enumerate(items)]
    dem, shapes = demand_of(models, cat, OPTS)
    if not dem.eligible.any(axis=1).all():
        return  # a model that fits no node: the planner's error, not this pass's concern
    before = one_server_each(dem, shapes)
    before_price = price(before, shapes)
    solved = tighten_plan(before, dem, shapes, OPTS, math.inf, lambda _m: None)
    assert violations(as_baseline(solved, shapes), dem, shapes, OPTS) == []
    assert price(solved, shapes) <= before_price + 1e-9
    assert len(solved.built) == len(items) - solved.info["servers_emptied"]
