"""The plan's picture: what each server's pod carries, against its caps.

Drawn after the figure in AWS's "Serve 3,000 deep learning models on Amazon EKS with AWS
Inferentia": one bar per server, grouped by instance type; the top panel is memory used as a
fraction of the pod's cap, the bottom one per-pod utilisation against the utilisation cap. Each
bar is stacked by model. Above DETAIL_MAX_SERVERS servers the segments would be narrower than a
pixel, so each instance type's servers are drawn as one area of per-server totals instead.

Uses `matplotlib.figure.Figure` directly (Agg through savefig), never pyplot: no global state, so
it is safe in threads and in tests, and never opens a window.
"""
from __future__ import annotations

import io
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.collections import PolyCollection
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

import contracts
from packing.report.loads import PodLoad

DETAIL_MAX_SERVERS = 400  # above this a server's bar is ~2 px wide: its model segments are noise
TICK_LABEL_MAX_SERVERS = 80  # server ids stay legible as tick labels up to about this many
REPLICA_NOTE_MAX_SERVERS = 120
EDGE_MIN_BAR_PX = 6.0  # white segment edges only where they leave some colour between them
DPI = 110
OVER_CAP_TOLERANCE = 1e-9

# 60 qualitative colours; thousands of models share them, so a model's colour comes from a stable
# hash of its id (not Python's salted hash()): the same model has the same colour in every plot.
MODEL_PALETTE: tuple[tuple[float, float, float, float], ...] = tuple(
    c for name in ("tab20", "tab20b", "tab20c") for c in colormaps[name].colors  # type: ignore[attr-defined]
)
GROUP_PALETTE = tuple(colormaps["Set2"].colors)  # type: ignore[attr-defined]
GROUP_SHADE = "#f2f2f2"
CAP_COLOUR = "#c0392b"


@dataclass(frozen=True)
class _Group:
    instance_type: str
    start: int  # first bar index
    stop: int  # one past the last

    @property
    def centre(self) -> float:
        return (self.start + self.stop - 1) / 2


def model_colour(model_id: str) -> tuple[float, float, float, float]:
    return MODEL_PALETTE[zlib.crc32(model_id.encode("utf-8")) % len(MODEL_PALETTE)]


def plot_plan(
    plan: contracts.Plan, pods: Sequence[PodLoad], out: Path, title: str | None = None
) -> Path:
    """Render the plan as a PNG at `out`, written atomically; returns the path."""
    fig = plan_figure(plan, pods, title)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return contracts.write_atomic(out, buf.getvalue())


def plan_figure(plan: contracts.Plan, pods: Sequence[PodLoad], title: str | None = None) -> Figure:
    """The figure plot_plan renders, bars by instance type then server id, for a caller that inspects it."""
    return _figure(plan, _ordered_pods(plan, pods), title)


def _ordered_pods(plan: contracts.Plan, pods: Sequence[PodLoad]) -> list[PodLoad]:
    """The plan's servers' pods, by instance type then id; a mismatch is an error, because a
    picture that silently leaves servers out misleads whoever reads it."""
    by_id: dict[str, PodLoad] = {p.server_id: p for p in pods}
    server_ids = {s.id for s in plan.servers}
    missing = sorted(server_ids - by_id.keys())
    extra = sorted(by_id.keys() - server_ids)
    if missing or extra:
        raise ValueError(
            f"pods do not match the plan's servers: {len(missing)} servers without a pod "
            f"(e.g. {missing[:3]}), {len(extra)} pods of no server (e.g. {extra[:3]})"
        )
    servers = sorted(plan.servers, key=lambda s: (s.instance_type, s.id))
    return [by_id[s.id] for s in servers]


def _groups(types: Sequence[str]) -> list[_Group]:
    groups: list[_Group] = []
    start = 0
    for i in range(1, len(types) + 1):
        if i == len(types) or types[i] != types[start]:
            groups.append(_Group(types[start], start, i))
            start = i
    return groups


def _figure(plan: contracts.Plan, pods: list[PodLoad], title: str | None) -> Figure:
    n = len(pods)
    detailed = n <= DETAIL_MAX_SERVERS
    width = float(np.clip(4 + 0.05 * n, 10, 22)) if detailed else 20.0
    fig = Figure(figsize=(width, 7.5), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(1, 1))
    # parse_math off: the dollar signs are money, not mathtext delimiters.
    fig.suptitle(_headline(plan, title), fontsize=13, fontweight="bold", x=0.01, ha="left", parse_math=False)
    top.set_title(_subtitle(plan, pods, detailed), fontsize=9, loc="left", color="#444444", parse_math=False)
    if n == 0:
        top.text(0.5, 0.5, "the plan has no servers", ha="center", va="center", transform=top.transAxes)
        return fig

    groups = _groups([p.instance_type for p in pods])
    mem, util = _totals(pods)
    mem_caps = np.ones(n)
    util_caps = np.array([p.utilisation_cap for p in pods], dtype=float)
    if detailed:
        _draw_detailed(top, bottom, pods, width)
    else:
        # Each panel sorted on its own: thousands of totals read as a distribution (how many pods
        # sit near the cap), where in one shared order the second panel is only noise.
        mem, mem_caps = _sorted_within_groups(groups, mem, mem_caps)
        util, util_caps = _sorted_within_groups(groups, util, util_caps)
        _draw_totals(top, bottom, groups, mem, util)
    _draw_cap(top, mem, mem_caps, "memory cap")
    _draw_cap(bottom, util, util_caps, "utilisation cap")
    _style_axes(top, bottom, pods, groups, mem, util, util_caps, detailed)
    _label_groups(top, plan, groups, n, width)
    return fig


