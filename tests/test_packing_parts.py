"""The solver's parts on their own: the pricing knapsack against brute force, dominance against the
brute-force optimum, and the time budget's arithmetic.

The knapsack's brute force lists every count vector of a small instance; the packing brute force is
tests/bruteforce.py. Neither shares code with what it checks.
"""
from __future__ import annotations

import itertools
import math
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from contracts import InstanceCatalogue, ModelCatalogue, parse
from packing import budget as shares
from packing.budget import TimeBudget, rounding_window
from packing.model.demand import UnplaceableModels, build_demand
from packing.model.dominance import undominated
from packing.model.profiles import resolve_profiles
from packing.model.resources import PackingOptions, node_shapes
from packing.solve.knapsack import Knapsack, dp_bounded_knapsack, quiet_banner
from tests.bruteforce import optimum
from tests.tiny_cases import inf1_type, inline, tiny_cases

# -- the pricing knapsack ------------------------------------------------------------------------

FEASIBLE_TOL = 1e-6  # HiGHS's primal feasibility tolerance is 1e-7 absolute; caps here are >= 1
MIP_GAP = 1e-3  # what packing/solve/knapsack.py's docstring states for `solve`
SIZES = (1, 3, 5, 7)
CASES_PER_SIZE = 12


def random_knapsack(rng: np.random.Generator, n: int, host_binds: bool = True):
    """Three resources that each bind on some instances: memory 100, load 1, host 400 (or none)."""
    w = rng.uniform(5, 60, n)
    lo = rng.uniform(0.02, 0.7, n)
    g = rng.uniform(5, 250, n)
    ub = rng.integers(1, 4, n).astype(float)
    values = rng.uniform(-0.2, 1.0, n)  # some items worth nothing: they must never be taken
    caps = (100.0, 1.0, 400.0 if host_binds else math.inf)
    return w, lo, g, ub, values, caps


def every_count(ub: np.ndarray) -> np.ndarray:
    """All integer vectors 0 <= a <= ub, one per row."""
    return np.array(list(itertools.product(*[range(int(b) + 1) for b in ub])), dtype=float).reshape(-1, len(ub))


def brute_knapsack(w, lo, g, ub, values, caps) -> float:
    a = every_count(ub)
    ok = (a @ w <= caps[0]) & (a @ lo <= caps[1]) & (a @ g <= caps[2])
    return float(np.max(a[ok] @ values))


def feasible(counts: np.ndarray, w, lo, g, ub, caps) -> bool:
    c = np.asarray(counts, float)
    return bool((c >= 0).all() and (c <= ub).all() and np.allclose(c, np.rint(c))
                and all(float(c @ x) <= cap * (1 + FEASIBLE_TOL) for x, cap in zip((w, lo, g), caps, strict=True)))


@pytest.fixture(scope="module", autouse=True)
def _silent_highs():
    quiet_banner()


@pytest.mark.parametrize("n", SIZES)
def test_every_knapsack_answer_is_feasible_and_the_bound_holds(n):
    """greedy, lp_round and solve give feasible packings no better than the optimum; solve is within
    its stated 0.1%; upper_bound is never below the optimum nor above the one-row LP relaxation."""
    for seed in range(CASES_PER_SIZE):
        for host_binds in (True, False):
            rng = np.random.default_rng(1000 * n + seed)
            w, lo, g, ub, values, caps = random_knapsack(rng, n, host_binds)
            best = brute_knapsack(w, lo, g, ub, values, caps)
            knap = Knapsack(w, lo, g, ub, caps)
            where = f"n={n} seed={seed} host cap {caps[2]}: optimum {best}"
            for name, (value, counts) in (("greedy", knap.greedy(values)), ("lp_round", knap.lp_round(values)),
                                          ("solve", knap.solve(values))):
                assert feasible(counts, w, lo, g, ub, caps), f"{name} {counts.tolist()} breaks a cap ({where})"
                assert value == pytest.approx(float(counts @ values), abs=1e-9), f"{name}: value and counts disagree"
                assert value <= best + 1e-9, f"{name} claims {value}, above the optimum ({where})"
                assert not (counts[values <= 0] > 0).any(), f"{name} took an item worth nothing ({where})"
            value, _ = knap.solve(values)
            assert value >= best * (1 - MIP_GAP) - 1e-9, f"solve {value} misses its stated gap ({where})"
            bound = knap.upper_bound(values)
            assert bound >= best - 1e-9, f"upper_bound {bound} below the optimum ({where})"
            assert bound <= fractional_memory_knapsack(w, ub, values, caps[0]) + 1e-6, where


