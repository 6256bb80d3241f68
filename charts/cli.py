"""`python -m charts synth`: the command-line edge."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import List, Optional

from charts.typecheck import skip_jsii_type_checks
from contracts import ContractError

EXIT_BAD_INPUT = 2

# What `synth` writes (charts/synth.py write_dist and write_monitoring); a test holds it to a real dist/.
SYNTH_DESCRIPTION = (
    "Write, all or nothing: dist/manifests/ (00-cluster.yaml and servers/<server>.yaml, rendered with "
    "the config's values: what reviewers read and tests validate; each server's Deployment, Service, "
    "ConfigMap, PodDisruptionBudget, HTTPRoutes and what scales it: a KEDA ScaledObject on its requests "
    "in flight for gpu/inf1/inf2 servers, the CPU HorizontalPodAutoscaler for cpu servers, as the "
    "config's `autoscaling` chooses), dist/envoy-gateway/envoyproxy.yaml (the NLB settings, Envoy "
    "Gateway's API), dist/helm/cluster/ and dist/helm/servers-NNN/ (chart folders whose templates take "
    "images, store URI and role ARN from Helm values), dist/monitoring/ (for kube-prometheus-stack: "
    "podmonitor.yaml, the servers' PodMonitor; rules/00-fleet.yaml and rules/<server>.yaml, "
    "PrometheusRules from each server's SLO; dashboard.yaml, the Grafana dashboard as a ConfigMap for "
    "Grafana's sidecar) and the same objects as dist/helm/monitoring-NNN/ charts of at most 1 MiB of "
    "templates each, dist/routes.json and dist/summary.json. A bad plan or config is one error on "
    "stderr, exit code 2, and nothing written.")


def _jobs(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {n}")
    return n


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m charts",
        description="Kubernetes manifests for a plan, through cdk8s (ARCHITECTURE.md, 'Getting manifests to the cluster').")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser(
        "synth", help="plan.json + config/<env>.yaml -> dist/ (manifests, Helm chart shards, monitoring, routes.json)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description=SYNTH_DESCRIPTION)
    p.add_argument("--plan", required=True, type=Path, help="plan.json from `python -m packing plan`")
    p.add_argument("--config", required=True, type=Path, help="environment config, e.g. config/dev.yaml")
    p.add_argument("--instances", type=Path, default=Path("config/instances.yaml"),
                   help="instance catalogue the plan was made with (instance types are checked against it)")
    p.add_argument("--out", type=Path, default=Path("dist"),
                   help="output folder; replaced whole, so it must be new, empty, or written by this command")
    p.add_argument("--jobs", type=_jobs, default=min(4, os.cpu_count() or 1),
                   help="processes that build the servers' objects (plans of 100+ servers); 1 builds in this one")
    p.add_argument("--quiet", action="store_true", help="print only the summary line")
    return parser


def run_synth(args: argparse.Namespace) -> int:
    skip_jsii_type_checks()
    from charts.synth import synth  # imports cdk8s (starts Node): not needed for --help

    def say(msg: str) -> None:
        if not args.quiet:
            print(f"charts: {msg}", file=sys.stderr)

    result = synth(args.plan, args.config, args.out, instances_path=args.instances, progress=say, jobs=args.jobs)
    biggest = max(result.shards, key=lambda s: s["release_secret_bytes_estimate"])
    print(f"synth: {args.out}  {result.servers} servers, {result.models} models, {result.objects} objects, "
          f"{len(result.shards)} Helm shard(s) (largest release ~{biggest['release_secret_bytes_estimate'] / 1024:.0f} KiB "
          f"of 1024), largest object {result.largest_object_bytes / 1024:.1f} KiB ({result.largest_object}), "
          f"{result.seconds:.1f} s")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run_synth(args)
    except ContractError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
