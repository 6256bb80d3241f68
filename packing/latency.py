"""The latency model: a pod's P90 response time from its models' measured service times and rates.

A pod is a queue with `c` parallel streams (a cpu slice's vCPUs, a GPU, a chip's NeuronCores),
Poisson arrivals, and the service-time mix of its models. Assumptions, each a choice:

- **Service time** of model i is lognormal through its measured batch-1 p50 and p90 (so a traced
  model, whose p90 is close to its p50, is nearly deterministic): sigma_i = ln(p90_i / p50_i) /
  z_0.9. On cpu pods the server's own CPU per request (HTTP, JSON, tokenising:
  `server_base.request_cpu_ms`) runs on the same cores, so it is added to the service time; on
  accelerator pods it runs on the host's cores beside the device and is added to the response
  only.
- **The wait** is M/G/c by Allen and Cunneen: an arrival waits with Erlang C's probability
  C(c, a) at offered load a = lambda E[S], and a wait, once it happens, is exponential with mean
  E[S^2] / (2 E[S]) / (c - a). The mix enters through E[S] and E[S^2], each the rate-weighted
  mean over the pod's models, so a fast model waits behind a slow one. For one stream this is
  exact in the mean (Pollaczek-Khinchine); for c > 1 it is the standard approximation.
- **The response** of model i is its wait plus its own service time, W + S_i, and its P90 is
  found from that convolution. The pod's predicted P90 is the largest over its models.
- Requests are served one at a time at the length the profile was measured at (the traced
  length, or shorter where the server trims a batch to its longest text, which makes real
  latency lower). Batching under load, which only adds capacity, is not modelled.

Pure functions over floats and numpy arrays; the packer calls them for a tier's utilisation cap
and the plan writer for each pod's figures.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Iterable, List, Sequence, Tuple

import numpy as np

Z90 = 1.2815515655446004  # the standard normal's 0.9 quantile
QUANTILE_POINTS = 96  # service-time grid for the convolution: enough for 0.1% accuracy at p90
# Bisection steps: a quantile to 2^-36 of its bracket (well under a microsecond for brackets of
# seconds); a tier's cap to 2^-30 of utilisation. The caps are found for every tier at every
# plan, inside the planner's time limit, so steps beyond the precision anyone reads are time lost.
QUANTILE_STEPS = 36
CAP_STEPS = 30


def service_moments(extra, p50, sigma):
    """E[S] and E[S^2] of S = extra + a lognormal of median p50 and log-sd sigma; floats or arrays."""
    lognormal_mean = p50 * np.exp(sigma ** 2 / 2)
    return extra + lognormal_mean, extra ** 2 + 2 * extra * lognormal_mean + p50 ** 2 * np.exp(2 * sigma ** 2)


@dataclass(frozen=True)
class ServiceTime:
    """One request of one model on one stream: lognormal through (p50, p90), plus constant work."""

    p50_ms: float
    p90_ms: float
    extra_ms: float = 0.0  # constant work on the same stream (the server's own CPU on cpu pods)

    @property
    def sigma(self) -> float:
        return math.log(self.p90_ms / self.p50_ms) / Z90 if self.p90_ms > self.p50_ms > 0 else 0.0

    @property
    def mean_ms(self) -> float:
        return float(service_moments(self.extra_ms, self.p50_ms, self.sigma)[0])

    @property
    def second_moment_ms2(self) -> float:
        return float(service_moments(self.extra_ms, self.p50_ms, self.sigma)[1])

    def quantiles(self, points: int = QUANTILE_POINTS) -> np.ndarray:
        """Service times at the midpoints of `points` equal-probability bands."""
        return self.extra_ms + self.p50_ms * np.exp(self.sigma * _normal_midpoints(points))


@dataclass(frozen=True)
class Stream:
    """One model's traffic at one pod."""

    rate_rps: float
    service: ServiceTime
    after_ms: float = 0.0  # added to the response outside the queue (host-side work on accelerator pods)


