"""What the serving and latency benchmarks share about running things on this machine: their progress lines, the
machine's load, and the processes they start (the pids under one, their CPU time, stopping them). Standard library
and psutil only, so the latency benchmark's child processes stay light."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Sequence

import psutil


def log(message: str) -> None:
    """A progress line on stderr (stdout carries the results)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def proc_loadavg() -> str:
    """/proc/loadavg as it reads (load over 1, 5 and 15 minutes, runnable/all tasks, last pid): how busy the machine
    was, for the results; the three load figures alone where there is no /proc."""
    try:
        return Path("/proc/loadavg").read_text().strip()
    except OSError:
        return " ".join(str(round(x, 2)) for x in os.getloadavg())


def all_pids(pids: Sequence[int]) -> List[int]:
    """Each pid followed by its descendants', skipping processes already gone."""
    out: List[int] = []
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            p = psutil.Process(pid)
            out += [pid] + [c.pid for c in p.children(recursive=True)]
    return out


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU seconds the processes have used so far (a process already gone counts nothing)."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += sum(psutil.Process(pid).cpu_times()[:2])
    return total


def stop_process(proc: subprocess.Popen, grace_s: float = 30.0) -> None:
    """SIGTERM (a model server drains and exits), then SIGKILL once `grace_s` has passed."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def stop_process_group(proc: subprocess.Popen, grace_s: float = 20.0) -> None:
    """The same for a process started with start_new_session=True and everything in its group (a peer server's
    frontend and its worker processes)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=grace_s)
        except (subprocess.TimeoutExpired, ProcessLookupError):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
