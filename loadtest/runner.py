"""Driving the targets: one request at a time (seq, rnd, smoke), a closed loop of N clients (bmk), and an open
loop of scheduled arrivals (open). Each returns its Samples; the maths is in loadtest.stats.

Every run is bounded: by a number of requests and by a deadline. Timestamps come from one monotonic clock
(client.now).
"""
from __future__ import annotations

import asyncio
import json
import random
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from loadtest.client import Client, classify, now
from loadtest.stats import Arrival, Sample
from loadtest.targets import Target

DEFAULT_TEXT = "The quick brown fox jumps over the lazy dog while the load test measures how fast it is served."
# Sent with every request: question-answering models need a context (422 without one), and the other
# tasks take the pair as a pair, as the reference design's seq_0/seq_1 clients send it.
DEFAULT_CONTEXT = "The fox was quick and brown; the dog was lazy. The test measures latency and throughput."
Tick = Callable[[Sample], None]
TIMER_SLACK_S = 0.001


@dataclass(frozen=True)
class RequestSpec:
    text: str = DEFAULT_TEXT
    timeout_s: float = 30.0
    context: Optional[str] = DEFAULT_CONTEXT

    def body(self) -> bytes:
        payload = {"inputs": self.text} if self.context is None else {"inputs": self.text, "context": self.context}
        return json.dumps(payload).encode("utf-8")


async def one(client: Client, target: Target, spec: RequestSpec, body: bytes, start_s: Optional[float] = None,
              lag_s: float = 0.0) -> Sample:
    """Send one prediction request; `start_s` (default: now) is when it was due."""
    start = now() if start_s is None else start_s
    try:
        response = await client.request("POST", target.url, body, timeout_s=spec.timeout_s)
    except Exception as exc:  # every failure is a sample, never an exception of the run
        return Sample(target.model, target.server, start, now(), None, classify(exc), lag_s)
    return Sample(target.model, target.server, start, now(), response.status, None, lag_s)


async def sequential(client: Client, targets: Sequence[Target], spec: RequestSpec, deadline_s: float,
                     tick: Tick = lambda s: None) -> List[Sample]:
    """One request at a time, in the given order, until the list or the deadline (a clock value) ends."""
    body = spec.body()
    out = []
    for target in targets:
        if now() >= deadline_s:
            break
        sample = await one(client, target, spec, body)
        out.append(sample)
        tick(sample)
    return out


async def closed_loop(client: Client, targets: Sequence[Target], concurrency: int, spec: RequestSpec, duration_s: float,
                      max_requests: int, seed: int, tick: Tick = lambda s: None) -> Tuple[List[Sample], Tuple[float, float]]:
    """`concurrency` clients, each sending its next request when the last one returns, to uniformly random
    targets (seeded per client), for `duration_s` or `max_requests` in all. Returns the samples and the window."""
    if concurrency < 1:
        raise ValueError(f"concurrency must be 1 or more, got {concurrency}")
    body = spec.body()
    out: List[Sample] = []
    issued = 0
    start = now()
    stop_at = start + duration_s

    async def worker(index: int) -> None:
        nonlocal issued
        rng = random.Random(seed * 1000003 + index)
        while issued < max_requests and now() < stop_at:
            issued += 1
            sample = await one(client, rng.choice(targets), spec, body)
            out.append(sample)
            tick(sample)

    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    end = max((s.end_s for s in out), default=start)
    return out, (start, end)


async def open_loop(client: Client, targets: Dict[str, Target], schedule: Sequence[Arrival], spec: RequestSpec,
                    drain_s: float, tick: Tick = lambda s: None) -> Tuple[List[Sample], Tuple[float, float]]:
    """Send each arrival at its time (seconds after the start), whatever is still in flight; latency counts from
    the scheduled time. After the last arrival, waits at most `drain_s` for the requests in flight (each also
    has its own timeout)."""
    body = spec.body()
    out: List[Sample] = []
    tasks: List[asyncio.Task] = []
    start = now()

    async def fire(arrival: Arrival, due: float) -> None:
        target = targets[arrival.model]
        sent = now()
        lag = max(0.0, sent - due)
        try:
            # From the schedule when late (queueing in the client counts), from the send when a little early.
            sample = await one(client, target, spec, body, start_s=min(due, sent), lag_s=lag)
        except asyncio.CancelledError:  # still in flight when the drain time ran out: an error, not a silent loss
            out.append(Sample(target.model, target.server, due, now(), None, "unfinished", lag))
            raise
        out.append(sample)
        tick(sample)

    for arrival in schedule:
        due = start + arrival.at_s
        # The loop's timers wake up to a millisecond late (epoll's resolution): aim that much early.
        wait = due - now() - TIMER_SLACK_S
        if wait > 0:
            await asyncio.sleep(wait)
        tasks.append(asyncio.ensure_future(fire(arrival, due)))
    if tasks:
        _done, pending = await asyncio.wait(tasks, timeout=drain_s)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
    end = max((s.end_s for s in out), default=now())
    return out, (start, max(end, start + (schedule[-1].at_s if schedule else 0.0)))
