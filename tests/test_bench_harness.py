"""The benchmarks' process helpers (bench/harness.py) against real processes: the pids under a process, their CPU
time, and stopping a server that drains, one that ignores SIGTERM, and a process group."""
from __future__ import annotations

import subprocess
import sys
import time

import psutil

from bench.harness import all_pids, cpu_seconds, proc_loadavg, stop_process, stop_process_group

PY = sys.executable
# A parent that starts a busy child and reports the child's pid, then waits.
PARENT = ("import subprocess, sys, time; "
          "c = subprocess.Popen([sys.executable, '-c', 'while True: pass']); print(c.pid, flush=True); time.sleep(60)")
IGNORES_TERM = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(60)"


def _until(check, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_all_pids_and_cpu_seconds_cover_the_children() -> None:
    proc = subprocess.Popen([PY, "-c", PARENT], stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        child = int(proc.stdout.readline())
        pids = all_pids([proc.pid, 999_999_999])  # a pid that does not exist is skipped
        assert pids == [proc.pid, child]
        before = cpu_seconds(pids)
        _until(lambda: cpu_seconds(pids) - before > 0.2)  # the busy child's time counts
        assert cpu_seconds([proc.pid]) < cpu_seconds(pids)
    finally:
        stop_process_group(proc, grace_s=5)
    assert proc.poll() is not None
    _until(lambda: _gone(child))


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_stop_process_terminates_then_kills_after_the_grace() -> None:
    polite = subprocess.Popen([PY, "-c", "import time; time.sleep(60)"])
    stop_process(polite, grace_s=10)
    assert polite.returncode == -15  # SIGTERM was enough
    stubborn = subprocess.Popen([PY, "-c", IGNORES_TERM], stdout=subprocess.PIPE, text=True)
    assert stubborn.stdout.readline().strip() == "up"  # its handler is set before we signal
    t0 = time.monotonic()
    stop_process(stubborn, grace_s=0.5)
    assert stubborn.returncode == -9 and time.monotonic() - t0 >= 0.5
    stop_process(stubborn)  # already stopped: nothing to do


def test_stop_process_group_stops_the_children_too() -> None:
    proc = subprocess.Popen([PY, "-c", PARENT], stdout=subprocess.PIPE, text=True, start_new_session=True)
    child = int(proc.stdout.readline())
    stop_process_group(proc, grace_s=5)
    assert proc.returncode == -15
    _until(lambda: _gone(child))


def test_proc_loadavg_reads_three_load_figures() -> None:
    fields = proc_loadavg().split()
    assert len(fields) >= 3 and all(float(x) >= 0 for x in fields[:3])
