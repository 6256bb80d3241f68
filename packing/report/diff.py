"""What changes between two plans: servers added, removed and changed, models moved, $/h and
instances per type before and after. `python -m packing diff OLD NEW` prints it; the re-planner
counts its moves and restarts with the same function, so both always agree.

A model *moves* when it is in both plans on different servers; a server *restarts* when it is in
both plans (same id) and its model set or instance type changed (the charts roll its pods: the
pod template carries a hash of its sorted model ids). A change of replicas only scales it.
"""
from __future__ import annotations

from typing import Any, Dict, List

from contracts import Plan


def model_servers(plan: Plan) -> Dict[str, str]:
    return {m: s.id for s in plan.servers for m in s.models}


def plan_diff(old: Plan, new: Plan) -> Dict[str, Any]:
    """The JSON diff (plain data, deterministic order)."""
    before, after = {s.id: s for s in old.servers}, {s.id: s for s in new.servers}
    where_before, where_after = model_servers(old), model_servers(new)
    changed: List[Dict[str, Any]] = []
    for sid in sorted(before.keys() & after.keys()):
        a, b = before[sid], after[sid]
        models_in = sorted(set(b.models) - set(a.models))
        models_out = sorted(set(a.models) - set(b.models))
        if not (models_in or models_out or a.replicas != b.replicas or a.instance_type != b.instance_type):
            continue
        changed.append({"id": sid, "instance_type": [a.instance_type, b.instance_type], "replicas": [a.replicas, b.replicas],
                        "models_in": models_in, "models_out": models_out,
                        "restarts": bool(models_in or models_out or a.instance_type != b.instance_type)})
    moved = {m: [where_before[m], where_after[m]] for m in sorted(where_before.keys() & where_after.keys())
             if where_before[m] != where_after[m]}
    types = sorted(old.instances.keys() | new.instances.keys())
    return {
        "servers_added": sorted(after.keys() - before.keys()),
        "servers_removed": sorted(before.keys() - after.keys()),
        "servers_changed": changed,
        "servers_unchanged": len(before.keys() & after.keys()) - len(changed),
        "servers_restarted": sum(1 for c in changed if c["restarts"]),
        "models_moved": moved,
        "models_added": sorted(where_after.keys() - where_before.keys()),
        "models_removed": sorted(where_before.keys() - where_after.keys()),
        "cost_per_hour": {"before": old.cost_per_hour, "after": new.cost_per_hour,
                          "change": round(new.cost_per_hour - old.cost_per_hour, 6)},
        "instances": {t: {"before": old.instances.get(t, 0), "after": new.instances.get(t, 0)} for t in types},
    }


def _some(items: List[str], limit: int = 6) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" … (+{len(items) - limit})" if len(items) > limit else "")


def print_diff(diff: Dict[str, Any], console, limit: int = 20) -> None:
    """A readable summary: the headline, instances per type, then the servers that change."""
    from rich.table import Table

    cost = diff["cost_per_hour"]
    console.print(
        f"[bold]${cost['before']:.2f}/h → ${cost['after']:.2f}/h[/] ({cost['change']:+.2f}); "
        f"servers: +{len(diff['servers_added'])} −{len(diff['servers_removed'])} "
        f"~{len(diff['servers_changed'])} ({diff['servers_restarted']} restart), {diff['servers_unchanged']} unchanged; "
        f"models: {len(diff['models_moved'])} moved, +{len(diff['models_added'])} −{len(diff['models_removed'])}",
        highlight=False)
    counts = Table(title="instances per type", show_edge=False)
    for col in ("type", "before", "after", "change"):
        counts.add_column(col, justify="left" if col == "type" else "right")
    for t, c in diff["instances"].items():
        if c["before"] != c["after"]:
            counts.add_row(t, str(c["before"]), str(c["after"]), f"{c['after'] - c['before']:+d}")
    if counts.row_count:
        console.print(counts)
    if diff["servers_added"]:
        console.print(f"added: {_some(diff['servers_added'])}", highlight=False)
    if diff["servers_removed"]:
        console.print(f"removed: {_some(diff['servers_removed'])}", highlight=False)
    if diff["servers_changed"]:
        table = Table(title="servers changed", show_edge=False)
        for col in ("server", "type", "replicas", "models in", "models out", "restart"):
            table.add_column(col)
        for c in diff["servers_changed"][:limit]:
            kind = c["instance_type"][1] if c["instance_type"][0] == c["instance_type"][1] else " → ".join(c["instance_type"])
            reps = str(c["replicas"][1]) if c["replicas"][0] == c["replicas"][1] else f"{c['replicas'][0]} → {c['replicas'][1]}"
            table.add_row(c["id"], kind, reps, _some(c["models_in"], 3), _some(c["models_out"], 3), "yes" if c["restarts"] else "no")
        console.print(table)
        if len(diff["servers_changed"]) > limit:
            console.print(f"… and {len(diff['servers_changed']) - limit} more changed servers (--json lists all)")
    if diff["models_moved"]:
        moves = [f"{m} ({a} → {b})" for m, (a, b) in diff["models_moved"].items()]
        console.print(f"moved: {_some(moves, limit)}", highlight=False)
