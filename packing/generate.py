"""Model catalogue generator: the reference design's seed scenario and seeded mixed catalogues.

Pure functions build the catalogue as plain data (what models.yaml holds, ARCHITECTURE.md, "Data
contracts"); `write_catalogue` is the only I/O, and `register` wires the `generate` sub-command
into `python -m packing`.

- `seed_scenario`: n identical bert-base-cased models on inf1 at 2.05 rps each, the AWS blog's
  3,000-model setting (3,040 x 2.05 rps, 19 models per Inferentia chip).
- `mixed_catalogue`: a seeded mixture of the shapes in config/profiles.yaml, each model carrying
  its shape's reference profiles jittered by a few percent, with Zipf (heavy-tailed) or uniform
  traffic and optional latency SLOs.
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

import contracts
from packing.arguments import fraction, positive

ROOT = Path(__file__).resolve().parent.parent
# Resolved against the repository, not the working directory, so the default works from anywhere.
DEFAULT_REFERENCE = ROOT / "config" / "profiles.yaml"

SEED_MODELS = 3040
SEED_RPS = 2.05  # per model: 3,040 x 2.05 = 6,232 rps in all
SEED_SHAPE = "bert-base-cased"
SEED_PROFILE = {"device_memory_mib": 380, "host_memory_mib": 400, "latency_ms": 22}

SEQUENCE_LENGTH = 128
BATCH_SIZE = 1

# Relative popularity of the known shapes in a mixed catalogue (a shape not listed weighs 1):
# mostly base-sized encoders, some small embedding models, a few large ones.
SHAPE_WEIGHTS = {
    "bert-base-cased": 4.0,
    "distilbert-base-uncased": 2.5,
    "all-minilm-l6-v2": 2.5,
    "bert-large-cased": 1.0,
}
# The task each shape is typically served for; it only changes the model's output head.
SHAPE_TASKS = {
    "bert-base-cased": "question-answering",
    "bert-large-cased": "question-answering",
    "distilbert-base-uncased": "sequence-classification",
    "all-minilm-l6-v2": "feature-extraction",
}
DEFAULT_TASK = "feature-extraction"

# Jitter, as +/- fractions. A per-model factor shared by all its processors (a model that is bigger
# or slower than its shape's reference is so everywhere) plus a small per-processor one, so that no
# two profiles in a catalogue are the same and a packer cannot lean on identical items.
MODEL_MEMORY_JITTER = 0.03
MODEL_LATENCY_JITTER = 0.04
PROCESSOR_JITTER = 0.01
P90_SPREAD = 0.04  # the p90/p50 ratio varies by up to this much (never below the reference's)

DECIMALS = 3  # keeps 100,000-model files small; rps totals are preserved exactly (see _rounded)
TRAFFIC_KINDS = ("zipf", "uniform")


# ---------------------------------------------------------------------------------------------
# The seed scenario
# ---------------------------------------------------------------------------------------------


def seed_scenario(n: int = SEED_MODELS) -> dict[str, Any]:
    """n bert-base-cased models (`bert-0000` ...) at 2.05 rps, each with the inf1 profile only."""
    if n < 0:
        raise ValueError(f"the number of models must be >= 0, got {n}")
    width = max(4, len(str(max(n - 1, 0))))
    return {"models": [_seed_model(i, width) for i in range(n)]}


def _seed_model(i: int, width: int) -> dict[str, Any]:
    return {
        "id": f"bert-{i:0{width}d}",
        "source": f"random:{SEED_SHAPE}@{i}",
        "task": "question-answering",
        "sequence_length": SEQUENCE_LENGTH,
        "batch_size": BATCH_SIZE,
        "precision": "bf16",
        "rps": SEED_RPS,
        "profiles": {"inf1": dict(SEED_PROFILE)},
    }


# ---------------------------------------------------------------------------------------------
# Mixed catalogues
# ---------------------------------------------------------------------------------------------


def mixed_catalogue(
    n: int,
    seed: int,
    traffic: str = "zipf",
    total_rps: float | None = None,
    zipf_s: float = 1.1,
    shapes: Sequence[str] | Mapping[str, float] | None = None,
    processors: Sequence[str] | None = None,
    slo_fraction: float = 0.0,
    reference: Path | str = DEFAULT_REFERENCE,
    sequence_length: int = SEQUENCE_LENGTH,
    slo_budgets: Sequence[float] | None = None,
) -> dict[str, Any]:
    """A seeded mixture of reference shapes with jittered profiles and Zipf or uniform traffic.

    `shapes`: which shapes to mix (default: every shape in `reference` at `sequence_length`), as
    names (weighted by SHAPE_WEIGHTS) or a {shape: weight} mapping. `processors`: which profiles
    each model carries (default: all its shape has); shapes with none of them are left out.
    `total_rps` defaults to 2.05 x n, the seed scenario's load. The same arguments always give the
    same catalogue. `slo_budgets`: the SLOs to draw from (evenly) for the `slo_fraction` of
    models that get one, each raised to the next listed budget its fastest processor can meet
    (`_budget`); without it, an SLO is drawn between the model's processors (`_slo`).
    """
    total = 2.05 * n if total_rps is None else float(total_rps)
    _check_mixed_arguments(n, traffic, total, zipf_s, processors, slo_fraction)
    table = reference_table(contracts.load(contracts.ReferenceProfiles, reference), sequence_length)
    names, weights = _shape_mixture(table, shapes, processors)

    rng = np.random.default_rng(seed)
    drawn = rng.choice(len(names), size=n, p=weights).tolist()
    rps = _traffic(rng, n, traffic, total, zipf_s)
    jitter = _draw_jitter(rng, n)
    with_slo = set(rng.choice(n, size=round(slo_fraction * n), replace=False).tolist())
    slo_draws = rng.random(n).tolist()

    width = max(5, len(str(n - 1)))
    models = []
    for i in range(n):
        shape = names[drawn[i]]
        profiles = _model_profiles(table[shape], processors, jitter, i)
        model = _mixed_model(i, width, shape, profiles, rps[i])
        if i in with_slo:
            model["slo_p90_ms"] = (_budget(profiles, slo_budgets, slo_draws[i]) if slo_budgets
                                   else _slo(profiles, slo_draws[i]))
        model["profiles"] = profiles  # last, so each entry reads id, traffic, then profiles
        models.append(model)
    _make_profiles_unique(models)
    return {"models": models}


def reference_table(
    refs: contracts.ReferenceProfiles, sequence_length: int = SEQUENCE_LENGTH
) -> dict[str, dict[str, contracts.ReferenceProfile]]:
    """{shape: {processor: profile}} at one sequence length; the first precision listed wins."""
    table: dict[str, dict[str, contracts.ReferenceProfile]] = {}
    for p in refs.profiles:
        if p.sequence_length == sequence_length:
            table.setdefault(p.shape, {}).setdefault(p.processor, p)
    return table


def _check_mixed_arguments(
    n: int, traffic: str, total: float, zipf_s: float, processors: Sequence[str] | None, slo_fraction: float
) -> None:
    if n < 1:
        raise ValueError(f"a mixed catalogue needs at least 1 model, got {n}")
    if traffic not in TRAFFIC_KINDS:
        raise ValueError(f"traffic must be one of {', '.join(TRAFFIC_KINDS)}, got {traffic!r}")
    if not total > 0 or not math.isfinite(total):
        raise ValueError(f"total_rps must be a finite number > 0, got {total}")
    if not zipf_s > 0 or not math.isfinite(zipf_s):
        raise ValueError(f"zipf_s must be a finite number > 0, got {zipf_s}")
    if not 0.0 <= slo_fraction <= 1.0:
        raise ValueError(f"slo_fraction must be between 0 and 1, got {slo_fraction}")
    unknown = sorted(set(processors or ()) - set(contracts.PROCESSORS))
    if unknown:
        raise ValueError(f"unknown processor(s) {', '.join(unknown)}: use {', '.join(contracts.PROCESSORS)}")
    if processors is not None and not processors:
        raise ValueError("processors is empty: name at least one of " + ", ".join(contracts.PROCESSORS))


def _shape_mixture(
    table: Mapping[str, Mapping[str, Any]],
    shapes: Sequence[str] | Mapping[str, float] | None,
    processors: Sequence[str] | None,
) -> tuple[list[str], np.ndarray]:
    """The shapes to draw from and their probabilities, keeping only shapes with a wanted profile."""
    if shapes is None:
        wanted = {s: SHAPE_WEIGHTS.get(s, 1.0) for s in table}
    elif isinstance(shapes, Mapping):
        wanted = {s: float(w) for s, w in shapes.items()}
    else:
        wanted = {s: SHAPE_WEIGHTS.get(s, 1.0) for s in shapes}
    unknown = sorted(set(wanted) - set(table))
    if unknown:
        raise ValueError(
            f"no reference profiles for shape(s) {', '.join(unknown)}; known: {', '.join(sorted(table))}"
        )
    bad = {s: w for s, w in wanted.items() if not (w >= 0 and math.isfinite(w))}
    if bad:
        raise ValueError(f"shape weights must be finite and >= 0, got {bad}")
    usable = {s: w for s, w in wanted.items() if w > 0 and _processors_for(table[s], processors)}
    if not usable:
        raise ValueError(
            "no shape has a reference profile for the processors asked for "
            f"({', '.join(processors or contracts.PROCESSORS)})"
        )
    names = list(usable)
    weights = np.array([usable[s] for s in names], dtype=float)
    return names, weights / weights.sum()


def _processors_for(by_processor: Mapping[str, Any], processors: Sequence[str] | None) -> list[str]:
    """The shape's processors, in the contract's order, narrowed to `processors` when given."""
    return [p for p in contracts.PROCESSORS if p in by_processor and (processors is None or p in processors)]


def _traffic(rng: np.random.Generator, n: int, traffic: str, total: float, zipf_s: float) -> list[float]:
    if traffic == "uniform":
        return _rounded(np.full(n, total / n), total)
    # Zipf by rank: the r-th most popular model gets rps proportional to 1 / r^s; which model holds
    # which rank is a seeded shuffle. Nothing is capped: at large n the hottest models need many
    # devices' worth of capacity, which is what replicas > 1 exists for.
    weights = np.arange(1, n + 1, dtype=float) ** -zipf_s
    by_rank = weights / weights.sum() * total
    rps = np.empty(n)
    rps[rng.permutation(n)] = by_rank
    return _rounded(rps, total)


def _rounded(values: np.ndarray, total: float) -> list[float]:
    """Round to DECIMALS, then give the rounding residue to the largest value so the sum is kept."""
    out = [round(float(v), DECIMALS) for v in values]
    hot = int(np.argmax(values))
    out[hot] = 0.0
    out[hot] = round(total - math.fsum(out), 9)
    return out


def _draw_jitter(rng: np.random.Generator, n: int) -> dict[str, list]:
    """All random factors for all models, drawn at once (fixed shapes, so the stream is stable)."""
    k = len(contracts.PROCESSORS)
    # .tolist(): plain Python floats, which serialise as-is and index far faster than numpy scalars.
    return {
        "memory": rng.uniform(1 - MODEL_MEMORY_JITTER, 1 + MODEL_MEMORY_JITTER, n).tolist(),
        "latency": rng.uniform(1 - MODEL_LATENCY_JITTER, 1 + MODEL_LATENCY_JITTER, n).tolist(),
        "per_processor": rng.uniform(1 - PROCESSOR_JITTER, 1 + PROCESSOR_JITTER, (n, k, 3)).tolist(),
        "p90": rng.uniform(1.0, 1.0 + P90_SPREAD, (n, k)).tolist(),
    }


def _model_profiles(
    by_processor: Mapping[str, contracts.ReferenceProfile],
    processors: Sequence[str] | None,
    jitter: Mapping[str, list],
    i: int,
) -> dict[str, dict[str, float]]:
    profiles = {}
    for proc in _processors_for(by_processor, processors):
        k = contracts.PROCESSORS.index(proc)
        ref = by_processor[proc]
        dev_f, host_f, lat_f = jitter["per_processor"][i][k]
        mem = jitter["memory"][i]
        host = round(ref.host_memory_mib * mem * host_f, DECIMALS)
        # A cpu slice's memory is host memory: both fields carry the same number.
        device = host if proc == "cpu" else round(ref.device_memory_mib * mem * dev_f, DECIMALS)
        p50 = round(ref.latency_ms * jitter["latency"][i] * lat_f, DECIMALS)
        spread = ref.p90_ms / ref.latency_ms * jitter["p90"][i][k]
        p90 = max(round(p50 * spread, DECIMALS), p50)  # a p90 is never below its p50
        profiles[proc] = {
            "device_memory_mib": device,
            "host_memory_mib": host,
            "latency_ms": p50,
            "latency_p90_ms": p90,
        }
    return profiles


def _mixed_model(i: int, width: int, shape: str, profiles: Mapping[str, Mapping[str, float]], rps: float) -> dict:
    return {
        "id": f"{_dns_stem(shape)}-{i:0{width}d}",
        "source": f"random:{shape}@{i}",
        "task": SHAPE_TASKS.get(shape, DEFAULT_TASK),
        "sequence_length": SEQUENCE_LENGTH,
        "batch_size": BATCH_SIZE,
        "precision": _model_precision(shape, profiles),
        "rps": rps,
    }


_PRECISION_BY_PROCESSOR = {"cpu": "fp32", "gpu": "fp16", "inf1": "bf16", "inf2": "bf16"}


def _model_precision(shape: str, profiles: Mapping[str, Any]) -> str:
    # One processor: its reference precision. Several: the checkpoint's fp32, which each
    # processor's tracing casts as its profile says.
    kinds = {_PRECISION_BY_PROCESSOR[p] for p in profiles}
    return kinds.pop() if len(kinds) == 1 else "fp32"


def _dns_stem(shape: str) -> str:
    """A shape name as the start of a DNS label (ids add '-NNNNNN', so keep it to 50 chars)."""
    stem = re.sub(r"[^a-z0-9-]+", "-", shape.lower()).strip("-")[:50].strip("-")
    return stem or "model"


def _slo(profiles: Mapping[str, Mapping[str, float]], u: float) -> float:
    """An SLO between 2x the fastest processor's p90 and 1.5x the slowest's, log-uniform.

    The low end leaves the fastest processor room for queueing; the high end admits every
    processor, so some models may go anywhere and the rest only to the faster processors.
    """
    p90s = [p["latency_p90_ms"] for p in profiles.values()]
    lo = 2.0 * min(p90s)
    hi = max(1.5 * max(p90s), 1.5 * lo)
    return round(math.exp(math.log(lo) + u * (math.log(hi) - math.log(lo))), DECIMALS)


BUDGET_HEADROOM = 1.5  # a budget is met comfortably at 1.5 x the fastest p90: the pod can run warm


def _budget(profiles: Mapping[str, Mapping[str, float]], budgets: Sequence[float], u: float) -> float:
    """One of `budgets`, drawn evenly, raised to the smallest listed one at least BUDGET_HEADROOM x
    the model's fastest p90 (the largest listed if none is): a catalogue a user would write, where
    strict budgets go to models that can meet them."""
    ordered = sorted(budgets)
    drawn = ordered[min(int(u * len(ordered)), len(ordered) - 1)]
    need = BUDGET_HEADROOM * min(p["latency_p90_ms"] for p in profiles.values())
    return next((b for b in ordered if b >= drawn and b >= need), ordered[-1])


def _make_profiles_unique(models: list[dict[str, Any]]) -> None:
    """Nudge the rare exact repeat (after rounding) by 0.001 MiB until no two profiles are equal,
    on the same processor or across processors."""
    seen: set[tuple] = set()
    for model in models:
        for proc, prof in model["profiles"].items():
            while (key := tuple(prof.values())) in seen:
                prof["device_memory_mib"] = round(prof["device_memory_mib"] + 0.001, DECIMALS)
                if proc == "cpu":
                    prof["host_memory_mib"] = prof["device_memory_mib"]
            seen.add(key)


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


def write_catalogue(data: dict[str, Any], path: Path | str) -> Path:
    """Validate `data` as a ModelCatalogue, then write it atomically: JSON for .json, else YAML.

    Raises contracts.ContractError (and writes nothing) when the catalogue breaks its contract.
    JSON is the format to use for very large catalogues (100,000 models): it loads much faster.
    """
    p = Path(path)
    contracts.parse(contracts.ModelCatalogue, data, p.name)
    text = _json_text(data) if p.suffix == ".json" else _yaml_text(data)
    return contracts.write_atomic(p, text)


def _json_text(data: Mapping[str, Any]) -> str:
    # One model per line: compact, yet a diff of two catalogues still shows which models changed.
    lines = ",\n".join(json.dumps(m, separators=(",", ":")) for m in data["models"])
    return '{"models": [\n' + lines + "\n]}\n"


def _yaml_text(data: Mapping[str, Any]) -> str:
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # the C dumper is far faster
    # Flow style for the innermost mappings: each profile stays on one line.
    return yaml.dump(data, Dumper=dumper, sort_keys=False, default_flow_style=None, width=200)


# ---------------------------------------------------------------------------------------------
# Command line: `python -m packing generate`
# ---------------------------------------------------------------------------------------------

_MIXED_ONLY = ("seed", "traffic", "total_rps", "zipf_s", "processors", "slo_fraction", "slo", "reference_profiles")

_EPILOG = """\
examples:
  python -m packing generate --kind seed --out config/models.seed.yaml
  python -m packing generate --kind mixed --models 100000 --seed 7 --out catalogue.json
  python -m packing generate --kind mixed --models 3040 --processors inf1,gpu \\
      --slo-fraction 0.2 --traffic uniform --out mixed.yaml
  python -m packing generate --kind mixed --models 3040 --seed 7 --slo 50,100,250 --out tiered.yaml
