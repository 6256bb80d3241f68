"""Server settings: from command-line flags, else the pod contract's environment, else defaults.

Pod contract (ARCHITECTURE.md): SERVER_ID, MODEL_IDS (comma-separated), STORE_URI, MEMORY_BUDGET_MIB, PORT (8080),
MODEL_CACHE_DIR. Tuning: PROCESSOR, MAX_BATCH_SIZE, MAX_DELAY_MS, QUEUE_SIZE, REQUEST_TIMEOUT_MS, MAX_BODY_BYTES,
WORKERS, GRACE_SECONDS, STORE_RETRY_MAX_SECONDS, LOG_LEVEL, ACCESS_LOG, HOST.
"""
from __future__ import annotations

import argparse
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, List, Mapping, Optional, Tuple

from contracts import PROCESSORS, check_dns_label

DEFAULT_PORT = 8080
# Inference streams per device when WORKERS is not set: cpu one per core (each with one intra-op thread);
# a GPU overlaps a couple of streams; an inf1 chip has 4 NeuronCores, an inf2 chip 2.
DEVICE_WORKERS = {"gpu": 2, "inf1": 4, "inf2": 2}
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the flag and the environment variable."""


def available_cpus() -> int:
    """Cores this process may use: its CPU affinity, capped by a cgroup CPU quota (a pod's CPU limit)."""
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        count = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    if quota is not None:
        count = min(count, max(1, int(math.floor(quota))))
    return max(1, count)


def _cgroup_cpu_quota() -> Optional[float]:
    try:  # cgroup v2: "max 100000" or "200000 100000"
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:  # cgroup v1
        quota_us = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period_us = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return None if quota_us <= 0 else quota_us / period_us
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class Settings:
    """Everything the server needs; constructing one checks it (ConfigError)."""

    model_ids: Tuple[str, ...]
    store_uri: str
    server_id: str = "local"
    host: str = "0.0.0.0"
    port: int = DEFAULT_PORT
    memory_budget_mib: Optional[float] = None  # host memory for the whole process; None or 0: no limit
    server_base_mib: Optional[float] = None  # what the process takes before models; None: its RSS when loading starts
    model_cache_dir: Path = Path(tempfile.gettempdir()) / "modelfleet-models"
    processor: str = "cpu"
    max_batch_size: int = 8
    max_delay_ms: float = 0.0  # 0: a batch runs as soon as a worker is free (batches still form while all are busy)
    queue_size: int = 64  # rows (texts or tensor rows) waiting per model
    request_timeout_ms: float = 30000.0
    max_body_bytes: int = 4 * 1024 * 1024
    workers: int = 0  # inference threads; 0: one per core on cpu (DEVICE_WORKERS otherwise)
    grace_seconds: float = 25.0
    store_retry_max_s: float = 30.0
    log_level: str = "info"
    access_log: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.model_ids, str):
            object.__setattr__(self, "model_ids", split_ids(self.model_ids))
        else:
            object.__setattr__(self, "model_ids", tuple(self.model_ids))
        object.__setattr__(self, "model_cache_dir", Path(self.model_cache_dir))
        if self.memory_budget_mib == 0:
            object.__setattr__(self, "memory_budget_mib", None)
        if self.server_base_mib is not None and self.server_base_mib < 0:
            raise ConfigError(f"--server-base-mib / SERVER_BASE_MIB must be 0 or more MiB, got {self.server_base_mib}")
        if not self.workers:
            object.__setattr__(self, "workers", available_cpus() if self.processor == "cpu" else DEVICE_WORKERS.get(self.processor, 1))
        self.check()

    def check(self) -> None:
        if not self.model_ids:
            raise ConfigError("no models to serve: give --models id1,id2 or set MODEL_IDS")
        seen = set()
        for model_id in self.model_ids:
            try:
                check_dns_label(model_id)
            except ValueError as exc:
                raise ConfigError(f"--models / MODEL_IDS: model id {exc}") from None
            if model_id in seen:
                raise ConfigError(f"--models / MODEL_IDS lists {model_id!r} twice: list each model once")
            seen.add(model_id)
        if not self.store_uri.strip():
            raise ConfigError("no store: give --store URI or set STORE_URI (file://DIR, a folder, or s3://bucket/prefix)")
        if self.processor not in PROCESSORS:
            raise ConfigError(f"--processor / PROCESSOR must be one of {', '.join(PROCESSORS)}, got {self.processor!r}")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"--port / PORT must be 0-65535, got {self.port}")
        if self.memory_budget_mib is not None and self.memory_budget_mib < 0:
            raise ConfigError(f"--memory-budget-mib / MEMORY_BUDGET_MIB must be 0 or more MiB, got {self.memory_budget_mib}")
        for name in ("max_batch_size", "queue_size", "max_body_bytes", "workers"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{flag_of(name)} / {env_of(name)} must be 1 or more, got {getattr(self, name)}")
        for name in ("request_timeout_ms", "grace_seconds", "store_retry_max_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{flag_of(name)} / {env_of(name)} must be a positive number, got {getattr(self, name)}")
        if self.max_delay_ms < 0:
            raise ConfigError(f"--max-delay-ms / MAX_DELAY_MS must be 0 or more, got {self.max_delay_ms}")
        if self.queue_size < self.max_batch_size:
            raise ConfigError(
                f"--queue-size / QUEUE_SIZE ({self.queue_size}) must be at least --max-batch-size / MAX_BATCH_SIZE "
                f"({self.max_batch_size}): a full batch must fit in the queue"
            )
        if self.log_level not in LOG_LEVELS:
            raise ConfigError(f"--log-level / LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, got {self.log_level!r}")

    @property
    def memory_budget_text(self) -> str:
        return "unlimited" if self.memory_budget_mib is None else f"{self.memory_budget_mib:g} MiB"

    @classmethod
    def from_sources(cls, args: Optional[argparse.Namespace] = None, environ: Optional[Mapping[str, str]] = None) -> Settings:
        """Flags (non-None attributes of `args`) win over the environment, which wins over the defaults."""
        environ = os.environ if environ is None else environ
        values = {}
        for option in OPTIONS:
            raw = getattr(args, option.name, None) if args is not None else None
            source = option.flag
            if raw is None and environ.get(option.env, "").strip() != "":
                raw, source = environ[option.env], option.env
            if raw is None:
                continue
            try:
                values[option.name] = option.parse(raw) if isinstance(raw, str) else raw
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"{source} {option.expects}, got {raw!r}" + (f" ({exc})" if str(exc) else "")) from None
        if "model_ids" not in values:
            raise ConfigError("no models to serve: give --models id1,id2 or set MODEL_IDS")
        if "store_uri" not in values:
            raise ConfigError("no store: give --store URI or set STORE_URI (file://DIR, a folder, or s3://bucket/prefix)")
        return cls(**values)


