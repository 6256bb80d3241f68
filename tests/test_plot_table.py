"""The plan's picture and summary tables, on small hand-made plans and a large synthetic one."""
from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from matplotlib.collections import PathCollection
from matplotlib.figure import Figure
from PIL import Image
from rich.console import Console

import contracts
from packing.report.loads import ModelLoad, PodLoad
from packing.report.plot import DETAIL_MAX_SERVERS, plan_figure, plot_plan
from packing.report.table import plan_table, print_plan_summary, servers_table

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PRICES = {"inf1.xlarge": 0.228, "g5.xlarge": 1.006, "c5.xlarge": 0.17}
PROCESSOR = {"inf1.xlarge": "inf1", "g5.xlarge": "gpu", "c5.xlarge": "cpu"}
ACCELERATOR = {"inf1": "aws.amazon.com/neuron", "gpu": "nvidia.com/gpu"}
MEMORY_CAP_MIB = {"inf1": 7536.0, "gpu": 22000.0, "cpu": 3500.0}
PLATFORM = 0.10

# (server id, instance type, replicas, [(model id, device MiB, per-pod utilisation)])
SMALL: list[tuple[str, str, int, list[tuple[str, float, float]]]] = [
    ("inf1-0000", "inf1.xlarge", 1, [("bert-a", 1200, 0.10), ("bert-b", 1200, 0.20), ("minilm-c", 300, 0.05)]),
    ("inf1-0001", "inf1.xlarge", 2, [("bert-hot", 1400, 0.55)]),
    ("g5-0000", "g5.xlarge", 1, [("roberta-d", 2000, 0.30), ("roberta-e", 2000, 0.25)]),
    ("cpu-0000", "c5.xlarge", 1, [("minilm-f", 400, 0.40)]),
]
SMALL_INSTANCES = {"inf1.xlarge": 2, "g5.xlarge": 1, "c5.xlarge": 1}


def _server(sid: str, itype: str, replicas: int, models: Sequence[tuple[str, float, float]]) -> dict[str, Any]:
    proc = PROCESSOR[itype]
    accel = {"name": ACCELERATOR[proc], "count": 1} if proc in ACCELERATOR else None
    return {
        "id": sid,
        "instance_type": itype,
        "processor": proc,
        "replicas": replicas,
        "placements": [{"instance_index": i, "device_index": 0} for i in range(replicas)],
        "models": [m for m, _, _ in models],
        "requests": {"cpu_m": 900, "memory_mib": 3000, **({"accelerator": accel} if accel else {})},
        "memory_budget_mib": 2800,
        "predicted": {"utilisation": sum(u for _, _, u in models), "p90_ms": 12.5},
    }


def make_plan(
    spec: Sequence[tuple[str, str, int, Sequence[tuple[str, float, float]]]], instances: dict[str, int]
) -> contracts.Plan:
    cost = sum(PRICES[t] * c for t, c in instances.items()) + PLATFORM
    bound = cost * 0.95
    return contracts.Plan.model_validate({
        "schema": 1,
        "inputs": {"models.yaml": "0" * 64},
        "options": {"max_utilisation": 0.8},
        "solver": {"name": "colgen-highs"},
        "instances": instances,
        "cost_per_hour": cost,
        "platform_per_hour": PLATFORM,
        "lower_bound_per_hour": bound,
        "gap": (cost - bound) / cost,
        "solve_seconds": 1.5,
        "created_at": "2026-01-01T00:00:00Z",
        "servers": [_server(*s) for s in spec],
        "profile_sources": {m: {PROCESSOR[t]: "inline"} for _, t, _, ms in spec for m, _, _ in ms},
    })


def make_pods(spec: Sequence[tuple[str, str, int, Sequence[tuple[str, float, float]]]]) -> list[PodLoad]:
    return [
        PodLoad(
            server_id=sid, instance_type=itype, processor=PROCESSOR[itype], replicas=replicas,
            memory_cap_mib=MEMORY_CAP_MIB[PROCESSOR[itype]], utilisation_cap=0.8,
            models=tuple(ModelLoad(m, mib, u) for m, mib, u in models),
        )
        for sid, itype, replicas, models in spec
    ]