def _headline(plan: contracts.Plan, title: str | None) -> str:
    return f"{title or 'Packing plan'}: ${plan.cost_per_hour:,.2f}/h"


def _subtitle(plan: contracts.Plan, pods: Sequence[PodLoad], detailed: bool) -> str:
    counts = ", ".join(f"{c:,} × {t}" for t, c in sorted(plan.instances.items()) if c > 0) or "no instances"
    n_pods = sum(s.replicas for s in plan.servers)
    n_models = sum(len(s.models) for s in plan.servers)
    if detailed:
        how = "one bar per server, stacked by model (colours repeat across models)"
    else:
        how = (
            "too many servers to show models: per-server totals as one area per instance type, "
            "each panel sorted high to low within each type (x is a rank, not a server)"
        )
    return (
        f"lower bound ${plan.lower_bound_per_hour:,.2f}/h · gap {plan.gap:.1%} · "
        f"platform ${plan.platform_per_hour:,.2f}/h · {counts}\n"
        f"{len(plan.servers):,} servers · {n_pods:,} pods · {n_models:,} models · {how}"
    )


def _totals(pods: Sequence[PodLoad]) -> tuple[np.ndarray, np.ndarray]:
    mem = np.array([_fraction(p.memory_mib, p.memory_cap_mib) for p in pods], dtype=float)
    util = np.array([p.utilisation for p in pods], dtype=float)
    return mem, util


def _fraction(used: float, cap: float) -> float:
    # A zero cap only happens with a degenerate catalogue; show it as full rather than divide by 0.
    return used / cap if cap > 0 else (0.0 if used == 0 else 1.0)


def _sorted_within_groups(
    groups: Sequence[_Group], values: np.ndarray, caps: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Values high to low within each group, their caps kept alongside; stable, so ties keep id
    order and the picture is deterministic."""
    order = np.concatenate(
        [g.start + np.argsort(-values[g.start:g.stop], kind="stable") for g in groups]
    )
    return values[order], caps[order]


def _draw_detailed(top: Axes, bottom: Axes, pods: Sequence[PodLoad], fig_width_in: float) -> None:
    """One stacked bar per server; all segments of a panel go into one PolyCollection, which is
    far faster than bar() with one Rectangle artist per segment."""
    xs: list[int] = []
    mem_h: list[float] = []
    util_h: list[float] = []
    colours: list[tuple[float, float, float, float]] = []
    for i, pod in enumerate(pods):
        for m in pod.models:
            xs.append(i)
            mem_h.append(_fraction(m.memory_mib, pod.memory_cap_mib))
            util_h.append(m.utilisation)
            colours.append(model_colour(m.model_id))
    x = np.asarray(xs, dtype=float)
    bar_px = fig_width_in * DPI * 0.85 / max(len(pods), 1)
    edge = "white" if bar_px >= EDGE_MIN_BAR_PX else "none"
    for ax, heights in ((top, np.asarray(mem_h)), (bottom, np.asarray(util_h))):
        verts = _stacked_rectangles(x, heights, width=0.8)
        ax.add_collection(PolyCollection(verts, facecolors=colours, edgecolors=edge, linewidths=0.4))
    _note_replicas(bottom, pods)


def _stacked_rectangles(x: np.ndarray, heights: np.ndarray, width: float) -> np.ndarray:
    """Rectangles (n, 4, 2) for segments given in stacking order, x grouped by bar."""
    if len(x) == 0:
        return np.zeros((0, 4, 2))
    cum = np.cumsum(heights)
    # Restart the running sum at each new bar: subtract the total of all earlier bars.
    first = np.r_[True, x[1:] != x[:-1]]
    before = np.where(first, cum - heights, 0.0)
    offset = np.maximum.accumulate(np.where(first, np.arange(len(x)), 0))
    bottoms = cum - heights - before[offset]
    tops = bottoms + heights
    left, right = x - width / 2, x + width / 2
    return np.stack(
        [np.c_[left, bottoms], np.c_[right, bottoms], np.c_[right, tops], np.c_[left, tops]], axis=1
    )


def _note_replicas(ax: Axes, pods: Sequence[PodLoad]) -> None:
    if len(pods) > REPLICA_NOTE_MAX_SERVERS:
        return
    for i, pod in enumerate(pods):
        if pod.replicas > 1:
            ax.annotate(
                f"×{pod.replicas}", (i, pod.utilisation), xytext=(0, 2), textcoords="offset points",
                ha="center", va="bottom", fontsize=7, color="#333333",
            )


def _draw_totals(
    top: Axes, bottom: Axes, groups: Sequence[_Group], mem: np.ndarray, util: np.ndarray
) -> None:
    """Each instance type's per-server totals as one filled step area (a single artist)."""
    for k, g in enumerate(groups):
        colour = GROUP_PALETTE[k % len(GROUP_PALETTE)]
        edges = np.arange(g.start, g.stop + 1) - 0.5
        top.stairs(mem[g.start:g.stop], edges, fill=True, color=colour)
        bottom.stairs(util[g.start:g.stop], edges, fill=True, color=colour)


def _draw_cap(ax: Axes, values: np.ndarray, caps: np.ndarray, name: str) -> None:
    """The cap as a dashed line named at its right end, and a marker on every bar above it: a
    packer bug shows up as a pod over its cap, so it must not be missed."""
    line = {"color": CAP_COLOUR, "linestyle": "--", "linewidth": 1, "zorder": 4}
    if np.allclose(caps, caps[0]):
        ax.axhline(caps[0], **line)
        name = f"{name} {caps[0]:.0%}"
    else:
        ax.stairs(caps, np.arange(len(caps) + 1) - 0.5, baseline=None, **line)
    ax.text(
        len(caps) - 0.5, caps[-1], name, ha="right", va="bottom", fontsize=8, color=CAP_COLOUR, zorder=5,
        bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 1},
    )
    over = np.nonzero(values > caps * (1 + OVER_CAP_TOLERANCE))[0]
    if len(over):
        ax.scatter(over, values[over], marker="v", color=CAP_COLOUR, s=18, zorder=5)