def fractional_memory_knapsack(w, ub, values, cap) -> float:
    """The LP relaxation over the memory row alone: an upper bound on the three-row LP."""
    total, left = 0.0, cap
    for k in np.argsort(-values / w, kind="stable"):
        if values[k] <= 0 or left <= 0:
            break
        take = min(ub[k], left / w[k])
        total += take * values[k]
        left -= take * w[k]
    return total


def test_the_knapsack_mip_past_its_time_limit_still_returns_a_packing():
    """The stated limit: stopped before it proves anything, `solve` returns its best packing so far (here
    maybe none), feasible and no better than the optimum; the bound does not depend on the limit."""
    rng = np.random.default_rng(7)
    w, lo, g, ub, values, caps = random_knapsack(rng, 7)
    best = brute_knapsack(w, lo, g, ub, values, caps)
    knap = Knapsack(w, lo, g, ub, caps, time_limit=1e-6)
    value, counts = knap.solve(values)
    assert feasible(counts, w, lo, g, ub, caps)
    assert value <= best + 1e-9
    assert knap.upper_bound(values) >= best - 1e-9


@pytest.mark.parametrize("seed", range(6))
def test_the_bounding_dp_is_exact_on_integer_weights(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 7))
    weights = rng.integers(0, 12, n).astype(float)  # weight 0: taken whatever the capacity
    counts = rng.integers(0, 6, n).astype(float)  # up to 5: binary splitting into 1 + 2 + 2
    values = rng.uniform(-1, 3, n)
    capacity = int(rng.integers(0, 40))
    a = every_count(counts)
    best = float(np.max(a[a @ weights <= capacity] @ values))
    assert dp_bounded_knapsack(values, weights, counts, capacity) == pytest.approx(best, abs=1e-9)


def test_the_bounding_dp_takes_each_copy_once():
    """One item of weight 3, at most 2 copies, capacity 9: 2 copies, not 3 (a 0-1 update run in the
    wrong order would reuse a copy)."""
    assert dp_bounded_knapsack(np.array([1.0]), np.array([3.0]), np.array([2.0]), 9) == pytest.approx(2.0)
    assert dp_bounded_knapsack(np.array([1.0]), np.array([3.0]), np.array([7.0]), 9) == pytest.approx(3.0)


# -- dominance -------------------------------------------------------------------------------------

def shapes_and_demand(case: dict):
    opts = PackingOptions(max_utilization=case["max_util"], max_device_memory_gib=case["max_dev_gib"])
    catalogue = parse(InstanceCatalogue, case["catalogue"], "instances.yaml")
    models = parse(ModelCatalogue, {"models": case["models"]}, "models.yaml").models
    shapes = node_shapes(catalogue, opts)
    profiles, _ = resolve_profiles(models)
    return models, opts, build_demand(models, profiles, shapes, opts)


def dearer_copy(t: dict, rise: float, fewer_devices: int) -> dict:
    """The same instance type at a higher price and, for inf1, with fewer devices (so fewer slots).
    Fewer pods on an accelerator node leave it a MiB more host memory each (packing/model/resources.py),
    so a copy with fewer devices also gets half a GiB less memory: without that it is not dominated."""
    out = {**t, "name": t["name"] + "-dear", "price_per_hour": round(t["price_per_hour"] * (1 + rise), 6)}
    if t["processor"] == "inf1" and fewer_devices and t["devices"] > 1:
        out["devices"] = max(1, t["devices"] - fewer_devices)
        out["memory_gib"] = t["memory_gib"] - 0.5
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow])
@given(case=tiny_cases(), pick=st.integers(0, 1), rise=st.sampled_from([0.01, 0.2, 1.0]), fewer=st.integers(0, 2))
def test_a_dominated_instance_type_is_dropped_and_never_needed(case, pick, rise, fewer):
    """A dearer copy of an instance type (no more slots) is dropped, and the brute-force optimum over
    the types kept equals the optimum over all of them."""
    instances = case["catalogue"]["instances"][:2]
    original = instances[pick % len(instances)]
    case = {**case, "catalogue": {**case["catalogue"], "instances": instances + [dearer_copy(original, rise, fewer)]}}
    try:
        models, opts, dem = shapes_and_demand(case)
    except (ValueError, UnplaceableModels):
        assume(False)  # no usable type, or a model that fits nowhere: not what this test is about
    shapes = dem.shapes
    keep = undominated(dem, shapes)
    names = [s.name for s in shapes]
    assume(original["name"] in names and original["name"] + "-dear" in names)  # a type no pod fits is left out
    copy = names.index(original["name"] + "-dear")
    assert copy not in keep, f"{names[copy]} is dominated by {original['name']} but kept"
    every = optimum(models, shapes, opts.max_utilization)
    assume(math.isfinite(every))
    kept = optimum(models, [shapes[t] for t in keep], opts.max_utilization)
    assert kept == pytest.approx(every, abs=1e-9), (names, keep)


