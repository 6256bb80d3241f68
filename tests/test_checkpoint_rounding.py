"""Rounding at checkpoints of the column generation (packing/solve/solver.py, ROUNDING_CHECKPOINTS): the
solver keeps the cheapest placed rounding, so the checkpoints can never leave it dearer than the
rounding at the end of the generation. Off by default (its A/B is beside the constant); this keeps
the path it takes working."""
from __future__ import annotations

import time

import pytest

from contracts import InstanceCatalogue, ModelCatalogue, load, parse
from packing.generate import mixed_catalogue
from packing.model.demand import build_demand
from packing.model.dominance import undominated
from packing.model.profiles import resolve_profiles
from packing.model.resources import PackingOptions, node_shapes, nodes_price
from packing.solve import solver
from tests.plan_checks import ROOT

MODELS = 400  # past the integer master's size, so the rounding alone decides the solver's plan
TIME_LIMIT = 6.0  # short enough that the generation is cut off after its checkpoints


def test_the_solver_keeps_the_cheapest_rounding_and_never_a_dearer_one(monkeypatch):
    models = parse(ModelCatalogue, mixed_catalogue(MODELS, seed=3, traffic="zipf"), "models.yaml").models
    profiles, _ = resolve_profiles(models)
    opts = PackingOptions(time_limit_s=TIME_LIMIT)
    dem = build_demand(models, profiles, node_shapes(load(InstanceCatalogue, ROOT / "config" / "instances.yaml"), opts), opts)
    keep = undominated(dem, dem.shapes)
    dem = dem.on_shapes(keep)
    shapes = dem.shapes

    placed = []
    real = solver.place_rounding

    def recording(*args, **kwargs):
        r = real(*args, **kwargs)
        placed.append(r.placed.price)
        return r

    monkeypatch.setattr(solver, "ROUNDING_CHECKPOINTS", (0.25, 0.5))
    monkeypatch.setattr(solver, "place_rounding", recording)
    start = time.perf_counter()
    solved = solver.solve(dem, shapes, opts, start + TIME_LIMIT, lambda _msg: None)
    assert time.perf_counter() - start <= TIME_LIMIT + 1.0
    assert len(placed) >= 2, "no checkpoint rounding ran: the property below would hold trivially"
    end_rounding = placed[-1]  # the rounding after the generation is placed last
    cost = nodes_price(solved.nodes, shapes)
    assert cost <= end_rounding + 1e-9
    assert cost == pytest.approx(min(placed))
