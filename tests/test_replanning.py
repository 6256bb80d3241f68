"""Re-planning with --previous (packing/replanner.py) and `packing diff` (packing/report/diff.py).

A mixed catalogue (several model shapes, cpu and inf1 profiles) is planned once from scratch;
each scenario then changes the inputs a little and re-plans from that plan. Stated bounds:
identity on unchanged inputs; adding or retiring models and shifting traffic move no model that
was already placed (without consolidation); consolidation moves at most --max-moves; a re-plan
costs at most COST_FACTOR x a fresh plan of the same inputs. Every plan passes the independent
checker (../shared/tools/check_plan.py).
"""
from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path
from typing import Dict, List

import pytest

from contracts import InstanceCatalogue, ModelCatalogue, Plan, load, parse
from packing.generate import mixed_catalogue
from packing.model.profiles import resolve_profiles
from packing.model.resources import PackingOptions
from packing.planner import plan_servers
from packing.replanner import NO_CONSOLIDATION, MoveBudget, fit_server, fresh_ids, replan
from packing.report.diff import plan_diff
from tests.plan_checks import PYTHON, ROOT, check_plan, write_yaml

INSTANCES_YAML = ROOT / "config" / "instances.yaml"

BASE_MODELS = 300
EXTRA_MODELS = 6  # 2% more
TIME_LIMIT = 4.0
# A re-plan after one small change costs at most this much more than a fresh plan. Both stop at a
# 4 s limit on a shared machine, where a fresh plan's own quality varies by several percent.
COST_FACTOR = 1.25
DIGEST = "0" * 64
OPTS = PackingOptions(time_limit_s=TIME_LIMIT)


def plan_of(model_dicts: List[dict], previous: Plan | None = None, budget: MoveBudget = NO_CONSOLIDATION) -> Plan:
    models = parse(ModelCatalogue, {"models": model_dicts}, "models.yaml").models
    profiles, sources = resolve_profiles(models)
    catalogue = load(InstanceCatalogue, INSTANCES_YAML)
    if previous is None:
        return plan_servers(models, profiles, sources, catalogue, OPTS).plan
    return replan(previous, DIGEST, models, profiles, sources, catalogue, OPTS, budget).plan


def checked(tmp_path: Path, model_dicts: List[dict], plan: Plan) -> Plan:
    check_plan(tmp_path, model_dicts, None, plan.to_json_dict(), OPTS.max_utilization, 0, instances_path=INSTANCES_YAML)
    return plan


def servers_of(plan: Plan) -> Dict[str, str]:
    return {m: s.id for s in plan.servers for m in s.models}


@pytest.fixture(scope="module")
def catalogue() -> List[dict]:
    # Two processor families and every reference shape; the last EXTRA_MODELS are "new" models.
    return mixed_catalogue(BASE_MODELS + EXTRA_MODELS, seed=5, processors=["cpu", "inf1"])["models"]


@pytest.fixture(scope="module")
def base(catalogue) -> Plan:
    return plan_of(catalogue[:BASE_MODELS])


def test_unchanged_inputs_give_the_same_plan(catalogue, base, tmp_path):
    again = checked(tmp_path, catalogue[:BASE_MODELS], plan_of(catalogue[:BASE_MODELS], base))
    assert [s.model_dump() for s in again.servers] == [s.model_dump() for s in base.servers]
    assert again.instances == base.instances and again.cost_per_hour == base.cost_per_hour
    assert (again.previous.models_moved, again.previous.servers_restarted) == (0, 0)
    assert again.lower_bound_per_hour <= again.cost_per_hour