def test_a_dearer_type_with_the_host_memory_the_pods_need_is_kept():
    """Two models of 900 MiB host memory each: a 2 GiB node holds one pod of them, an 8 GiB node both.
    The 8 GiB type costs more per node but is the optimum (0.6 against 2 x 0.5), so it must stay."""
    case = {"models": [{"id": f"m{i}", "rps": 1.0, "profiles": {"inf1": inline(100, 900, 10)}} for i in range(2)],
            "catalogue": {"instances": [inf1_type("inf1.small", 0.5, 4, 2, 2, 1, 4, 10),
                                        inf1_type("inf1.roomy", 0.6, 4, 8, 2, 1, 4, 10)]},
            "max_util": 0.83, "max_dev_gib": None}
    models, opts, dem = shapes_and_demand(case)
    keep = undominated(dem, dem.shapes)
    assert [dem.shapes[t].name for t in keep] == ["inf1.small", "inf1.roomy"]
    assert optimum(models, dem.shapes, opts.max_utilization) == pytest.approx(0.6)
    assert optimum(models, [dem.shapes[1]], opts.max_utilization) == pytest.approx(0.6)


def test_of_two_identical_types_exactly_one_is_kept():
    """Same slots, memory and price: either may go, never both (nor neither)."""
    case = {"models": [{"id": "m0", "rps": 1.0, "profiles": {"inf1": inline(100, 100, 10)}}],
            "catalogue": {"instances": [inf1_type("inf1.b", 0.5, 4, 8, 2, 1, 4, 10),
                                        inf1_type("inf1.a", 0.5, 4, 8, 2, 1, 4, 10)]},
            "max_util": 0.83, "max_dev_gib": None}
    _, _, dem = shapes_and_demand(case)
    assert [dem.shapes[t].name for t in undominated(dem, dem.shapes)] == ["inf1.a"]


# -- the time budget ---------------------------------------------------------------------------------

def test_the_shares_end_the_stages_in_order():
    assert 0 < shares.COLUMN_GENERATION < shares.COLUMN_GENERATION + shares.ROUNDING_EACH + shares.PLACING_EACH <= 1
    assert shares.PART_NODES > 0 and shares.ROUNDING_EACH > 0 and shares.PLACING_EACH > 0
    # Closing part-used shapes and two roundings fit after column generation when it ends on time.
    assert shares.COLUMN_GENERATION + shares.PART_NODES + 2 * (shares.ROUNDING_EACH + shares.PLACING_EACH) <= 1
    assert 0 < shares.SOLVE < shares.IMPROVE < 1  # emptying part-filled servers has the rest
    assert 0 < shares.REPLAN_PACK_THEN_CONSOLIDATE < shares.REPLAN_PACK <= 1


@pytest.mark.parametrize("limit", [0.5, 10.0, 300.0])
def test_every_stage_ends_inside_the_limit_as_the_planner_nests_them(limit):
    """The planner's whole budget, and the solver's own one from the same start (packing/planner.py, packing/solve/solver.py):
    column generation, closing part-used shapes and the first rounding, with its instance sizes, end before the solver, which ends
    before the re-plan of part-empty nodes, which ends before the limit."""
    start = 1000.0
    whole = TimeBudget(start, limit)
    solver = TimeBudget(start, whole.at(shares.SOLVE) - start)
    rounded = solver.at(shares.COLUMN_GENERATION) + (shares.PART_NODES + shares.ROUNDING_EACH) * solver.seconds
    ends = [solver.at(shares.COLUMN_GENERATION), rounded, rounded + shares.PLACING_EACH * solver.seconds,
            solver.deadline, whole.at(shares.IMPROVE), whole.deadline]
    assert all(a < b for a, b in zip(ends, ends[1:])), ends
    assert solver.deadline == pytest.approx(whole.at(shares.SOLVE))
    assert whole.deadline == pytest.approx(start + limit)


