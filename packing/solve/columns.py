"""Server patterns, the columns of the configuration master (packing/solve/master.py)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import numpy as np

from packing.model.classes import Classes
from packing.model.resources import NodeShape


@dataclass(frozen=True)
class Pattern:
    """A server on one shape: `counts[i]` models of class i in each of its `replicas` pods."""

    shape: int
    counts: Tuple[Tuple[int, int], ...]  # sorted (class, count)
    replicas: int
    host_per_pod: float


def pattern_of(t: int, shape: NodeShape, cls: Classes, items: np.ndarray, counts: np.ndarray, replicas: int) -> Pattern:
    """A shared server on shape t holding counts[k] models of class items[k] in each pod, its
    host memory at the classes' largest members."""
    nz = counts > 0
    pairs = tuple(sorted((int(i), int(a)) for i, a in zip(items[nz], counts[nz], strict=True)))
    host = shape.pod_base_mib + float(sum(cls.h_hi[i, t] * a for i, a in pairs))
    return Pattern(t, pairs, replicas, host)


def own_server(i: int, t: int, shape: NodeShape, cls: Classes) -> Pattern:
    """A hot model's server of its own on shape t, with the replicas its load needs there."""
    return Pattern(t, ((i, 1),), int(cls.replicas[i, t]), shape.pod_base_mib + float(cls.h_hi[i, t]))
