"""The bounds that hold while classes are coarse: with members of a class unlike each other, the
configuration LP's Farley bound and the fluid relaxation, with fractional or whole nodes (all over
the classes' `lo` values), must still never exceed the brute-force optimum of the real models."""
from __future__ import annotations

import math
import time

from hypothesis import HealthCheck, assume, given, settings

from contracts import InstanceCatalogue, ModelCatalogue, parse
from packing.model.classes import build_classes
from packing.model.demand import build_demand
from packing.model.profiles import resolve_profiles
from packing.model.resources import PackingOptions, node_shapes
from packing.solve.bound import fluid_relaxation, whole_node_bound
from packing.solve.columngen import ColumnGeneration
from tests.bruteforce import BruteForce
from tests.tiny_cases import tiny_cases

# Wide enough that most classes hold models of quite different sizes, so `hi` and `lo` differ
# and a bound priced with the wrong side would show.
COARSE_MEMORY = 0.6
COARSE_LOAD = 3.0
TOL = 1e-6


def one_inf1_type(price: float, devices: int, vcpu: int, memory_gib: int, max_pods: int) -> InstanceCatalogue:
    """A catalogue of one inf1 type with 1 GiB chips of one core, no overheads."""
    return parse(InstanceCatalogue, {
        "cpu_slice_vcpu": 2, "server_base": {"cpu_m": 100, "memory_mib": 200},
        "daemonset_overhead": {"cpu_m": 0, "memory_mib": 0}, "platform": {},
        "instances": [{"name": f"inf1.t{devices}", "processor": "inf1", "price_per_hour": price, "vcpu": vcpu,
                       "memory_gib": memory_gib, "devices": devices, "device_memory_gib": 1, "cores_per_device": 1,
                       "max_pods": max_pods}],
    }, "instances.yaml")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow])
@given(case=tiny_cases())
def test_bounds_over_coarse_classes_never_exceed_the_optimum(case):
    opts = PackingOptions(max_utilization=case["max_util"], max_device_memory_gib=case["max_dev_gib"])
    catalogue = parse(InstanceCatalogue, case["catalogue"], "instances.yaml")
    models = parse(ModelCatalogue, {"models": case["models"]}, "models.yaml").models
    try:
        shapes = node_shapes(catalogue, opts)
    except ValueError:
        assume(False)
    optimum, _ = BruteForce(models, shapes, opts.max_utilization).solve()
    assume(not math.isinf(optimum))
    profiles, _ = resolve_profiles(models)
    dem = build_demand(models, profiles, shapes, opts)
    cls = build_classes(dem, opts.max_utilization, COARSE_MEMORY, COARSE_LOAD)
    fluid = fluid_relaxation(cls, shapes, opts.min_replicas)
    assert fluid.value <= optimum + TOL
    whole = whole_node_bound(cls, shapes, opts.min_replicas, time_limit=30.0)
    assert fluid.value - TOL <= whole <= optimum + TOL, (fluid.value, whole, optimum)
    cg = ColumnGeneration(cls, shapes, opts.min_replicas)
    # A generous limit, not a timing check: the bound must hold wherever the loop stops.
    result = cg.run(time.perf_counter() + 30.0, warm=(fluid.pi, fluid.rho))
    assert result.lower_bound <= optimum + TOL, (result.lower_bound, optimum, len(cls), len(models))
    # And at duals that are not the LP's at all (the fluid relaxation's), where Farley's scaling
    # does all the work.
    assert cg.farley_bound(fluid.pi, fluid.rho) <= optimum + TOL


def test_a_class_of_unlike_models_is_bounded_by_its_smallest():
    """Two models of 560 and 380 MiB share one 942 MiB chip; coarse classes put them in one class
    whose largest member fills a chip alone. The optimum is one node: a bound priced with the
    class maxima would claim two."""
    catalogue = one_inf1_type(price=1.0, devices=1, vcpu=4, memory_gib=8, max_pods=10)
    models = parse(ModelCatalogue, {"models": [
        {"id": "big", "rps": 1.0, "profiles": {"inf1": {"device_memory_mib": 560, "host_memory_mib": 100, "latency_ms": 10}}},
        {"id": "small", "rps": 1.0, "profiles": {"inf1": {"device_memory_mib": 380, "host_memory_mib": 100, "latency_ms": 10}}},
    ]}, "models.yaml").models
    opts = PackingOptions()
    shapes = node_shapes(catalogue, opts)
    optimum, _ = BruteForce(models, shapes, opts.max_utilization).solve()
    assert optimum == 1.0
    profiles, _ = resolve_profiles(models)
    cls = build_classes(build_demand(models, profiles, shapes, opts), opts.max_utilization, COARSE_MEMORY, COARSE_LOAD)
    assert len(cls) == 1 and cls.d_hi[0, 0] == 560 and cls.d_lo[0, 0] == 380
    fluid = fluid_relaxation(cls, shapes, opts.min_replicas)
    cg = ColumnGeneration(cls, shapes, opts.min_replicas)
    result = cg.run(time.perf_counter() + 30.0, warm=(fluid.pi, fluid.rho))
    assert abs(result.lp_value - 2.0) <= TOL  # columns are priced with the maxima: valid pods, a pessimistic LP
    assert fluid.value <= optimum + TOL
    assert result.lower_bound <= optimum + TOL


def test_whole_nodes_bound_what_a_share_of_a_node_cannot():
    """One small model on a four-chip node: the fluid relaxation buys a quarter of the node, the
    plan must buy all of it, and so must the bound with whole nodes."""
    catalogue = one_inf1_type(price=2.0, devices=4, vcpu=16, memory_gib=32, max_pods=20)
    models = parse(ModelCatalogue, {"models": [
        {"id": "lone", "rps": 1.0, "profiles": {"inf1": {"device_memory_mib": 300, "host_memory_mib": 100, "latency_ms": 10}}},
    ]}, "models.yaml").models
    opts = PackingOptions()
    shapes = node_shapes(catalogue, opts)
    profiles, _ = resolve_profiles(models)
    cls = build_classes(build_demand(models, profiles, shapes, opts), opts.max_utilization, COARSE_MEMORY, COARSE_LOAD)
    fluid = fluid_relaxation(cls, shapes, opts.min_replicas)
    assert fluid.value <= 0.5 + TOL  # a pod's share of the node
    assert abs(whole_node_bound(cls, shapes, opts.min_replicas, time_limit=10.0) - 2.0) <= TOL