"""


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the `generate` sub-command; `args.func(args)` writes the catalogue and returns 0."""
    parser = subparsers.add_parser(
        "generate",
        help="write a model catalogue: the seed scenario or a seeded mixture of shapes",
        description=(
            "Write a model catalogue (the models.yaml contract) for planning.\n"
            "  seed:  the reference design: N bert-base-cased models at 2.05 rps, inf1 profile only.\n"
            "  mixed: shapes drawn from the reference profiles, each model's profiles jittered by a\n"
            "         few percent, traffic spread by Zipf or evenly, optional p90 latency SLOs.\n"
            "The same arguments always write the same file."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--kind", choices=("seed", "mixed"), default="seed",
                        help="seed scenario or mixed catalogue (default: seed)")
    parser.add_argument("--models", type=positive(int), default=SEED_MODELS, metavar="N",
                        help=f"number of models (default: {SEED_MODELS})")
    parser.add_argument("--seed", type=int, default=None,
                        help="random seed of a mixed catalogue (default: 0)")
    parser.add_argument("--traffic", choices=TRAFFIC_KINDS, default=None,
                        help="zipf: rps ~ 1/rank^s, shuffled over models; uniform: the same for all "
                             "(default: zipf)")
    parser.add_argument("--total-rps", type=positive(float), default=None, metavar="RPS",
                        help="requests per second over all models (default: 2.05 x N)")
    parser.add_argument("--zipf-s", type=positive(float), default=None, metavar="S",
                        help="Zipf exponent; larger is more skewed (default: 1.1)")
    parser.add_argument("--processors", type=_processor_list, default=None, metavar="LIST",
                        help="comma-separated profiles to give each model, of "
                             f"{','.join(contracts.PROCESSORS)} (default: all its shape has)")
    parser.add_argument("--slo-fraction", type=fraction(0.0, 1.0, open_lo=False), default=None, metavar="F",
                        help="fraction of models, 0..1, that get a slo_p90_ms (default: 0, or 1 with --slo)")
    parser.add_argument("--slo", type=_budget_list, default=None, metavar="MS[,MS...]",
                        help="p90 budgets in ms to draw each model's SLO from, evenly (one value: the same "
                             "budget for all), raised where a model's fastest processor cannot meet it")
    parser.add_argument("--reference-profiles", type=Path, default=None, metavar="PATH",
                        help=f"reference profiles to draw shapes from (default: {_shown(DEFAULT_REFERENCE)})")
    parser.add_argument("--out", type=Path, required=True, metavar="PATH",
                        help="catalogue to write: .json (best for large catalogues) or .yaml")
    parser.set_defaults(func=functools.partial(_run, parser=parser))
    return parser


def _run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    try:
        data = _catalogue_from_args(args, parser)
        path = write_catalogue(data, args.out)
    except (ValueError, OSError) as exc:  # ContractError is a ValueError
        parser.error(str(exc))
    total = math.fsum(m["rps"] for m in data["models"])
    print(f"wrote {len(data['models'])} models ({total:,.3f} rps in all) to {path}")
    return 0


def _catalogue_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> dict[str, Any]:
    if args.kind == "seed":
        given = [name for name in _MIXED_ONLY if getattr(args, name) is not None]
        if given:
            flags = ", ".join("--" + name.replace("_", "-") for name in given)
            parser.error(f"{flags} only appl{'ies' if len(given) == 1 else 'y'} to --kind mixed")
        return seed_scenario(args.models)
    return mixed_catalogue(
        args.models,
        seed=0 if args.seed is None else args.seed,
        traffic=args.traffic or "zipf",
        total_rps=args.total_rps,
        zipf_s=1.1 if args.zipf_s is None else args.zipf_s,
        processors=args.processors,
        slo_fraction=(args.slo_fraction if args.slo_fraction is not None else (1.0 if args.slo else 0.0)),
        reference=args.reference_profiles or DEFAULT_REFERENCE,
        slo_budgets=args.slo,
    )




def _budget_list(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or any(not math.isfinite(v) or v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"must be comma-separated positive milliseconds, e.g. 50,100,250; got {text!r}")
    return sorted(set(values))


def _processor_list(text: str) -> list[str]:
    names = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [p for p in names if p not in contracts.PROCESSORS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"must be a comma-separated list of {', '.join(contracts.PROCESSORS)}, got {text!r}"
        )
    return list(dict.fromkeys(names))  # drop repeats, keep order


def _shown(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