@dataclass(frozen=True)
class Wait:
    """The queueing wait: 0 with probability 1 - p_wait, else exponential with mean `mean_if_wait_ms`."""

    p_wait: float
    mean_if_wait_ms: float
    offered_load: float  # a = lambda E[S], in streams
    cores: int

    @property
    def utilisation(self) -> float:
        return self.offered_load / self.cores

    @property
    def stable(self) -> bool:
        return self.offered_load < self.cores

    @property
    def mean_ms(self) -> float:
        return self.p_wait * self.mean_if_wait_ms


@functools.lru_cache(maxsize=4)
def _normal_midpoints(points: int) -> np.ndarray:
    from statistics import NormalDist

    nd = NormalDist()
    out = np.array([nd.inv_cdf((k + 0.5) / points) for k in range(points)])
    out.flags.writeable = False
    return out


def erlang_c(c: int, a: float) -> float:
    """Probability that an arrival waits in M/M/c with offered load a (in servers)."""
    if a <= 0:
        return 0.0
    if a >= c:
        return 1.0
    b = 1.0  # Erlang B by its stable recurrence, then C from B
    for k in range(1, c + 1):
        b = a * b / (k + a * b)
    rho = a / c
    return b / (1 - rho + rho * b)


def wait_of(cores: int, rate_rps: float, mean_ms: float, second_moment_ms2: float) -> Wait:
    """Allen-Cunneen's M/G/c wait for arrivals at `rate_rps` whose service has the given moments."""
    a = rate_rps * mean_ms / 1000.0
    if a <= 0 or mean_ms <= 0:
        return Wait(0.0, 0.0, 0.0, cores)
    if a >= cores:
        return Wait(1.0, math.inf, a, cores)
    scale = second_moment_ms2 / (2 * mean_ms)  # E[S^2] / 2E[S]: E[S] for exponential, E[S]/2 for constant
    return Wait(erlang_c(cores, a), scale / (cores - a), a, cores)


def mix_wait(cores: int, streams: Sequence[Stream]) -> Wait:
    """The wait every request of the pod sees, from its streams' rate-weighted service moments."""
    rate = sum(s.rate_rps for s in streams)
    if rate <= 0:
        return Wait(0.0, 0.0, 0.0, cores)
    mean = sum(s.rate_rps * s.service.mean_ms for s in streams) / rate
    second = sum(s.rate_rps * s.service.second_moment_ms2 for s in streams) / rate
    return wait_of(cores, rate, mean, second)


def response_quantiles_ms(services: Sequence[ServiceTime], wait: Wait, q: float = 0.9) -> np.ndarray:
    """The q-quantile of W + S for each service S (vectorised over services by bisection)."""
    if not services:
        return np.zeros(0)
    if wait.stable and (wait.p_wait <= 0 or wait.mean_if_wait_ms <= 0):
        return np.array([_lognormal_quantile(s, q) for s in services])
    return quantiles_of_sum(np.stack([s.quantiles() for s in services]), wait, q)


def quantiles_of_sum(grid: np.ndarray, wait: Wait, q: float = 0.9) -> np.ndarray:
    """The q-quantile of W + S for each row of `grid`, a service time's values at equal-probability
    midpoints (ServiceTime.quantiles)."""
    if not wait.stable:
        return np.full(grid.shape[0], math.inf)
    rows = grid.shape[0]
    return _quantiles_of_sums(grid, np.full(rows, wait.p_wait), np.full(rows, wait.mean_if_wait_ms), q)


