"""Closing the LP's part-used multi-slot shapes (packing/solve/sizes.py `close_part_nodes`): a big
node that the LP fills only in part costs its whole price once rounded, so the roundings do without
it where the LP then costs less than the LP with it plus the rest of that node; otherwise it stays."""
from __future__ import annotations

import time

import pytest

from contracts import InstanceCatalogue, ModelCatalogue, parse
from packing.model.classes import build_classes
from packing.model.demand import build_demand
from packing.model.profiles import resolve_profiles
from packing.model.resources import PackingOptions, node_shapes
from packing.solve import rounding
from packing.solve.columngen import ColumnGeneration
from packing.solve.knapsack import quiet_banner
from packing.solve.sizes import close_part_nodes
from tests.tiny_cases import inf1_type, tiny_model

BIG_PRICE, SMALL_PRICE = 3.0, 0.8  # six slots at $0.50 a slot, against one at $0.80


def generation(models: int) -> ColumnGeneration:
    """`models` models of 700 MiB on 1 GiB devices (one a pod), on a six-device node or a one-device one."""
    quiet_banner()
    catalogue = parse(InstanceCatalogue, {
        "cpu_slice_vcpu": 2, "server_base": {"cpu_m": 100, "memory_mib": 200},
        "daemonset_overhead": {"cpu_m": 50, "memory_mib": 30}, "platform": {},
        "instances": [inf1_type("inf1.big", BIG_PRICE, 24, 48, 6, 1, 4, 20),
                      inf1_type("inf1.small", SMALL_PRICE, 4, 8, 1, 1, 4, 10)]}, "instances.yaml")
    specs = parse(ModelCatalogue, {"models": [tiny_model(i, 1.0, inf1=(700, 300, 10)) for i in range(models)]},
                  "models.yaml").models
    opts = PackingOptions()
    profiles, _ = resolve_profiles(specs)
    dem = build_demand(specs, profiles, node_shapes(catalogue, opts), opts)
    cls = build_classes(dem, opts.max_utilization, 0.0, 0.5)
    cg = ColumnGeneration(cls, dem.shapes, opts.min_replicas)
    cg.run(time.perf_counter() + 5.0)
    return cg


def big(cg: ColumnGeneration) -> int:
    return [s.name for s in cg.shapes].index("inf1.big")


def test_a_third_of_a_big_node_is_closed_and_its_pods_go_to_small_nodes():
    cg = generation(2)
    t = big(cg)
    assert cg.read_lp() == pytest.approx(2 * BIG_PRICE / 6)  # the LP: two slots of the big node
    closed = close_part_nodes(cg, time.perf_counter() + 5.0)
    assert closed == [t]
    # Without it, two small nodes ($1.60/h), less than a third of a big one plus the rest of it ($3.00/h).
    assert cg.read_lp() == pytest.approx(2 * SMALL_PRICE)
    assert cg.master.node_values()[t] == pytest.approx(0.0)


def test_a_nearly_full_big_node_stays_open():
    cg = generation(5)
    t = big(cg)
    before = cg.read_lp()
    assert before == pytest.approx(5 * BIG_PRICE / 6)
    # Closed, five small nodes ($4.00/h) would cost more than the big node's LP share plus its sixth slot ($3.00/h).
    assert close_part_nodes(cg, time.perf_counter() + 5.0) == []
    assert cg.read_lp() == pytest.approx(before)
    assert cg.master.node_values()[t] == pytest.approx(5 / 6)


def test_the_greedy_cover_keeps_off_closed_shapes_while_another_takes_the_models():
    cg = generation(2)
    t = big(cg)
    # Open, the big node's slot is the cheaper pod ($0.50 against $0.80): the cover takes it.
    assert {cg.patterns[j].shape for j in rounding.greedy_cover(cg, cg.demand)} == {t}
    close_part_nodes(cg, time.perf_counter() + 5.0)
    cover = rounding.greedy_cover(cg, cg.demand)
    assert {cg.patterns[j].shape for j in cover} == {[s.name for s in cg.shapes].index("inf1.small")}
    assert sum(n * a for j, n in cover.items() for _, a in cg.patterns[j].counts) == 2
