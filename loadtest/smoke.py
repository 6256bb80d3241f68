"""The smoke gate: every server answers one of its models, or the run says which did not, why, and where to look.

A first deploy installs the servers without waiting for them (multi-GB images pull, models load), so a server
that does not answer yet is not a failure yet: each server is asked again with exponential backoff (1 s, 2 s,
4 s, ... at most 30 s apart) until it answers 2xx or the deadline passes. All servers are asked side by side,
so the gate takes as long as the slowest server, not the sum. Any answer but a 2xx is retried (a 404 from the
gateway while its routes are still being programmed, a 503 while the models load, a refused connection while
the pod starts); only the deadline ends a server's tries.

What a failure says, per server still failing: the model asked, how many tries over how long, the last HTTP
status (or that none came) and the last error (the server's JSON message, or the connection's), and commands an
operator can run: `kubectl get pods` / `describe` / `logs` for the server's pods in its namespace (read from its
in-cluster URL), or `python -m deploy status` for a server on this machine.
"""
from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from typing import Awaitable, Callable, List, Optional, Sequence
from urllib.parse import urlsplit

from contracts.pod import SERVER_LABEL
from loadtest.client import Client, classify, now
from loadtest.runner import RequestSpec
from loadtest.stats import Sample
from loadtest.targets import Target

DETAIL_CHARS = 300  # of a failing answer's body in the message: the server's errors are short JSON
MIN_ATTEMPT_S = 1.0  # the last try before the deadline still gets this long to answer


@dataclass(frozen=True)
class Backoff:
    """Delay before try n + 1 (n = 1, 2, ...): first_s x factor^(n - 1), at most cap_s, each cut by up to
    `jitter` of itself so that many smoke runs (or servers) do not ask in step."""

    first_s: float = 1.0
    factor: float = 2.0
    cap_s: float = 30.0
    jitter: float = 0.2

    def delay(self, attempt: int, rng: Optional[random.Random] = None) -> float:
        if attempt < 1:
            raise ValueError(f"attempt counts from 1, got {attempt}")
        base = min(self.cap_s, self.first_s * self.factor ** (attempt - 1))
        return base * (1.0 - self.jitter * rng.random()) if rng is not None and self.jitter else base


@dataclass(frozen=True)
class SmokeResult:
    """One server's outcome: its last try (the 2xx, or the last failure) and what that failure said."""

    target: Target
    attempts: int
    last: Sample
    detail: Optional[str]  # the last failure's body excerpt or exception text; None once it answered
    waited_s: float  # from the first try to the end of the last

    @property
    def ok(self) -> bool:
        return self.last.ok


Sleep = Callable[[float], Awaitable[None]]


async def attempt(client: Client, target: Target, body: bytes, timeout_s: float) -> tuple[Sample, Optional[str]]:
    """One try: its sample and, unless it answered 2xx, what went wrong."""
    start = now()
    try:
        response = await client.request("POST", target.url, body, timeout_s=timeout_s)
    except Exception as exc:  # every failure is an outcome to report, never an exception of the run
        text = str(exc) or type(exc).__name__
        return Sample(target.model, target.server, start, now(), None, classify(exc)), f"{type(exc).__name__}: {text}"
    sample = Sample(target.model, target.server, start, now(), response.status, None)
    if sample.ok:
        return sample, None
    return sample, response.body.decode("utf-8", "replace").strip()[:DETAIL_CHARS] or "(empty body)"


async def until_ok(client: Client, target: Target, spec: RequestSpec, deadline_s: float, backoff: Backoff,
                   sleep: Sleep = asyncio.sleep, rng: Optional[random.Random] = None) -> SmokeResult:
    """Ask `target` until it answers 2xx or `deadline_s` (a clock value) passes. The first try always happens;
    a try never runs past the deadline by more than MIN_ATTEMPT_S."""
    body = spec.body()
    first = now()
    tries = 0
    while True:
        tries += 1
        left = deadline_s - now()
        sample, detail = await attempt(client, target, body, min(spec.timeout_s, max(MIN_ATTEMPT_S, left)))
        if sample.ok:
            return SmokeResult(target, tries, sample, None, now() - first)
        pause = backoff.delay(tries, rng)
        if now() + pause >= deadline_s:
            return SmokeResult(target, tries, sample, detail, now() - first)
        await sleep(pause)


async def smoke(client: Client, targets: Sequence[Target], spec: RequestSpec, deadline_s: float,
                backoff: Backoff = Backoff(), tick: Callable[[Sample], None] = lambda s: None,
                sleep: Sleep = asyncio.sleep, seed: int = 7) -> List[SmokeResult]:
    """Every target (one per server) asked side by side until it answers or the deadline passes; in order."""
    async def one(i: int, target: Target) -> SmokeResult:
        result = await until_ok(client, target, spec, deadline_s, backoff, sleep, random.Random(seed * 1000003 + i))
        tick(result.last)
        return result

    return list(await asyncio.gather(*(one(i, t) for i, t in enumerate(targets))))


def namespace_of(server_url: str) -> Optional[str]:
    """The namespace in an in-cluster URL (http://<service>.<namespace>.svc.cluster.local:8080), else None."""
    host = urlsplit(server_url).hostname or ""
    parts = host.split(".")
    return parts[1] if len(parts) >= 3 and parts[2] == "svc" else None


def where_to_look(server: str, server_url: str) -> str:
    """Commands an operator can run to see why `server` does not answer."""
    ns = namespace_of(server_url)
    if ns is None:
        return f"python -m deploy status (server {server} at {server_url}: its log is listed there)"
    sel = f"{SERVER_LABEL}={server}"
    return (f"kubectl -n {ns} get pods -l {sel} -o wide; kubectl -n {ns} describe pods -l {sel}; "
            f"kubectl -n {ns} logs -l {sel} --tail=50; kubectl -n {ns} get events --field-selector "
            f"involvedObject.kind=Pod --sort-by=.lastTimestamp")


def failure_lines(results: Sequence[SmokeResult], server_urls: dict) -> List[str]:
    """One line per server still failing: server, model, tries, last status, last error, where to look."""
    lines = []
    for r in results:
        if r.ok:
            continue
        status = f"HTTP {r.last.status}" if r.last.status is not None else f"no HTTP status ({r.last.outcome})"
        lines.append(f"smoke: server {r.target.server} did not answer {r.target.model} with 2xx after {r.attempts} "
                     f"tr{'y' if r.attempts == 1 else 'ies'} over {r.waited_s:.0f} s: last {status}, last error: "
                     f"{r.detail}; look with: {where_to_look(r.target.server, server_urls.get(r.target.server, ''))}")
    return lines