def _quantiles_of_sums(grid: np.ndarray, p_wait: np.ndarray, theta: np.ndarray, q: float) -> np.ndarray:
    """Row k's q-quantile of W_k + S_k: W_k is 0 with probability 1 - p_wait[k], else exponential of
    mean theta[k] (finite); S_k takes the values of grid[k] with equal probability. By bisection,
    all rows at once."""
    none = (p_wait <= 0) | (theta <= 0)
    pw = np.where(none, 0.0, p_wait)[:, None]
    th = np.where(none, 1.0, theta)[:, None]
    lo = grid.min(axis=1)
    with np.errstate(divide="ignore"):
        tail = np.where(pw[:, 0] > 0, th[:, 0] * (np.maximum(np.log(pw[:, 0] / (1 - q)), 0.0) + 1.0), 0.0)
    hi = grid.max(axis=1) + tail + 1e-9
    for _ in range(QUANTILE_STEPS):
        mid = (lo + hi) / 2
        slack = mid[:, None] - grid
        cdf = np.where(slack >= 0, 1.0 - pw * np.exp(-np.maximum(slack, 0.0) / th), 0.0).mean(axis=1)
        below = cdf < q
        lo = np.where(below, mid, lo)
        hi = np.where(below, hi, mid)
    return (lo + hi) / 2


def _lognormal_quantile(s: ServiceTime, q: float) -> float:
    from statistics import NormalDist

    return s.extra_ms + s.p50_ms * math.exp(s.sigma * NormalDist().inv_cdf(q))


def stream_p90s_ms(cores: int, streams: Sequence[Stream]) -> List[float]:
    """Each stream's predicted P90 response time at this pod."""
    wait = mix_wait(cores, streams)
    unique: dict = {}
    for s in streams:
        unique.setdefault(s.service, None)
    services = list(unique)
    q = dict(zip(services, response_quantiles_ms(services, wait).tolist(), strict=True))
    return [q[s.service] + s.after_ms for s in streams]


def pod_p90_ms(cores: int, streams: Sequence[Stream]) -> float:
    """The pod's predicted P90: the largest of its models' P90s, taken as the P90 of the wait plus
    the envelope of their service times (at each probability the largest model's value), which
    is never below any one model's and, for the alike models a pod holds, barely above the
    slowest's; one row for a pod of hundreds of models."""
    if not streams:
        return 0.0
    wait = mix_wait(cores, streams)
    services = list(dict.fromkeys(s.service for s in streams))
    z = _normal_midpoints(QUANTILE_POINTS)
    extra = np.array([s.extra_ms for s in services])[:, None]
    p50 = np.array([s.p50_ms for s in services])[:, None]
    sigma = np.array([s.sigma for s in services])[:, None]
    envelope = (extra + p50 * np.exp(sigma * z[None, :])).max(axis=0)
    return float(quantiles_of_sum(envelope[None, :], wait)[0]) + max(s.after_ms for s in streams)


@dataclass(frozen=True)
class TierBound:
    """The worst a pod of one tier can hold, as the cap needs it: the largest E[S] / p50 (real load
    per unit of planned utilisation), the largest E[S^2] / 2E[S] (wait scale), and the envelope of
    the members' service times (at each probability, the largest member's value: a service time
    that is stochastically above every member's) with the largest after-queue time."""

    load_factor: float
    wait_scale_ms: float
    envelope: Tuple[float, ...]
    after_ms: float

    @staticmethod
    def of(members: Iterable[Tuple[ServiceTime, float]]) -> TierBound:
        members = tuple(dict.fromkeys(members))
        return TierBound.of_arrays(np.array([s.extra_ms for s, _ in members]), np.array([s.p50_ms for s, _ in members]),
                                   np.array([s.sigma for s, _ in members]), np.array([a for _, a in members]))

    @staticmethod
    def of_arrays(extra: np.ndarray, p50: np.ndarray, sigma: np.ndarray, after: np.ndarray) -> TierBound:
        """TierBound.of over members given as arrays of their ServiceTime fields and after-queue times."""
        if len(p50) == 0:
            return TierBound(1.0, 0.0, (), 0.0)
        mean, second = service_moments(extra, p50, sigma)
        z = _normal_midpoints(QUANTILE_POINTS)
        envelope = (extra[:, None] + p50[:, None] * np.exp(sigma[:, None] * z[None, :])).max(axis=0)
        return TierBound(float((mean / p50).max()), float((second / (2 * mean)).max()), tuple(envelope.tolist()),
                         float(after.max()))