def test_new_models_move_nothing_else_and_cost_stays_near_fresh(catalogue, base, tmp_path):
    models = catalogue
    plan = checked(tmp_path, models, plan_of(models, base))
    before, after = servers_of(base), servers_of(plan)
    assert all(after[m] == before[m] for m in before), "a model that was placed moved"
    assert plan.previous.models_moved == 0 and plan.previous.models_added == EXTRA_MODELS
    # New models land in free room (restarting those servers) or on new servers: a few either way.
    assert plan.previous.servers_restarted <= EXTRA_MODELS
    assert not {s.id for s in plan.servers if s.id not in {t.id for t in base.servers}} & {s.id for s in base.servers}
    fresh = plan_of(models)
    assert plan.cost_per_hour <= COST_FACTOR * fresh.cost_per_hour, (plan.cost_per_hour, fresh.cost_per_hour)
    assert plan.lower_bound_per_hour <= min(plan.cost_per_hour, fresh.cost_per_hour) + 1e-6


def test_retired_models_never_move_the_rest(catalogue, base, tmp_path):
    retired = set(m["id"] for m in catalogue[:BASE_MODELS:10])  # 10% retired
    models = [m for m in catalogue[:BASE_MODELS] if m["id"] not in retired]
    plan = checked(tmp_path, models, plan_of(models, base))
    before, after = servers_of(base), servers_of(plan)
    assert set(after) == set(before) - retired
    assert all(after[m] == before[m] for m in after)
    assert plan.previous.models_moved == 0 and plan.previous.models_removed == len(retired)
    assert plan.cost_per_hour <= base.cost_per_hour + 1e-9
    # Only servers that lost models restart; emptied ones are gone.
    lost = {before[m] for m in retired}
    assert plan.previous.servers_restarted <= len(lost)


def test_traffic_shifts_change_replicas_not_assignments(catalogue, base, tmp_path):
    models = copy.deepcopy(catalogue[:BASE_MODELS])
    for i, m in enumerate(models[::15]):
        m["rps"] = round(m["rps"] * (0.5 if i % 2 else 1.8), 4)
    hot = models[7]
    hot["rps"] = round(hot["rps"] * 40 + 200, 4)  # far beyond one device's worth
    plan = checked(tmp_path, models, plan_of(models, base))
    assert servers_of(plan) == servers_of(base), "traffic moved models"
    assert plan.previous.models_moved == 0 and plan.previous.servers_restarted == 0
    old = next(s for s in base.servers if hot["id"] in s.models)
    new = next(s for s in plan.servers if hot["id"] in s.models)
    assert new.id == old.id and new.replicas > old.replicas
    fresh = plan_of(models)
    assert plan.cost_per_hour <= COST_FACTOR * fresh.cost_per_hour, (plan.cost_per_hour, fresh.cost_per_hour)


def test_a_profile_that_outgrows_its_server_moves_only_its_own_models(catalogue, base, tmp_path):
    models = copy.deepcopy(catalogue[:BASE_MODELS])
    full = max(base.servers, key=lambda s: len(s.models))
    grown = next(m for m in models if m["id"] == full.models[0])
    for p in grown["profiles"].values():  # now needs most of a device or slice
        p["device_memory_mib"] = p["device_memory_mib"] * 3 + 3000
        p["host_memory_mib"] = p["host_memory_mib"] * 3 + 3000
    plan = checked(tmp_path, models, plan_of(models, base))
    before, after = servers_of(base), servers_of(plan)
    moved = {m for m in before if after[m] != before[m]}
    assert plan.previous.models_moved == len(moved) <= 3
    assert all(before[m] == full.id for m in moved)


def test_consolidation_respects_max_moves_and_never_costs_more(catalogue, base, tmp_path):
    retired = set(m["id"] for m in catalogue[:BASE_MODELS:4])  # 25% gone: servers left half-empty
    models = [m for m in catalogue[:BASE_MODELS] if m["id"] not in retired]
    plain = plan_of(models, base)
    tight = checked(tmp_path, models, plan_of(models, base, MoveBudget(max_moves=20)))
    assert tight.previous.models_moved <= 20
    assert tight.cost_per_hour <= plain.cost_per_hour + 1e-9
    free = plan_of(models, base, MoveBudget(move_cost=0.0001))
    assert free.cost_per_hour <= tight.cost_per_hour + 1e-9 or free.previous.models_moved <= tight.previous.models_moved


