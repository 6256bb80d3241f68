"""`python -m tracing trace`: trace the catalogue's models for one processor, profile them and
publish bundles and entries to the store."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional, Sequence

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from contracts import ContractError, ModelCatalogue, load
from contracts.models import ARTIFACT_FORMATS
from tracing.aoti import DEFAULT_MAX_BATCH
from tracing.pipeline import TraceFailure, TraceResult, plan_jobs, trace_job, up_to_date
from tracing.profile import BATCHES, ProfileOptions
from tracing.trace import DEFAULT_FORMAT, PROCESSORS, RuntimeMissing, TraceOptions, check_format, check_runtime

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1


def _ids(text: str) -> List[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _batches(text: str) -> List[int]:
    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"batch sizes are whole numbers separated by commas, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"batch sizes must be >= 1, got {text!r}")
    return values


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tracing",
        description="Trace models for a processor, profile the artifacts as they will be served, and publish "
                    "verified bundles and per-model entries to the store that the planner and servers read.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{trace}")
    p = sub.add_parser(
        "trace", help="trace, profile and publish the catalogue's models for one processor",
        description="For each model of --models (models sharing a source and settings share one artifact): "
                    "load it offline, trace it for --processor, check it against the eager model, profile it "
                    "in a fresh process (memory, batch-1 p50/p90, latency by batch) and publish it to --store.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--models", required=True, type=Path, help="models.yaml (source, task, sequence_length, batch_size per model)")
    p.add_argument("--processor", required=True, choices=PROCESSORS, help="what to trace for")
    p.add_argument("--store", default="file://out/store", help="store URI: file://DIR, a folder, or s3://bucket/prefix")
    p.add_argument("--only", type=_ids, default=None, metavar="ID1,ID2,...", help="trace only these model ids")
    p.add_argument("--reps", type=_positive_int, default=30, help="timed runs per batch size when profiling")
    p.add_argument("--warmup", type=_positive_int, default=3, help="untimed runs before timing")
    p.add_argument("--threads", type=_positive_int, default=1, help="intra-op threads while profiling (one per stream)")
    p.add_argument("--batches", type=_batches, default=list(BATCHES), metavar="1,2,4,8", help="batch sizes to profile")
    p.add_argument("--pipeline-cores", type=_positive_int, default=1,
                   help="inf1: NeuronCores to pipeline one model over (--neuroncore-pipeline-cores)")
    p.add_argument("--workdir", type=Path, default=None, help="Neuron compiler work directory (logs, NEFFs)")
    p.add_argument("--format", choices=ARTIFACT_FORMATS, default=DEFAULT_FORMAT,
                   help="artifact format: torchscript (model.pt, every processor) or aoti (model.pt2: torch.export and "
                        "AOTInductor, cpu and gpu only; needs g++, about a minute of compiling per model)")
    p.add_argument("--max-batch", type=_positive_int, default=DEFAULT_MAX_BATCH,
                   help="aoti: the largest batch the package takes (at least the server's MAX_BATCH_SIZE)")
    p.add_argument("--force", action="store_true",
                   help="trace and publish again models whose entries are up to date (replaces a damaged artifact)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or table")
    p.set_defaults(func=run_trace)
    return parser


def summary_table(results: Sequence[TraceResult], failures: Sequence[TraceFailure]) -> Table:
    table = Table(title="traced and published", title_justify="left")
    for name, justify in [("model", "left"), ("processor", "left"), ("precision", "left"), ("size MiB", "right"),
                          ("p50 ms", "right"), ("p90 ms", "right"), ("host MiB", "right"), ("device MiB", "right"),
                          ("check", "left"), ("artifact", "left")]:
        table.add_column(name, justify=justify)
    for r in results:
        p = r.profile
        table.add_row(escape(r.job.label), r.processor, r.job.precision, f"{r.size_mib:.1f}", f"{p.latency_ms:.1f}",
                      f"{p.p90_ms:.1f}", f"{p.host_memory_mib:.0f}", f"{p.device_memory_mib:.0f}",
                      f"{r.check.metric} {r.check.value:.4g}", r.digest[:12])
    for f in failures:
        table.add_row(escape(f.job.label), "[red]failed[/]", "", "", "", "", "", "", "", escape(f.error.splitlines()[0][:60]))
    return table


def run_trace(args: argparse.Namespace) -> int:
    from store import open_store

    console = Console(stderr=True, quiet=args.quiet)
    models = load(ModelCatalogue, args.models).models
    if args.only:
        unknown = sorted(set(args.only) - {m.id for m in models})
        if unknown:
            raise ContractError(f"--only: {', '.join(unknown)} not in {args.models}")
        models = [m for m in models if m.id in set(args.only)]
    check_format(args.processor, args.format)
    if args.format == "aoti" and max(args.batches) > args.max_batch:
        raise ValueError(f"--max-batch {args.max_batch} is below the largest batch to profile ({max(args.batches)} of "
                         "--batches): raise --max-batch or profile smaller batches")
    jobs = plan_jobs(models, args.processor, label=args.models.name, base_dir=args.models.resolve().parent)
    check_runtime(args.processor)
    store = open_store(args.store)
    opts = TraceOptions(args.processor, pipeline_cores=args.pipeline_cores, workdir=args.workdir, force=args.force,
                        format=args.format, max_batch=args.max_batch)
    profile_opts = ProfileOptions(reps=args.reps, warmup=args.warmup, threads=args.threads, batches=tuple(args.batches))
    current = [] if args.force else [job for job in jobs if up_to_date(job, args.processor, store, args.format)]
    jobs = [job for job in jobs if job not in current]
    results: List[TraceResult] = []
    failures: List[TraceFailure] = []
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("{task.fields[step]}")]
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(f"tracing for {args.processor}", total=len(jobs), step="")
        for job in jobs:
            def step(text: str, job=job) -> None:
                bar.update(task, step=f"{job.label}: {text}")
            try:
                results.append(trace_job(job, opts, profile_opts, store, step))
            except (RuntimeMissing, KeyboardInterrupt):
                raise
            except Exception as exc:  # one model's failure must not cost the others theirs
                failures.append(TraceFailure(job, f"{type(exc).__name__}: {exc}"))
                console.print(f"[red]failed[/] {escape(job.label)}: {escape(str(exc))}", highlight=False)
            bar.advance(task)
    if not args.quiet:
        out = Console()
        if not out.is_terminal:  # piped or logged: keep the table's columns readable
            out = Console(width=160)
        out.print(summary_table(results, failures))
    published = sum(len(r.job.model_ids) for r in results)
    kept = sum(len(j.model_ids) for j in current)
    print(f"published {published} model entries ({len(results)} artifacts) for {args.processor} to {store.uri}"
          + (f"; {kept} model(s) already traced with the same source and settings, kept (--force traces them again)"
             if kept else "")
          + (f"; {len(failures)} artifact(s) failed" if failures else ""))
    return EXIT_FAILED if failures else 0


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ContractError, RuntimeMissing, ValueError) as exc:
        Console(stderr=True).print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
        return EXIT_BAD_INPUT
    except Exception as exc:
        from store import StoreError

        if isinstance(exc, StoreError):
            Console(stderr=True).print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
            return EXIT_BAD_INPUT
        raise


if __name__ == "__main__":
    sys.exit(main())
