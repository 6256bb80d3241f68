"""The time-quality benchmark's summary (bench/packing_curves.py): each run's gap to the best
bound splits at the best plan of any run into the plan's part and the proof's."""
from __future__ import annotations

import pytest

from bench.packing_curves import markdown, summarise


def result_of(costs, bounds, optimum=None):
    return {"key": "c", "title": "t", "models": 10, "shapes": 2, "instance_catalogue": "config/instances.yaml",
            "optimum_per_hour": optimum, "ffd": {"cost_per_hour": 40.0, "seconds": 0.1},
            "runs": [{"time_limit_s": float(limit), "seconds": limit * 0.8, "cost_per_hour": c, "lower_bound_per_hour": b,
                      "gap": (c - b) / c, "status": "ok", "check": {"status": "ok"}}
                     for limit, c, b in zip((5, 15, 60), costs, bounds, strict=True)]}


def test_the_best_bound_gap_splits_at_the_best_plan():
    r = result_of([31.0, 29.0, 30.0], [26.9, 27.3, 27.1])
    s = summarise(r)
    assert s["best_cost_per_hour"] == 29.0 and s["best_bound_per_hour"] == 27.3 and s["best_limit_s"] == 15.0
    assert s["best_plan_gap"] == pytest.approx((29.0 - 27.3) / 29.0, abs=1e-6)
    for run in r["runs"]:
        cost = run["cost_per_hour"]
        assert run["over_best_plan"] + (29.0 - 27.3) / cost == pytest.approx(run["gap_to_best_bound"], abs=2e-6)
    assert r["runs"][1]["over_best_plan"] == 0.0


def test_the_table_shows_the_split():
    r = result_of([31.0, 29.0, 30.0], [26.9, 27.3, 27.1])
    r["summary"] = summarise(r)
    report = {"machine": {"cpu_model": "cpu", "processor": "", "machine": "", "cpu_count": 2, "python": "3.11"},
              "created_at": "now", "loadavg_before": "0", "loadavg_after": "0", "wall_seconds": 60, "quick": True,
              "time_limits_s": [5, 15, 60], "scenarios": [r]}
    text = markdown(report)
    assert "best plan 29.00 $/h (the 15 s run), 5.86% above the best bound" in text
    assert "| over best plan |" in text and "| 6.45% |" in text  # (31 - 29) / 31
