"""`python -m packing plan|generate`: the thin command-line edge around the planner."""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from rich.console import Console
from rich.markup import escape

from contracts import ContractError, InstanceCatalogue, ModelCatalogue, Plan, Profile, ReferenceProfiles, load, write_json_atomic
from packing import generate
from packing.arguments import fraction, positive
from packing.model.demand import UnplaceableModels
from packing.model.profiles import resolve_profiles
from packing.model.resources import PackingOptions
from packing.planner import plan_servers
from store import StoreError, file_sha256

EXIT_BAD_INPUT = 2


def _instance_list(text: str) -> List[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def add_plan_parser(sub) -> None:
    p = sub.add_parser(
        "plan", help="pack a model catalogue onto the cheapest instances that hold it",
        description="Solve the packing: models (with profiles) + traffic + instance catalogue -> plan.json, "
                    "plan.png and a summary table. The plan carries a proven lower bound on $/h.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--models", required=True, type=Path, help="models.yaml (or .json for large catalogues)")
    p.add_argument("--instances", type=Path, default=Path("config/instances.yaml"), help="instance catalogue")
    p.add_argument("--out", type=Path, default=Path("plan.json"), help="where to write the plan")
    p.add_argument("--png", type=Path, default=None, help="the plan's picture (default: beside --out, .png)")
    p.add_argument("--store", default=None, help="store URI to read measured profiles from (file://DIR or s3://bucket/prefix)")
    p.add_argument("--reference-profiles", type=Path, default=None,
                   help="cited profiles (config/profiles.yaml) for processors with no inline or measured profile")
    p.add_argument("--only-instance-types", type=_instance_list, default=None, metavar="T1,T2,...",
                   help="restrict to these instance types")
    p.add_argument("--max-utilization", type=fraction(0, 1), default=0.83,
                   help="per-pod utilisation cap (the reference design's 0.83)")
    mem = p.add_mutually_exclusive_group()
    mem.add_argument("--max-device-memory-gib", type=positive(), default=None,
                     help="cap each device's model memory at min(X, device memory)")
    mem.add_argument("--memory-headroom", type=fraction(0, 1, open_lo=False), default=0.08,
                     help="keep this fraction of each device's memory free")
    p.add_argument("--min-replicas", type=positive(int), default=1, help="pods per server at least (2 in prod)")
    p.add_argument("--time-limit", type=positive(), default=60.0, help="seconds for the whole solve")
    p.add_argument("--quiet", action="store_true", help="print only the summary line")
    p.add_argument("--previous", type=Path, default=None,
                   help="re-plan from this plan.json: keep its servers where they still fit, move few models")
    trade = p.add_mutually_exclusive_group()
    trade.add_argument("--move-cost", type=positive(), default=None, metavar="DOLLARS_PER_HOUR",
                       help="with --previous: consolidate under-filled servers when the $/h saved beats this much per moved model")
    trade.add_argument("--max-moves", type=positive(int), default=None, metavar="N",
                       help="with --previous: consolidate, moving at most N more models, for the largest saving")
    p.set_defaults(func=run_plan)


def add_diff_parser(sub) -> None:
    p = sub.add_parser("diff", help="what changes from one plan to another",
                       description="Servers added, removed and changed, models moved, $/h and instances per type "
                                   "before and after: what promoting NEW over OLD changes.")
    p.add_argument("old", type=Path, help="the plan deployed now")
    p.add_argument("new", type=Path, help="the plan to promote")
    p.add_argument("--json", action="store_true", help="print the diff as JSON instead of the summary")
    p.set_defaults(func=run_diff)


def run_diff(args: argparse.Namespace) -> int:
    from packing.report.diff import plan_diff, print_diff

    diff = plan_diff(load(Plan, args.old), load(Plan, args.new))
    if args.json:
        print(json.dumps(diff, indent=2))
    else:
        print_diff(diff, Console())
    return 0


def measured_profiles(uri: str, model_ids: List[str]) -> Tuple[Dict[str, Dict[str, Profile]], str]:
    """The store's measured profiles of these models, and a digest of the entries they came from
    (the plan's record of this input: the same entries give the same digest)."""
    from store import open_store, read_entries

    entries = read_entries(open_store(uri), model_ids)
    digest = hashlib.sha256()
    for model_id in sorted(entries):
        for processor in sorted(entries[model_id]):
            digest.update(json.dumps(entries[model_id][processor].to_json_dict(), sort_keys=True).encode())
    profiles = {m: {p: e.profile for p, e in by_proc.items()} for m, by_proc in entries.items()}
    return profiles, digest.hexdigest()


def run_plan(args: argparse.Namespace) -> int:
    console = Console(stderr=True)
    with console.status("reading inputs") as status:
        catalogue = load(InstanceCatalogue, args.instances)
        models = load(ModelCatalogue, args.models).models
        reference = load(ReferenceProfiles, args.reference_profiles) if args.reference_profiles else None
        inputs = {str(args.models): file_sha256(args.models), str(args.instances): file_sha256(args.instances)}
        measured = None
        if args.store:
            status.update(f"reading measured profiles from {args.store}")
            measured, inputs[args.store] = measured_profiles(args.store, [m.id for m in models])
        profiles, sources = resolve_profiles(models, reference, measured)
        if args.reference_profiles:
            inputs[str(args.reference_profiles)] = file_sha256(args.reference_profiles)
        opts = PackingOptions(
            max_utilization=args.max_utilization, max_device_memory_gib=args.max_device_memory_gib,
            memory_headroom=args.memory_headroom, min_replicas=args.min_replicas,
            only_instance_types=tuple(args.only_instance_types) if args.only_instance_types else None,
            time_limit_s=args.time_limit,
        )
        if args.previous:
            from packing.replanner import MoveBudget, replan

            previous = load(Plan, args.previous)
            result = replan(previous, file_sha256(args.previous), models, profiles, sources, catalogue, opts,
                            MoveBudget(args.move_cost, args.max_moves), inputs, progress=lambda msg: status.update(msg))
        elif args.move_cost is not None or args.max_moves is not None:
            raise ValueError("--move-cost and --max-moves need --previous (the plan to re-plan from)")
        else:
            result = plan_servers(models, profiles, sources, catalogue, opts, inputs,
                                  progress=lambda msg: status.update(msg))
    png = args.png or args.out.with_suffix(".png")
    from packing.report.plot import plot_plan  # matplotlib is slow to import: only when a plan exists
    plot_plan(result.plan, result.pods, png)
    write_json_atomic(args.out, result.plan.to_json_dict())
    plan = result.plan
    if not args.quiet:
        from packing.report.table import print_plan_summary
        print_plan_summary(plan, Console())
    print(f"plan: {args.out}  picture: {png}  ${plan.cost_per_hour:.2f}/h, bound ${plan.lower_bound_per_hour:.2f}/h, "
          f"gap {plan.gap:.2%}, {sum(plan.instances.values())} instances, {len(plan.servers)} servers, "
          f"{plan.solve_seconds:.1f} s")
    if plan.previous is not None:
        print(f"against {args.previous}: {plan.previous.models_moved} models moved, "
              f"{plan.previous.servers_restarted} servers restarted")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m packing",
        description="Plan model servers: bin-pack models onto the cheapest instances that meet their latency budget.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{plan,diff,generate}")
    add_plan_parser(sub)
    add_diff_parser(sub)
    generate.register(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ContractError, UnplaceableModels, ValueError, StoreError) as exc:
        Console(stderr=True).print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