def test_new_servers_never_reuse_a_retired_id(catalogue, base):
    # Retire every model of the highest-numbered cpu server, then add new models: their ids are fresh.
    cpu = max((s for s in base.servers if s.processor == "cpu"), key=lambda s: s.id)
    models = [m for m in catalogue[:BASE_MODELS] if m["id"] not in set(cpu.models)]
    first = plan_of(models, base)
    assert cpu.id not in {s.id for s in first.servers}
    second = plan_of(models + catalogue[BASE_MODELS:], first)
    added = {s.id for s in second.servers} - {s.id for s in first.servers}
    assert cpu.id not in added


def test_fit_server_and_fresh_ids_are_pure_and_simple(catalogue):
    assert fresh_ids({"cpu": 2, "inf1": 1}, {"cpu": 41}) == {"cpu": ["cpu-0042", "cpu-0043"], "inf1": ["inf1-0000"]}
    from packing.model.demand import build_demand
    from packing.model.resources import node_shapes

    models = parse(ModelCatalogue, {"models": catalogue[:20]}, "m").models
    profiles, _ = resolve_profiles(models)
    shapes = node_shapes(load(InstanceCatalogue, INSTANCES_YAML), OPTS)
    dem = build_demand(models, profiles, shapes, OPTS)
    t = next(j for j, s in enumerate(shapes) if s.name == "inf1.xlarge")
    stay, out = fit_server(list(range(20)), t, dem)
    assert sorted(stay + out) == list(range(20))
    assert dem.d[stay, t].sum() <= shapes[t].device_memory_cap_mib * (1 + 1e-9)


def test_diff_counts_moves_restarts_and_instances(base):
    new = base.model_copy(deep=True)
    a, b = new.servers[0], new.servers[1]
    moved = a.models.pop()
    b.models.append(moved)
    gone = new.servers.pop()
    new.instances = {**new.instances, "extra.type": 1}
    diff = plan_diff(base, new)
    assert diff["models_moved"] == {moved: [a.id, b.id]}
    assert diff["servers_removed"] == [gone.id] and diff["servers_restarted"] == 2
    assert set(diff["models_removed"]) == set(gone.models)
    assert diff["instances"]["extra.type"] == {"before": 0, "after": 1}
    assert plan_diff(base, base)["servers_changed"] == [] and plan_diff(base, base)["models_moved"] == {}


def test_cli_replans_with_previous_and_diffs(catalogue, base, tmp_path):
    models_path = write_yaml(tmp_path / "models.yaml", {"models": catalogue})
    old = tmp_path / "old.json"
    old.write_text(json.dumps(base.to_json_dict()))
    new = tmp_path / "new.json"
    run = subprocess.run([PYTHON, "-m", "packing", "plan", "--models", str(models_path), "--previous", str(old),
                          "--max-moves", "5", "--out", str(new), "--time-limit", "4", "--quiet"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "models moved" in run.stdout
    plan = load(Plan, new)
    assert plan.previous is not None and len(plan.previous.digest) == 64
    diff = subprocess.run([PYTHON, "-m", "packing", "diff", str(old), str(new), "--json"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert diff.returncode == 0, diff.stderr
    data = json.loads(diff.stdout)
    assert len(data["models_added"]) == EXTRA_MODELS and len(data["models_moved"]) == plan.previous.models_moved
    text = subprocess.run([PYTHON, "-m", "packing", "diff", str(old), str(new)], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert text.returncode == 0 and "/h →" in text.stdout and "moved" in text.stdout
    bad = subprocess.run([PYTHON, "-m", "packing", "plan", "--models", str(models_path), "--max-moves", "3",
                          "--out", str(tmp_path / "x.json")], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--previous" in bad.stderr
