"""The plan's summary as rich tables: what it buys, what it runs, how full the pods are.

Everything comes from plan.json alone. The plan does not carry per-type prices, so `prices`
(from the instance catalogue) is optional: without it a type's price is derived where the plan
pins it down (every other type's price known, or only one type), and shown as "—" otherwise.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

import contracts

UNKNOWN = "—"


@dataclass(frozen=True)
class TypeRow:
    instance_type: str
    processor: str
    nodes: int
    servers: int
    pods: int
    models: int
    pod_utilisation_sum: float  # over pods, so the mean weights a server by its replicas
    pod_utilisation_max: float

    @property
    def mean_utilisation(self) -> float | None:
        return self.pod_utilisation_sum / self.pods if self.pods else None


def type_rows(plan: contracts.Plan) -> list[TypeRow]:
    """One row per instance type the plan buys or places a server on, by name."""
    types = sorted({t for t, c in plan.instances.items() if c > 0} | {s.instance_type for s in plan.servers})
    rows = []
    for t in types:
        servers = [s for s in plan.servers if s.instance_type == t]
        rows.append(
            TypeRow(
                instance_type=t,
                processor=servers[0].processor if servers else UNKNOWN,
                nodes=plan.instances.get(t, 0),
                servers=len(servers),
                pods=sum(s.replicas for s in servers),
                models=sum(len(s.models) for s in servers),
                pod_utilisation_sum=sum(s.predicted.utilisation * s.replicas for s in servers),
                pod_utilisation_max=max((s.predicted.utilisation for s in servers), default=0.0),
            )
        )
    return rows


def type_prices(plan: contracts.Plan, prices: Mapping[str, float] | None = None) -> dict[str, float]:
    """$/h per node for each bought type: given ones, plus at most one derived from the rest of
    the instance cost (cost_per_hour − platform − the known types)."""
    bought = {t: c for t, c in plan.instances.items() if c > 0}
    known = {t: float(prices[t]) for t in bought if prices and t in prices}
    unknown = [t for t in bought if t not in known]
    if len(unknown) == 1:
        rest = plan.cost_per_hour - plan.platform_per_hour - sum(known[t] * bought[t] for t in known)
        if rest > 0:
            known[unknown[0]] = rest / bought[unknown[0]]
    return known


def plan_table(plan: contracts.Plan, prices: Mapping[str, float] | None = None) -> Table:
    """Instances bought, per type and in total, with the plan's cost figures as caption."""
    rows = type_rows(plan)
    price = type_prices(plan, prices)
    table = Table(title="Plan by instance type", caption=_caption(plan), caption_justify="left")
    for name, justify in (
        ("instance type", "left"), ("processor", "left"), ("nodes", "right"), ("$/h each", "right"),
        ("$/h", "right"), ("servers", "right"), ("pods", "right"), ("models", "right"),
        ("mean util/pod", "right"), ("max util/pod", "right"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for r in rows:
        each = price.get(r.instance_type)
        table.add_row(
            r.instance_type, r.processor, f"{r.nodes:,}", _money(each),
            _money(each * r.nodes if each is not None else None), f"{r.servers:,}", f"{r.pods:,}",
            f"{r.models:,}", _percent(r.mean_utilisation), _percent(r.pod_utilisation_max),
        )
    if plan.platform_per_hour > 0:
        table.add_row("platform", "", "", "", _money(plan.platform_per_hour), *[""] * 5)
    _add_total(table, plan, rows)
    return table


def _add_total(table: Table, plan: contracts.Plan, rows: list[TypeRow]) -> None:
    pods = sum(r.pods for r in rows)
    mean = sum(r.pod_utilisation_sum for r in rows) / pods if pods else None
    table.add_section()
    table.add_row(
        "total", "", f"{sum(r.nodes for r in rows):,}", "", _money(plan.cost_per_hour),
        f"{sum(r.servers for r in rows):,}", f"{pods:,}", f"{sum(r.models for r in rows):,}",
        _percent(mean), _percent(max((r.pod_utilisation_max for r in rows), default=None)),
        style="bold",
    )


def _caption(plan: contracts.Plan) -> str:
    solver = plan.solver.get("name") or "unknown solver"
    return (
        f"cost ${plan.cost_per_hour:,.2f}/h (incl. platform ${plan.platform_per_hour:,.2f}/h) · "
        f"lower bound ${plan.lower_bound_per_hour:,.2f}/h · gap {plan.gap:.1%} · "
        f"solved in {plan.solve_seconds:.1f} s by {solver}"
    )


def servers_table(plan: contracts.Plan, limit: int = 20) -> Table:
    """The servers with the most models: the ones whose loss or restart touches most traffic."""
    servers = sorted(plan.servers, key=lambda s: (-len(s.models), s.id))[: max(limit, 0)]
    table = Table(title=f"Top {len(servers)} of {len(plan.servers):,} servers by model count")
    for name, justify in (
        ("server", "left"), ("instance type", "left"), ("replicas", "right"), ("models", "right"),
        ("util/pod", "right"), ("p90 ms", "right"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for s in servers:
        table.add_row(
            s.id, s.instance_type, str(s.replicas), f"{len(s.models):,}",
            _percent(s.predicted.utilisation), f"{s.predicted.p90_ms:,.1f}",
        )
    return table


def print_plan_summary(
    plan: contracts.Plan,
    console: Console | None = None,
    prices: Mapping[str, float] | None = None,
) -> None:
    console = console or Console()
    console.print(plan_table(plan, prices))
    console.print(servers_table(plan))


def _money(value: float | None) -> str:
    return UNKNOWN if value is None else f"{value:,.3f}"


def _percent(value: float | None) -> str:
    return UNKNOWN if value is None else f"{value:.1%}"