def split_ids(text: str) -> Tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _budget(text: str) -> Optional[float]:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("")
    return None if value == 0 else value


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("")


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("")
    return value


@dataclass(frozen=True)
class Option:
    name: str
    env: str
    parse: Callable[[str], Any]
    expects: str
    help: str

    flag: str = ""

    def __post_init__(self) -> None:
        if not self.flag:
            object.__setattr__(self, "flag", "--" + self.name.replace("_", "-"))


OPTIONS: List[Option] = [
    Option("model_ids", "MODEL_IDS", split_ids, "must be comma-separated model ids", "models to serve, comma-separated", "--models"),
    Option("store_uri", "STORE_URI", str, "must be a store URI", "artifact store: file://DIR, a folder, or s3://bucket/prefix", "--store"),
    Option("server_id", "SERVER_ID", str, "must be a server id", "this server's id (for logs and /v2)"),
    Option("host", "HOST", str, "must be an address", "address to bind (default 0.0.0.0)"),
    Option("port", "PORT", int, "must be a whole number (a TCP port)", f"port (default {DEFAULT_PORT})"),
    Option("memory_budget_mib", "MEMORY_BUDGET_MIB", _budget, "must be a number of MiB",
           "host memory for the process (the plan's memory_budget_mib: server base + its models' host_memory_mib); "
           "0 or unset: no limit"),
    Option("server_base_mib", "SERVER_BASE_MIB", _float, "must be a number of MiB",
           "the process's own share of the budget (default: its RSS when model loading starts)"),
    Option("model_cache_dir", "MODEL_CACHE_DIR", Path, "must be a folder", "where fetched bundles go"),
    Option("processor", "PROCESSOR", str, "must be a processor", f"which entries to serve: {', '.join(PROCESSORS)} (default cpu)"),
    Option("max_batch_size", "MAX_BATCH_SIZE", int, "must be a whole number", "most rows per forward (default 8)"),
    Option("max_delay_ms", "MAX_DELAY_MS", _float, "must be a number of ms",
           "longest wait for a batch to fill once a worker is free (default 0; batches form while workers are busy)"),
    Option("queue_size", "QUEUE_SIZE", int, "must be a whole number", "rows that may wait per model before 429 (default 64)"),
    Option("request_timeout_ms", "REQUEST_TIMEOUT_MS", _float, "must be a number of ms", "deadline per request (default 30000)"),
    Option("max_body_bytes", "MAX_BODY_BYTES", int, "must be a whole number of bytes", "largest request body (default 4 MiB)"),
    Option("workers", "WORKERS", int, "must be a whole number", "inference threads (default: the cores available on cpu)"),
    Option("grace_seconds", "GRACE_SECONDS", _float, "must be a number of seconds", "drain time after SIGTERM (default 25)"),
    Option("store_retry_max_s", "STORE_RETRY_MAX_SECONDS", _float, "must be a number of seconds",
           "longest wait between retries of an unreachable store (default 30)", "--store-retry-max-seconds"),
    Option("log_level", "LOG_LEVEL", lambda s: s.strip().lower(), "must be a log level", f"one of {', '.join(LOG_LEVELS)}"),
    Option("access_log", "ACCESS_LOG", _bool, "must be true or false", "log every request (default false)"),
]
_BY_NAME = {o.name: o for o in OPTIONS}


def flag_of(name: str) -> str:
    return _BY_NAME[name].flag


def env_of(name: str) -> str:
    return _BY_NAME[name].env


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The serve flags; each defaults to its environment variable, then to the built-in default."""
    for option in OPTIONS:
        parser.add_argument(option.flag, dest=option.name, default=None, metavar=option.env,
                            help=f"{option.help} [env {option.env}]")