def tier_p90_ms(cores: int, utilisation: float, bound: TierBound) -> float:
    """An upper bound on the P90 of any pod of the tier at `utilisation` (planned: rate x p50 / cores).

    The real offered load is at most utilisation x cores x load_factor; Erlang C grows with the
    load and the wait's scale is at most wait_scale_ms, so this wait is stochastically the
    largest any mix of the tier's members can see; each member's response is then below the
    envelope's added to it."""
    return float(tier_p90s_ms(cores, np.array([utilisation]), bound)[0])


def tier_p90s_ms(cores: int, utilisations: np.ndarray, bound: TierBound) -> np.ndarray:
    """tier_p90_ms at each of `utilisations`, in one pass."""
    if not bound.envelope:
        return np.zeros(len(utilisations))
    a = np.asarray(utilisations, dtype=float) * cores * bound.load_factor
    stable = a < cores
    out = np.full(len(a), math.inf)
    if stable.any():
        a_in = a[stable]
        theta = np.where(a_in > 0, bound.wait_scale_ms / np.maximum(cores - a_in, 1e-300), 0.0)
        grid = np.broadcast_to(np.array(bound.envelope), (len(a_in), len(bound.envelope)))
        out[stable] = _quantiles_of_sums(grid, erlang_c_of(cores, a_in), theta, 0.9) + bound.after_ms
    return out


def erlang_c_of(c: int, a: np.ndarray) -> np.ndarray:
    """erlang_c at each offered load of `a`."""
    a = np.asarray(a, dtype=float)
    b = np.ones_like(a)
    for k in range(1, c + 1):
        b = a * b / (k + a * b)
    rho = a / c
    with np.errstate(divide="ignore", invalid="ignore"):
        out = b / (1 - rho + rho * b)
    return np.where(a <= 0, 0.0, np.where(a >= c, 1.0, out))


CAP_GRID = 32  # utilisations tried at once per refinement of a cap


def tier_utilisation_cap(cores: int, bound: TierBound, slo_ms: float, max_utilisation: float) -> float:
    """The largest planned utilisation (at most `max_utilisation`) at which every pod of the tier
    predicts a P90 within `slo_ms`; 0 where even an idle pod cannot (a service p90 above the SLO).

    The P90 grows with utilisation, so the cap is bracketed on a grid of CAP_GRID utilisations and
    the bracket refined the same way, each time keeping the highest utilisation that meets the SLO."""
    ends = tier_p90s_ms(cores, np.array([0.0, max_utilisation]), bound)
    if ends[0] > slo_ms:
        return 0.0
    if math.isinf(slo_ms) or ends[1] <= slo_ms:
        return max_utilisation
    lo, hi = 0.0, max_utilisation
    while hi - lo > max_utilisation * 2.0 ** -CAP_STEPS:
        grid = np.linspace(lo, hi, CAP_GRID + 1)[1:-1]
        meets = tier_p90s_ms(cores, grid, bound) <= slo_ms
        k = len(grid) if meets.all() else int(np.argmin(meets))  # the first k meet the SLO
        lo, hi = (grid[k - 1] if k else lo), (grid[k] if k < len(grid) else hi)
    return float(lo)


def mmc_p90_ms(cores: int, utilisation: float, mean_ms: float, slowest_p90_ms: float) -> float:
    """The rule the planner used before this model, kept for comparison in the latency benchmark:
    M/M/c (exponential service at the batch-1 p50) and the slowest model's p90 added to its p90 wait."""
    if utilisation <= 0:
        return slowest_p90_ms
    if utilisation >= 1:
        return math.inf
    a = utilisation * cores
    c_wait = erlang_c(cores, a)
    wait = 0.0 if c_wait <= 0.1 else mean_ms * math.log(10 * c_wait) / (cores - a)
    return slowest_p90_ms + wait
