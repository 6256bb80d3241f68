"""What each pod of a plan carries, for the plan's picture and table (no solver logic here)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple


@dataclass(frozen=True)
class ModelLoad:
    model_id: str
    memory_mib: float  # device memory (host memory on a cpu slice) the model takes in each pod
    utilisation: float  # per pod: rps x latency / 1000 / cores_per_device / replicas


@dataclass(frozen=True)
class PodLoad:
    """One server's pod: its models and the caps it was packed against."""

    server_id: str
    instance_type: str
    processor: str
    replicas: int
    memory_cap_mib: float
    utilisation_cap: float
    models: Tuple[ModelLoad, ...]

    @property
    def memory_mib(self) -> float:
        return sum(m.memory_mib for m in self.models)

    @property
    def utilisation(self) -> float:
        return sum(m.utilisation for m in self.models)
