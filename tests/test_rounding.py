"""Iterated rounding (packing/solve/rounding.py) over restricted LPs cut down to what is left:
the servers it chooses hold every model exactly once (no class over-covered, none left out), and
restoring the master after leaves it exactly as it was."""
from __future__ import annotations

import time

import numpy as np
import pytest

from contracts import InstanceCatalogue, ModelCatalogue, load, parse
from packing.generate import mixed_catalogue
from packing.model.classes import build_classes
from packing.model.demand import build_demand
from packing.model.dominance import undominated
from packing.model.profiles import resolve_profiles
from packing.model.resources import PackingOptions, node_shapes
from packing.solve import rounding
from packing.solve.columngen import ColumnGeneration
from packing.solve.knapsack import quiet_banner
from packing.solve.solver import CLASS_RESOLUTION, LOAD_RESOLUTION
from tests.plan_checks import ROOT


def generation(models: int, seed: int) -> ColumnGeneration:
    quiet_banner()
    specs = parse(ModelCatalogue, mixed_catalogue(models, seed=seed, traffic="zipf"), "models.yaml").models
    profiles, _ = resolve_profiles(specs)
    opts = PackingOptions()
    dem = build_demand(specs, profiles, node_shapes(load(InstanceCatalogue, ROOT / "config" / "instances.yaml"), opts), opts)
    dem = dem.on_shapes(undominated(dem, dem.shapes))
    cls = build_classes(dem, opts.max_utilization, CLASS_RESOLUTION, LOAD_RESOLUTION)
    cg = ColumnGeneration(cls, dem.shapes, opts.min_replicas)
    cg.run(time.perf_counter() + 2.0)
    return cg


def coverage(cg: ColumnGeneration, chosen) -> np.ndarray:
    held = np.zeros(len(cg.cls), int)
    for j, n in chosen.items():
        for i, a in cg.patterns[j].counts:
            held[i] += n * a
    return held


def matrix(cg: ColumnGeneration):
    lp = cg.master.h.getLp()
    a = lp.a_matrix_
    return list(a.start_), list(a.index_), list(a.value_), list(lp.row_lower_)


@pytest.mark.parametrize("models,seed", [(400, 3), (900, 8)])
def test_the_rounding_holds_every_model_exactly_once(models, seed):
    cg = generation(models, seed)
    chosen = rounding.iterated_rounding(cg, time.perf_counter() + 3.0)
    assert (coverage(cg, chosen) == cg.cls.count).all()


def test_restoring_the_master_after_a_cut_leaves_it_as_it_was():
    cg = generation(400, 3)
    before = matrix(cg)
    value = cg.read_lp()
    left = cg.demand.copy()
    rng = np.random.default_rng(1)
    left = np.minimum(left, rng.integers(0, 3, left.size))  # most classes cut to 0-2 models
    rounding.restrict(cg, left)
    cut = matrix(cg)
    assert cut[2] != before[2] and max(cut[2]) <= max(before[2])
    rounding.restrict(cg, cg.demand)
    assert matrix(cg) == before
    assert cg.read_lp() == pytest.approx(value, rel=1e-9)
    assert all((pr.knapsack("hi").ub == pr.knapsack("hi").full_ub).all() for pr in cg.pricing.pricers if pr.items.size)
