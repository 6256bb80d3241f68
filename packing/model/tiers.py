"""SLO tiers: the latency budget as a per-pod utilisation cap that column generation can price.

A pod's P90 depends on what it holds (packing/model/latency.py), which no linear pattern can state.
Tiers make it a fixed number per pattern: a pod of tier (sigma, L) on instance type t holds only
models whose SLO is at least sigma and whose service p90 on t is at most L, and its utilisation
is capped at the largest value at which *any* such mix predicts a P90 within sigma
(`latency.tier_utilisation_cap`, a bound over the tier's worst members). A tier is then just
another node shape with its own cap and its own eligible models, so every solver, baseline and
re-planner honours the budget through the caps it already reads.

- sigma runs over the catalogue's distinct SLOs (bucketed down when there are many), plus no SLO;
- L runs over a geometric ladder of the members' service p90s, kept only where a lower ceiling
  buys a clearly higher cap (a fast strict model should not wait behind a slow lax one);
- a laxer SLO level whose models the stricter level's pods already admit at nearly the same cap
  gets no tiers of its own: fewer shapes keep column generation's rounds many;
- a model may go to a tier only where it fits the tier's rules; it is refused on a processor
  only where no tier has room for it, i.e. its own p90 (with the server's work) exceeds its SLO.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Dict, List, Sequence, Tuple

import numpy as np

from packing.model.latency import ServiceTime, TierBound, tier_utilisation_cap
from packing.model.resources import NodeShape

MAX_SLO_TIERS = 6  # more distinct SLOs than this are rounded down onto a geometric ladder
SLO_LADDER_RATIO = 1.25
CEILING_RATIO = 1.6  # service-p90 ladder of the ceilings
CEILING_GAIN = 1.25  # a lower ceiling is kept only when its cap is this much higher
LEVEL_GAIN = 1.1  # a laxer SLO level gets tiers of its own only when they allow this much more load
TOLERANCE = 1e-9


def slo_levels(slo: np.ndarray) -> np.ndarray:
    """Each model's SLO as its tier sees it (never above the real one): the distinct SLOs, or,
    past MAX_SLO_TIERS of them, each rounded down onto a geometric ladder from the strictest."""
    finite = np.isfinite(slo)
    distinct = np.unique(slo[finite])
    if distinct.size <= MAX_SLO_TIERS:
        return slo.copy()
    base = float(distinct[0])
    steps = np.floor(np.log(slo[finite] / base) / math.log(SLO_LADDER_RATIO) + TOLERANCE)
    out = slo.copy()
    out[finite] = np.minimum(base * SLO_LADDER_RATIO ** steps, slo[finite])
    return out


def service_of(shape: NodeShape, p50_ms: float, p90_ms: float) -> Tuple[ServiceTime, float]:
    """A model's service time on a pod of `shape`, and the time added after its queue: the server's
    own work runs on a cpu slice's cores, beside the device on an accelerator's host."""
    if shape.processor == "cpu":
        return ServiceTime(p50_ms, p90_ms, shape.request_cpu_ms), 0.0
    return ServiceTime(p50_ms, p90_ms), shape.request_cpu_ms


def _ceilings(services: Sequence[Tuple[ServiceTime, float]], cap_of) -> List[Tuple[float, float]]:
    """(ceiling, cap) pairs, highest ceiling first, each kept only where it raises the cap enough."""
    p90s = sorted({s.p90_ms + s.extra_ms + after for s, after in services})
    ladder: List[float] = []
    for v in reversed(p90s):
        if not ladder or v * CEILING_RATIO <= ladder[-1]:
            ladder.append(v)
    kept: List[Tuple[float, float]] = []
    for ceiling in ladder:
        cap = cap_of(ceiling)
        if cap <= 0:
            continue
        if not kept or cap >= kept[-1][1] * CEILING_GAIN:
            kept.append((ceiling, cap))
    return kept


def tiered_shapes(shapes: Sequence[NodeShape], slo: np.ndarray, p50: Dict[str, np.ndarray],
                  p90: Dict[str, np.ndarray], has: Dict[str, np.ndarray],
                  max_utilisation: float) -> Tuple[List[NodeShape], List[int]]:
    """Each shape once per tier its models need, and for each new shape the index of its base.

    `slo` is per model (inf: none, already through `slo_levels`); `p50`, `p90`, `has` per processor
    and model. Without any SLO this returns the shapes as they are."""
    if not np.isfinite(slo).any():
        return list(shapes), list(range(len(shapes)))
    levels = sorted(set(np.unique(slo[np.isfinite(slo)]).tolist())) + [math.inf]
    out: List[NodeShape] = []
    base_of: List[int] = []
    cache: Dict[tuple, List[Tuple[float, float]]] = {}

    def tiers_at(shape: NodeShape, sigma: float, members: np.ndarray) -> List[Tuple[float, float]]:
        if math.isinf(sigma):
            return [(math.inf, max_utilisation)]
        proc = shape.processor
        pairs = sorted(set(zip(p50[proc][members].tolist(), p90[proc][members].tolist(), strict=True)))
        key = (proc, shape.cores_per_device, shape.request_cpu_ms, sigma, tuple(pairs))
        if key not in cache:
            services = [service_of(shape, a, q) for a, q in pairs]
            # The members as arrays, so that each ceiling's bound is a mask, not a loop.
            extra = np.array([s.extra_ms for s, _ in services])
            s50 = np.array([s.p50_ms for s, _ in services])
            sigma_of = np.array([s.sigma for s, _ in services])
            after = np.array([a for _, a in services])
            reach = np.array([s.p90_ms for s, _ in services]) + extra + after

            def cap_of(ceiling: float, cores=shape.cores_per_device) -> float:
                inside = reach <= ceiling * (1 + TOLERANCE)
                if not inside.any():
                    return 0.0
                bound = TierBound.of_arrays(extra[inside], s50[inside], sigma_of[inside], after[inside])
                return tier_utilisation_cap(cores, bound, sigma, max_utilisation)

            cache[key] = _ceilings(services, cap_of)
        return cache[key]

    for b, shape in enumerate(shapes):
        proc = shape.processor
        kept: List[List[Tuple[float, float]]] = []
        for sigma in levels:
            members = has[proc] & (slo >= sigma * (1 - TOLERANCE))
            if not members.any():
                continue
            tiers = tiers_at(shape, sigma, members)
            if not tiers:
                continue
            if kept and _merges_into(kept[-1], tiers, p90[proc][has[proc] & (slo == sigma)] + shape.request_cpu_ms):
                continue  # this level's models ride in the stricter tier's pods at nearly the same cap
            kept.append(tiers)
            for ceiling, cap in tiers:
                out.append(dataclasses.replace(shape, utilisation_cap=cap, slo_ms=sigma, service_ceiling_ms=ceiling))
                base_of.append(b)
    return out, base_of


def _merges_into(stricter: List[Tuple[float, float]], laxer: List[Tuple[float, float]], own_p90: np.ndarray) -> bool:
    """A laxer SLO level needs no tiers of its own where the stricter level's pods admit all of its
    models (their service p90 within its highest ceiling) at a cap within LEVEL_GAIN of its own."""
    top = max(c for c, _ in stricter)
    return bool((own_p90 <= top * (1 + TOLERANCE)).all()) and max(u for _, u in laxer) < LEVEL_GAIN * max(u for _, u in stricter)


def admitted(shape: NodeShape, slo: np.ndarray, service_p90: np.ndarray) -> np.ndarray:
    """Which models a pod of `shape`'s tier may hold (service_p90: p90 + the server's work)."""
    return (slo >= shape.slo_ms * (1 - TOLERANCE)) & (service_p90 <= shape.service_ceiling_ms * (1 + TOLERANCE))