def test_the_first_rounding_always_gets_its_full_shares():
    solver = TimeBudget(0.0, 100.0)
    for now in (50.0, 99.0, 150.0):  # column generation ended on time, late, or past the solver's end
        assert rounding_window(solver, 0, now) == pytest.approx(
            (now + shares.ROUNDING_EACH * 100.0, now + (shares.ROUNDING_EACH + shares.PLACING_EACH) * 100.0))


def test_a_later_rounding_gets_its_shares_or_what_is_left_while_enough_is():
    solver = TimeBudget(0.0, 100.0)
    full = (shares.ROUNDING_EACH + shares.PLACING_EACH) * 100.0
    early = 10.0
    assert rounding_window(solver, 1, early) == pytest.approx(rounding_window(solver, 0, early))
    # Less than its shares left: both ends scaled down, the placing one on the solver's end.
    now = 100.0 - 0.75 * full
    round_until, place_until = rounding_window(solver, 2, now)
    assert place_until == pytest.approx(100.0)
    assert round_until - now == pytest.approx(0.75 * shares.ROUNDING_EACH * 100.0)
    # Under ROUNDING_AT_LEAST of its shares left (or none): no more roundings.
    assert rounding_window(solver, 1, 100.0 - 0.99 * shares.ROUNDING_AT_LEAST * full) is None
    assert rounding_window(solver, 1, 120.0) is None
    assert rounding_window(solver, 1, 100.0 - 1.01 * shares.ROUNDING_AT_LEAST * full) is not None


def test_at_is_linear_in_the_share():
    b = TimeBudget(50.0, 8.0)
    assert b.at(0.0) == 50.0
    assert b.at(0.25) == pytest.approx(52.0)
    assert b.at(1.0) == b.deadline == pytest.approx(58.0)


def test_left_counts_down_and_keeps_its_floor():
    now = time.perf_counter()
    running = TimeBudget(now, 30.0)
    assert 29.0 < running.left() <= 30.0
    over = TimeBudget(now - 20.0, 10.0)
    assert over.left() == 0.0
    assert over.left(floor_s=2.5) == 2.5


def test_a_deadline_in_the_past_gives_the_floor():
    before = time.perf_counter()
    past = TimeBudget.until(before - 5.0)
    assert past.seconds == 1.0
    assert before <= past.start <= time.perf_counter()
    assert TimeBudget.until(before - 5.0, floor_s=0.25).seconds == 0.25
    ahead = TimeBudget.until(before + 30.0)
    assert 29.0 < ahead.seconds <= 30.0
    assert ahead.deadline == pytest.approx(before + 30.0, abs=1e-6)


def test_a_knapsack_mip_stops_at_its_time_limit_every_time():
    """The MIP's limit is each run's own: a hard knapsack stops near it every time, not after a
    limit summed with the time of the runs before."""
    rng = np.random.default_rng(0)
    n = 400
    w = rng.uniform(50, 60, (3, n))
    knap = Knapsack(w[0], w[1] / 1000, w[2], np.full(n, 3.0), (5000.5, 5.0005, 5000.5), time_limit=0.2)
    for _ in range(4):
        start = time.perf_counter()
        knap.solve(rng.uniform(50, 60, n))
        assert time.perf_counter() - start < 0.5


def test_a_knapsack_solved_past_its_time_limit_in_all_still_solves_each_time():
    """HiGHS holds `time_limit` to a model's run time summed over its runs: a knapsack re-solved
    every round must give each solve its own limit, or after the first few thousand rounds every
    answer is a time-limited one (and the bound its trivial value)."""
    rng = np.random.default_rng(4)
    n = 300
    knap = Knapsack(rng.uniform(5, 60, n), rng.uniform(0.02, 0.3, n), rng.uniform(5, 50, n), np.full(n, 5.0),
                    (1000.0, 3.0, 4000.0), time_limit=0.02)
    trivial = []
    for _ in range(1500):
        values = rng.uniform(0, 1, n)
        trivial.append(knap.upper_bound(values) >= float(np.dot(values, knap.ub)) - 1e-9)
    assert knap._lp.getRunTime() > 5 * knap.time_limit  # the solves' time in all is well past one limit
    assert not any(trivial)