def synthetic(n_servers: int, models_per_server: int):
    """A plan over all three types, with every 50th server a hot one of two replicas."""
    types = sorted(PRICES)
    spec = []
    for i in range(n_servers):
        itype = types[i % len(types)]
        models = [(f"m-{i}-{k}", 100.0 + (i * 7 + k * 13) % 400, 0.7 / models_per_server) for k in range(models_per_server)]
        spec.append((f"s-{i:06d}", itype, 2 if i % 50 == 0 else 1, models))
    instances = {t: n_servers // len(types) // 2 + 1 for t in types}
    return make_plan(spec, instances), make_pods(spec)


def assert_png(path: Path, min_size: tuple[int, int] = (600, 400)) -> tuple[int, int]:
    assert path.read_bytes()[:8] == PNG_MAGIC
    with Image.open(path) as img:
        img.load()  # decodes the whole image: a truncated file fails here
        assert img.format == "PNG"
        w, h = img.size
    assert w >= min_size[0] and h >= min_size[1]
    assert w <= 4000 and h <= 2000  # readable on a screen, not a poster
    return w, h


def render_text(renderable: Any) -> str:
    console = Console(record=True, width=200)
    console.print(renderable)
    return console.export_text()


def test_plot_small_plan_writes_png(tmp_path: Path) -> None:
    plan, pods = make_plan(SMALL, SMALL_INSTANCES), make_pods(SMALL)
    out = plot_plan(plan, pods, tmp_path / "sub" / "plan.png", title="Small plan")
    assert out == tmp_path / "sub" / "plan.png"
    assert_png(out)
    assert [p.name for p in out.parent.iterdir()] == ["plan.png"]  # no temporary left beside it


def test_plot_accepts_pods_in_any_order(tmp_path: Path) -> None:
    plan, pods = make_plan(SMALL, SMALL_INSTANCES), make_pods(SMALL)
    assert_png(plot_plan(plan, list(reversed(pods)), tmp_path / "plan.png"))


def test_plot_rejects_pods_that_do_not_match_the_plan(tmp_path: Path) -> None:
    plan, pods = make_plan(SMALL, SMALL_INSTANCES), make_pods(SMALL)
    with pytest.raises(ValueError, match="1 servers without a pod"):
        plot_plan(plan, pods[1:], tmp_path / "plan.png")
    assert not (tmp_path / "plan.png").exists()


def test_plot_large_plan_draws_totals(tmp_path: Path) -> None:
    plan, pods = synthetic(3000, 4)
    assert len(pods) > DETAIL_MAX_SERVERS
    start = time.perf_counter()
    assert_png(plot_plan(plan, pods, tmp_path / "large.png"))
    assert time.perf_counter() - start < 30  # the brief is < 10 s; slack for loaded CI machines


def test_plot_many_models_on_few_servers_is_fast(tmp_path: Path) -> None:
    # The detailed path's worst case: as many servers as it draws in detail, 100,000 segments.
    plan, pods = synthetic(DETAIL_MAX_SERVERS, 250)
    start = time.perf_counter()
    assert_png(plot_plan(plan, pods, tmp_path / "dense.png"))
    assert time.perf_counter() - start < 30


def test_plot_failed_write_leaves_nothing(tmp_path: Path) -> None:
    plan, pods = make_plan(SMALL, SMALL_INSTANCES), make_pods(SMALL)
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where a directory should be")
    with pytest.raises(OSError):
        plot_plan(plan, pods, blocker / "plan.png")
    assert [p.name for p in tmp_path.iterdir()] == ["not-a-dir"]
    assert blocker.read_text() == "a file where a directory should be"


def test_plot_failed_rename_keeps_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plan, pods = make_plan(SMALL, SMALL_INSTANCES), make_pods(SMALL)
    out = tmp_path / "plan.png"
    out.write_bytes(b"old picture")

    def fail(*_: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        plot_plan(plan, pods, out)
    assert out.read_bytes() == b"old picture"
    assert [p.name for p in tmp_path.iterdir()] == ["plan.png"]


def test_plot_empty_plan(tmp_path: Path) -> None:
    plan = make_plan([], {})
    assert_png(plot_plan(plan, [], tmp_path / "empty.png"))


def test_plan_table_counts_and_totals() -> None:
    plan = make_plan(SMALL, SMALL_INSTANCES)
    text = render_text(plan_table(plan, PRICES))
    lines = {line.split("│")[1].strip(): line for line in text.splitlines() if line.count("│") > 2}
    cells = {k: [c.strip() for c in v.split("│")[1:-1]] for k, v in lines.items()}
    #                 type, proc, nodes, each, $/h, servers, pods, models, mean, max
    assert cells["inf1.xlarge"] == ["inf1.xlarge", "inf1", "2", "0.228", "0.456", "2", "3", "4", "48.3%", "55.0%"]
    assert cells["g5.xlarge"][2:8] == ["1", "1.006", "1.006", "1", "1", "2"]
    assert cells["c5.xlarge"][2:8] == ["1", "0.170", "0.170", "1", "1", "1"]
    assert cells["platform"][4] == "0.100"
    # 0.456 + 1.006 + 0.170 + 0.100; pods' mean util (0.35 + 2 × 0.55 + 0.55 + 0.40) / 5.
    assert cells["total"] == ["total", "", "4", "", "1.732", "4", "5", "7", "48.0%", "55.0%"]
    assert "cost $1.73/h (incl. platform $0.10/h)" in text
    assert "lower bound $1.65/h" in text
    assert "gap 5.0%" in text
    assert "solved in 1.5 s by colgen-highs" in text


def test_plan_table_without_prices_derives_only_what_the_plan_fixes() -> None:
    text = render_text(plan_table(make_plan(SMALL, SMALL_INSTANCES)))
    assert "—" in text and "0.228" not in text  # three unknown prices: none can be derived
    two_known = {t: p for t, p in PRICES.items() if t != "g5.xlarge"}
    assert "1.006" in render_text(plan_table(make_plan(SMALL, SMALL_INSTANCES), two_known))
    single = [s for s in SMALL if s[1] == "inf1.xlarge"]
    assert "0.228" in render_text(plan_table(make_plan(single, {"inf1.xlarge": 2})))


def test_servers_table_lists_fullest_servers() -> None:
    text = render_text(servers_table(make_plan(SMALL, SMALL_INSTANCES), limit=2))
    assert "Top 2 of 4 servers by model count" in text
    assert "inf1-0000" in text and "g5-0000" in text
    assert "cpu-0000" not in text and "inf1-0001" not in text
    row = next(line for line in text.splitlines() if "inf1-0000" in line)
    assert [c.strip() for c in row.split("│")[1:-1]] == ["inf1-0000", "inf1.xlarge", "1", "3", "35.0%", "12.5"]


def test_print_plan_summary_prints_both_tables() -> None:
    console = Console(record=True, width=200)
    print_plan_summary(make_plan(SMALL, SMALL_INSTANCES), console, prices=PRICES)
    text = console.export_text()
    assert "Plan by instance type" in text and "servers by model count" in text


def over_cap_marks(figure: Figure) -> list[list[tuple[int, float]]]:
    """Per panel (memory, utilisation), the (bar index, value) of each over-the-cap marker: the plot's only scatter."""
    marks = []
    for ax in figure.axes:
        points = [tuple(xy) for c in ax.collections if isinstance(c, PathCollection) for xy in c.get_offsets()]
        marks.append([(int(x), round(float(y), 3)) for x, y in points])
    return marks


def test_plot_marks_pods_over_their_caps(tmp_path: Path) -> None:
    # Caps that differ per pod take the stepped cap line; an over-full pod, and only it, takes a marker.
    spec = [*SMALL, ("inf1-0002", "inf1.xlarge", 1, [("huge", 9000, 0.95)])]
    plan = make_plan(spec, SMALL_INSTANCES)
    pods = [dataclasses.replace(p, utilisation_cap=0.6 + 0.05 * i) for i, p in enumerate(make_pods(spec))]
    # Bars by type then id: cpu-0000, g5-0000, inf1-0000, inf1-0001, inf1-0002 (index 4, over both caps).
    assert over_cap_marks(plan_figure(plan, pods)) == [[(4, round(9000 / MEMORY_CAP_MIB["inf1"], 3))], [(4, 0.95)]]
    assert_png(plot_plan(plan, pods, tmp_path / "over.png"))
    big_plan, big_pods = synthetic(DETAIL_MAX_SERVERS + 1, 2)
    big_pods[0] = dataclasses.replace(big_pods[0], utilisation_cap=0.5)
    # Totals sorted high to low within each type, ties by id: s-000000 leads the first (c5.xlarge) group.
    assert over_cap_marks(plan_figure(big_plan, big_pods)) == [[], [(0, 0.7)]]
    assert_png(plot_plan(big_plan, big_pods, tmp_path / "over-large.png"))
