"""The configuration master is written once (packing/solve/master.py): column generation's HiGHS
LP and the integer master's PuLP model come from the same rows and columns, so relaxed to an LP
the PuLP model must have the same rows, coefficients and optimum as the HiGHS one."""
from __future__ import annotations

import time
from collections import defaultdict

import numpy as np
import pulp
import pytest

from contracts import InstanceCatalogue, ModelCatalogue, load, parse
from packing.generate import mixed_catalogue
from packing.model.classes import build_classes
from packing.model.demand import build_demand
from packing.model.dominance import undominated
from packing.model.profiles import resolve_profiles
from packing.model.resources import PackingOptions, node_shapes
from packing.solve.columngen import ColumnGeneration
from packing.solve.knapsack import quiet_banner
from packing.solve.master import BIG_POD_SPLITS, fewest_nodes, master_problem
from packing.solve.solver import CLASS_RESOLUTION, LOAD_RESOLUTION
from tests.plan_checks import ROOT


@pytest.fixture(scope="module")
def generated():
    """Column generation over 200 mixed models (some hot, several processors), stopped early:
    a master with a few hundred columns of every kind."""
    quiet_banner()
    models = parse(ModelCatalogue, mixed_catalogue(200, seed=5, traffic="zipf"), "models.yaml").models
    profiles, _ = resolve_profiles(models)
    opts = PackingOptions()
    dem = build_demand(models, profiles, node_shapes(load(InstanceCatalogue, ROOT / "config" / "instances.yaml"), opts), opts)
    dem = dem.on_shapes(undominated(dem, dem.shapes))
    cls = build_classes(dem, opts.max_utilization, CLASS_RESOLUTION, LOAD_RESOLUTION)
    cg = ColumnGeneration(cls, dem.shapes, opts.min_replicas)
    cg.run(time.perf_counter() + 1.5)
    cg.hot_columns()
    return cg


def highs_rows(cg: ColumnGeneration):
    """The HiGHS master's rows over its pattern columns: {row: {pattern: coefficient}}, and each row's bounds."""
    lp = cg.master.h.getLp()
    a = lp.a_matrix_
    out = defaultdict(dict)
    first = cg.master.first_pattern
    for col in range(first, lp.num_col_):
        for k in range(a.start_[col], a.start_[col + 1]):
            out[a.index_[k]][col - first] = a.value_[k]
    return out, list(zip(lp.row_lower_, lp.row_upper_, strict=True))


def test_the_integer_master_has_the_lps_rows(generated):
    cg = generated
    assert len(cg.patterns) > 100
    assert any(p.host_per_pod > cg.shapes[p.shape].host_alloc_mib / BIG_POD_SPLITS[-1] for p in cg.patterns), \
        "no big pods among the columns: the big-pod rows would go unchecked"
    rows, bounds = highs_rows(cg)
    prob, servers, _ = master_problem(cg.patterns, cg.demand, cg.shapes)
    index = {v.name: j for j, v in servers.items()}
    names = cg.master.rows
    checked = 0
    for r, per_pattern in rows.items():
        con = prob.constraints[names.name(r)]
        mine = {index[v.name]: a for v, a in con.items() if v.name in index}
        assert mine == pytest.approx(per_pattern), names.name(r)
        lower, upper = bounds[r]
        assert (con.sense == pulp.LpConstraintGE) == (lower > -np.inf)
        assert -con.constant == pytest.approx(lower if lower > -np.inf else upper)
        checked += 1
    assert checked == len(prob.constraints) - sum(1 for i in range(len(cg.demand)) if not any(
        i == c for p in cg.patterns for c, _ in p.counts)), "rows in one view only"


def test_relaxed_the_integer_master_is_the_lp(generated):
    cg = generated
    value = cg.read_lp()
    prob, _, _ = master_problem(cg.patterns, cg.demand, cg.shapes, kind=pulp.LpContinuous)
    prob.solve(pulp.HiGHS(msg=False, threads=1))
    assert prob.status == pulp.LpStatusOptimal
    # The HiGHS master also has artificial columns; once real columns cover every class, the LP drops them.
    assert pulp.value(prob.objective) == pytest.approx(value, rel=1e-6)


def test_fewest_nodes_meet_every_node_row(generated):
    cg = generated
    rng = np.random.default_rng(3)
    servers = {int(j): int(rng.integers(1, 4)) for j in rng.choice(len(cg.patterns), 40, replace=False)}
    need = fewest_nodes(cg.patterns, servers, cg.shapes)
    prob, x, n = master_problem(cg.patterns, cg.demand, cg.shapes)
    for j, v in x.items():
        v.setInitialValue(servers.get(j, 0))
    for t, v in n.items():
        v.setInitialValue(need[t])
    node_rows = [c for name, c in prob.constraints.items() if not name.startswith("place_class_")]
    assert all(c.value() <= 1e-6 for c in node_rows)
    for t, k in need.items():  # and one node fewer of any used shape breaks a row
        if k:
            n[t].setInitialValue(k - 1)
            assert any(c.value() > 1e-6 for c in node_rows), t
            n[t].setInitialValue(k)