def _style_axes(
    top: Axes,
    bottom: Axes,
    pods: Sequence[PodLoad],
    groups: Sequence[_Group],
    mem: np.ndarray,
    util: np.ndarray,
    util_caps: np.ndarray,
    detailed: bool,
) -> None:
    n = len(pods)
    # Headroom above the cap line for the instance-type labels.
    top.set_ylim(0, max(1.0, float(mem.max())) * 1.22)
    bottom.set_ylim(0, max(1.0, float(util_caps.max()), float(util.max())) * 1.08)
    bottom.set_xlim(-0.5, n - 0.5)
    processors = {p.processor for p in pods}
    if processors == {"cpu"}:
        top.set_ylabel("host memory per slice / pod cap")
    elif "cpu" in processors:
        top.set_ylabel("memory used / pod cap\n(device; host on cpu slices)")
    else:
        top.set_ylabel("device memory used / pod cap")
    bottom.set_ylabel("utilisation per pod")
    for ax in (top, bottom):
        ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
        ax.grid(axis="y", color="#dddddd", linewidth=0.6)
        ax.set_axisbelow(True)
        for k, g in enumerate(groups):
            if k % 2:
                ax.axvspan(g.start - 0.5, g.stop - 0.5, color=GROUP_SHADE, zorder=0)
            if k:
                ax.axvline(g.start - 0.5, color="#555555", linewidth=0.9)
    if detailed and n <= TICK_LABEL_MAX_SERVERS:
        bottom.set_xticks(range(n), [p.server_id for p in pods], rotation=90, fontsize=7)
    else:
        bottom.set_xticks([])
    order = "then by id" if detailed else "then by value, high to low, in each panel"
    bottom.set_xlabel(f"servers ({n:,}), grouped by instance type, {order}")


def _label_groups(
    top: Axes, plan: contracts.Plan, groups: Sequence[_Group], n: int, fig_width_in: float
) -> None:
    """Name each instance-type group in the band above the cap line, as much as fits its width."""
    fontsize = 8
    char_in = fontsize * 0.62 / 72
    y = top.get_ylim()[1] * 0.985
    for g in groups:
        width_in = (g.stop - g.start) / n * fig_width_in * 0.85
        servers = g.stop - g.start
        full = f"{g.instance_type}\n{_count(plan.instances.get(g.instance_type, 0), 'node')} · {_count(servers, 'server')}"
        label = next(
            (t for t in (full, g.instance_type) if max(map(len, t.split("\n"))) * char_in <= width_in), None
        )
        if label is not None:
            top.text(g.centre, y, label, ha="center", va="top", fontsize=fontsize, color="#222222")


def _count(k: int, noun: str) -> str:
    return f"{k:,} {noun}{'' if k == 1 else 's'}"
