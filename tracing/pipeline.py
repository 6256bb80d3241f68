"""The trace step for a catalogue: group models that share one artifact, then per group load the
source, trace, write the bundle, profile it in a fresh process, publish the bundle and, last, one
entry per model. Everything is checked before the first model is traced, so a bad models.yaml
writes nothing; a group that fails later publishes nothing of its own and the others still land."""
from __future__ import annotations

import datetime as dt
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from contracts import BundleManifest, Check, ContractError, ModelSpec, Profile, StoreEntry
from tracing.sources import Source, parse_source
from tracing.trace import PROCESSORS, TraceOptions, served_precision

REQUIRED = ("source", "task", "sequence_length", "batch_size")
Progress = Callable[[str], None]


@dataclass
class TraceJob:
    """Models that share a source and settings: traced, profiled and stored once."""

    source: Source
    source_text: str
    task: str
    sequence_length: int
    batch_size: int
    precision: str
    model_ids: List[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        more = f" (+{len(self.model_ids) - 1} sharing it)" if len(self.model_ids) > 1 else ""
        return f"{self.model_ids[0]}{more}"


@dataclass
class TraceResult:
    job: TraceJob
    processor: str
    digest: str
    manifest: BundleManifest
    profile: Profile
    check: Check
    size_mib: float
    seconds: Dict[str, float]


@dataclass
class TraceFailure:
    job: TraceJob
    error: str


def plan_jobs(models: Sequence[ModelSpec], processor: str, label: str = "models.yaml",
              base_dir: Optional[Path] = None) -> List[TraceJob]:
    """Validate every model for tracing and group those that share an artifact. Raises
    ContractError naming each bad entry (all of them at once) before anything is traced."""
    if processor not in PROCESSORS:
        raise ContractError(f"--processor: unknown processor {processor!r}; use one of {', '.join(PROCESSORS)}")
    problems: List[str] = []
    jobs: Dict[Tuple, TraceJob] = {}
    for i, m in enumerate(models):
        missing = [f for f in REQUIRED if getattr(m, f) is None]
        if missing:
            problems.append(f"{label}: models[{i}] ({m.id}): {', '.join(missing)} "
                            f"{'is' if len(missing) == 1 else 'are'} required to trace a model")
            continue
        try:
            source = parse_source(m.source, base_dir)
        except Exception as exc:
            problems.append(f"{label}: models[{i}].source ({m.id}): {exc}")
            continue
        precision = served_precision(processor, m.precision)
        if processor == "cpu" and precision == "fp16":
            problems.append(f"{label}: models[{i}].precision ({m.id}): fp16 is not served on cpu; use fp32 or bf16")
            continue
        key = (source, m.task, m.sequence_length, m.batch_size, precision)
        job = jobs.setdefault(key, TraceJob(source, m.source, m.task, m.sequence_length, m.batch_size, precision))
        job.model_ids.append(m.id)
    if problems:
        more = f"\n(and {len(problems) - 20} more)" if len(problems) > 20 else ""
        raise ContractError("\n".join(problems[:20]) + more)
    return list(jobs.values())


def up_to_date(job: TraceJob, processor: str, store, model_format: str = "torchscript") -> bool:
    """Every model of the job has an entry for this processor, made from the same source and
    settings, whose artifact is complete in the store and of `model_format`: nothing to trace again
    (unless forced)."""
    from store import StoreError, read_entry
    from store.bundles import manifest_key
    from store.manifests import parse_manifest

    settings = (job.source_text, job.task, job.sequence_length, job.batch_size, job.precision)
    for model_id in job.model_ids:
        entry = read_entry(store, model_id, processor)
        if entry is None or (entry.source, entry.task, entry.sequence_length, entry.batch_size, entry.precision) != settings:
            return False
        key = manifest_key(entry.artifact)
        if not store.exists(key):
            return False
        try:
            if parse_manifest(store.read_bytes(key), key).format != model_format:
                return False  # traced in the other format: trace it again in this one
        except (StoreError, ContractError):
            return False
    return True


def trace_job(job: TraceJob, opts: TraceOptions, profile_opts, store, progress: Progress = lambda _: None) -> TraceResult:
    """Trace, profile and publish one job. Nothing of it reaches the store unless all succeed."""
    import time

    import torch

    from contracts.tasks import OUTPUT_NAMES
    from store import publish_bundle, publish_entry
    from tracing.bundle import write_bundle
    from tracing.heads import task_head
    from tracing.profile import CHECK_TEXTS, eager_outputs, encode, profile_bundle
    from tracing.sources import load_source
    from tracing.trace import trace_module

    seconds: Dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[name] = round(now - clock, 3)
        clock = now

    progress("loading source")
    loaded = load_source(job.source, job.task)
    head = task_head(loaded)
    check_inputs = encode(loaded.tokenizer, CHECK_TEXTS, job.sequence_length)
    expected = eager_outputs(head, check_inputs)
    example = tuple(check_inputs[k][:1].repeat(job.batch_size, 1) for k in ("input_ids", "attention_mask"))
    lap("load")
    outputs = {name: [job.batch_size] + list(t.shape[1:]) for name, t in zip(OUTPUT_NAMES[job.task], expected)}
    with tempfile.TemporaryDirectory(prefix="modelfleet-bundle-") as tmp:
        folder, scratch = Path(tmp) / "bundle", Path(tmp) / "compile"  # one filesystem: the package is renamed in
        folder.mkdir()
        progress(f"tracing for {opts.processor}" + (" (AOTInductor: export and compile)" if opts.format == "aoti" else ""))
        traced = trace_module(head, example, TraceOptions(opts.processor, job.precision, opts.pipeline_cores, opts.workdir,
                                                          format=opts.format, max_batch=opts.max_batch), scratch)
        lap("trace")
        manifest = write_bundle(
            folder, traced.module, loaded.tokenizer, loaded.config, processor=opts.processor, task=job.task,
            source=job.source_text, shape=loaded.shape, sequence_length=job.sequence_length, batch_size=job.batch_size,
            precision=job.precision, outputs=outputs, labels=loaded.labels, runtime=traced.runtime,
            compiler_args=traced.compiler_args, model_format=traced.format)
        del traced, head, loaded
        torch.cuda.empty_cache() if torch.cuda.is_available() else None
        lap("write")
        progress("profiling in a fresh process")
        profile, check = profile_bundle(folder / manifest.model_file, opts.processor, job.task, job.precision,
                                        check_inputs, expected, profile_opts, model_format=manifest.format)
        lap("profile")
        progress("publishing")
        digest = publish_bundle(store, folder, force=opts.force)
    created = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    checked = Check(**check)
    for model_id in job.model_ids:
        publish_entry(store, StoreEntry(
            model_id=model_id, processor=opts.processor, artifact=digest, task=job.task, source=job.source_text,
            sequence_length=job.sequence_length, batch_size=job.batch_size, precision=job.precision,
            inputs=manifest.inputs, outputs=manifest.outputs, profile=profile, check=checked, created_at=created))
    lap("publish")
    size = sum(f.size for f in manifest.files.values()) / 2**20
    return TraceResult(job, opts.processor, digest, manifest, profile, checked, round(size, 1), seconds)
