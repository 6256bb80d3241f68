"""Several roundings of one LP (packing/solve/solver.py, ROUNDING_VARIANTS): the solver rounds again
while its time allows and keeps the rounding whose plan, once part-filled servers are emptied,
costs least, so the extra roundings can never leave it dearer than the first."""
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

MODELS = 400  # past the integer master's size, so the roundings alone decide the solver's plan
TIME_LIMIT = 8.0  # room for more than one rounding


def test_the_solver_keeps_the_cheapest_rounding_once_emptied(monkeypatch):
    models = parse(ModelCatalogue, mixed_catalogue(MODELS, seed=3, traffic="zipf"), "models.yaml").models
    profiles, _ = resolve_profiles(models)
    opts = PackingOptions(time_limit_s=TIME_LIMIT)
    dem = build_demand(models, profiles, node_shapes(load(InstanceCatalogue, ROOT / "config" / "instances.yaml"), opts), opts)
    dem = dem.on_shapes(undominated(dem, dem.shapes))

    scores, prices = [], []
    real_score = solver.emptied_price

    def scoring(placed, *args):
        scores.append(real_score(placed, *args))
        prices.append(placed.price)
        return scores[-1]

    monkeypatch.setattr(solver, "emptied_price", scoring)
    start = time.perf_counter()
    solved = solver.solve(dem, dem.shapes, opts, start + TIME_LIMIT, lambda _msg: None)
    assert time.perf_counter() - start <= TIME_LIMIT + 1.0
    assert len(scores) >= 2, "one rounding only: the property below would hold trivially"
    assert all(s <= p + 1e-9 for s, p in zip(scores, prices, strict=True))  # emptying never costs more
    best = min(range(len(scores)), key=lambda k: (scores[k], k))
    assert nodes_price(solved.nodes, dem.shapes) == pytest.approx(prices[best])
    assert scores[best] <= scores[0] + 1e-9
