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
- Requests are served at the length the profile was measured at (the traced length, or shorter
  where the server trims a batch to its longest text, which makes real latency lower).

Those are the batch-1 model: every request its own forward.

**Batching** (`batching_prediction`) is the server's own queue (serving/batcher.py): one FIFO
queue of rows per model, `c` inference slots shared by all models and granted first come first
served to the models' batchers (a model's batcher waits for a slot only with a row to run, so at
most once at a time), and a batch of up to B = MAX_BATCH_SIZE rows of one model, taken when its
batcher gets a slot or, with MAX_DELAY_MS = D > 0, held on the slot until D after its first row
arrived or until full. Its assumptions, each a choice:

- **Batch service** of b rows of model i is lognormal through the model's batch curve (the
  profile's `by_batch` p50 and p90, linear between the measured sizes and past the largest on
  the last slope, never falling; a profile with batch 1 alone gets b times batch 1, no gain),
  plus b times the server's own work per row on cpu pods.
- **Batch sizes**: a batch holds its first row and the rows of its model that arrive while that
  row waits for a slot (or, with D, until the later of that and D), up to B. The wait being 0 or
  exponential, the rows that join are Poisson mixed over it: none, or geometric.
- **The wait** keeps Allen and Cunneen's form, 0 or exponential, at the load a = sum of
  lambda_i e_i, e_i the slot time per row at model i's batch sizes (holds included). Its mean is
  a mean-value balance: W_i = (C R + the work queued ahead of the row) / c, where a row of
  another model ahead costs its e_j, and a row of the same model ahead costs nothing while it
  fits in the same batch: only full batches of its model ahead count (for a geometric count of
  rows ahead, h_i per row). Solved, W_i = (C R + T) / (c + lambda_i (e_i - h_i)), T = the sum of
  lambda_j e_j W_j. At B = 1, h_i = e_i = E[S_i] and this is the batch-1 model exactly; for one
  model on one slot it is the rest of the batch in service (the rows behind it go together),
  where M/G/1 at the same load adds the queue's 1 / (1 - rho). A row's own model's holds are left
  out of its C and R: a row that arrives during its model's hold joins the held batch.
- **The response** is the later of the wait and the rest of the batch's window (D; the first row
  sees all of it, a later row a uniform part), plus the service of the batch the row is in (the
  batch-size distribution weighted by rows); its P90 from that convolution. Batch sizes and
  waits are found together, by damped iteration to a fixed point.
- The row's wait and its batch's size are taken as independent (a longer wait means a larger
  batch), and the server's short wait for rows on their way (ARRIVING_WAIT_S, at most 4 ms a
  batch) is left out. The P90 is infinite only where full batches would not keep up
  (sum of lambda_i x a full batch's mean / B >= c); past the batch-1 capacity it is finite.

Against an event-by-event simulation of that queue (tests/test_batching_latency.py: one model of
30 ms and a mix of it with an 11 ms model, b rows costing 0.55 + 0.45 b of one, 1 and 2 slots, 0.2
to 0.9 of the batch-1 capacity, B = 8) every stream's simulated P90 was 0.89-1.12 of the
predicted one, and 0.87-1.02 with D = 5 ms; the tests hold both to 0.8-1.25. With D as long as
the slow model's forward (30 ms) the ratio falls to 0.69 on mixed pods: pessimistic there.

The packer's caps and the plan's `predicted.p90_ms` stay on the batch-1 model. Batching adds
capacity (full batches carry more than one row a forward), and under load its P90 is far below the
batch-1 one, so a cap found without it never admits more than the server carries; the plan states
no MAX_BATCH_SIZE for its servers (the charts leave the server's default) and inline profiles carry
no batch curve. The batch-1 P90 is not a strict bound, though: with several slots at moderate load
greedy batches (two rows together where a second slot would soon be free) put the simulated P90
up to about 10% (2 slots) and 20% (4 slots) above it, at 0.4-0.7 of capacity with the curve above.

Pure functions over floats and numpy arrays; the packer calls them for a tier's utilisation cap
and the plan writer for each pod's figures.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Iterable, List, Mapping, Optional, Sequence, Tuple

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


# ---- batching: the server's per-model batchers on shared slots ----------------------------------

BATCH_ITERATIONS = 2000  # damped steps of the batch-size / wait fixed point; it settles in tens
BATCH_TOLERANCE = 1e-9  # relative change of every wait at which the fixed point is taken as found
HOLD_POINTS = 16  # the rest of a held batch's hold, for a row that arrived during it: uniform midpoints
_GAUSS = np.polynomial.legendre.leggauss(32)  # the mean hold's integral over [0, D]


@dataclass(frozen=True)
class BatchCurve:
    """One model's forward on one stream by batch size: p50 and p90 at the measured sizes (ascending,
    the first 1), linear between them and past the largest on the last two points' slope, and never
    falling (a noisy point below a smaller batch's is raised to it); with batch 1 alone, b rows cost
    b times one (no gain assumed)."""

    sizes: Tuple[int, ...]
    p50_ms: Tuple[float, ...]
    p90_ms: Tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.sizes or len(self.sizes) != len(self.p50_ms) or len(self.sizes) != len(self.p90_ms):
            raise ValueError(f"a batch curve needs one p50 and one p90 per batch size, got sizes {self.sizes}, "
                             f"p50s {self.p50_ms}, p90s {self.p90_ms}")
        if self.sizes[0] != 1 or any(b <= a for a, b in zip(self.sizes, self.sizes[1:])):
            raise ValueError(f"a batch curve's sizes must start at 1 and rise, got {self.sizes}: give by_batch with a \"1\" "
                             "entry (or the profile's batch-1 figures) and distinct sizes")
        for b, p50, p90 in zip(self.sizes, self.p50_ms, self.p90_ms, strict=True):
            if not (math.isfinite(p50) and p50 > 0 and math.isfinite(p90) and p90 >= p50):
                raise ValueError(f"batch {b} of a batch curve has p50 {p50} ms and p90 {p90} ms: both must be finite, p50 > 0 "
                                 "and p90 >= p50 (re-profile the model)")

    @staticmethod
    def of(by_batch: Optional[Mapping[str, Any]], p50_ms: float, p90_ms: float) -> BatchCurve:
        """The curve of a profile: its batch-1 figures (`latency_ms`, `latency_p90_ms`, so that batch 1 is what
        the batch-1 model uses) and its `by_batch` entries above 1, each a LatencyPoint or a mapping with
        p50_ms and p90_ms."""
        points = {1: (float(p50_ms), float(max(p90_ms, p50_ms)))}
        for key, point in (by_batch or {}).items():
            try:
                size = int(key)
            except (TypeError, ValueError):
                raise ValueError(f"by_batch key {key!r} is not a batch size: use whole numbers such as \"2\"") from None
            if size < 1:
                raise ValueError(f"by_batch key {key!r} is not a batch size: sizes start at 1")
            if size == 1:
                continue
            get = point.get if isinstance(point, Mapping) else lambda name, point=point: getattr(point, name, None)
            p50, p90 = get("p50_ms"), get("p90_ms")
            if p50 is None or p90 is None:
                raise ValueError(f"by_batch[{key!r}] needs p50_ms and p90_ms, got {point!r}")
            points[size] = (float(p50), float(max(p90, p50)))
        sizes = tuple(sorted(points))
        return BatchCurve(sizes, tuple(points[b][0] for b in sizes), tuple(points[b][1] for b in sizes))

    def at(self, rows: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """p50 and p90 (ms) of a batch of each of `rows` rows."""
        rows = np.asarray(rows, dtype=float)
        sizes = np.array(self.sizes, dtype=float)
        out = []
        for values in (self.p50_ms, self.p90_ms):
            v = np.maximum.accumulate(np.array(values))
            if len(sizes) == 1:
                out.append(v[0] * rows)
                continue
            slope = max(0.0, (v[-1] - v[-2]) / (sizes[-1] - sizes[-2]))
            out.append(np.where(rows <= sizes[-1], np.interp(rows, sizes, v), v[-1] + slope * (rows - sizes[-1])))
        p50, p90 = out
        return p50, np.maximum(p90, p50)


@dataclass(frozen=True)
class BatchStream:
    """One model's traffic at a batching pod: its batch curve, the server's own work per row on the same
    stream (cpu pods) and the time added outside the queue (host-side work on accelerator pods)."""

    rate_rps: float
    curve: BatchCurve
    extra_ms: float = 0.0
    after_ms: float = 0.0


@dataclass(frozen=True)
class BatchingPrediction:
    """The batching model's figures for one pod, per stream in the order given."""

    p90_ms: Tuple[float, ...]
    mean_batch: Tuple[float, ...]  # rows per batch, over batches
    mean_wait_ms: Tuple[float, ...]  # from a row's arrival until its batch gets a slot
    p_wait: Tuple[float, ...]  # that a row waits for a slot
    hold_ms: Tuple[float, ...]  # a batch's mean hold on its slot before it runs (MAX_DELAY_MS > 0)
    load: float  # slots busy on average, holds included
    cores: int
    stable: bool

    @property
    def pod_p90_ms(self) -> float:
        return max(self.p90_ms, default=0.0)


@dataclass(frozen=True)
class _Batches:
    """Per stream, at one point of the fixed point: batch-size probabilities (k = 1..B) and what follows."""

    pmf: np.ndarray  # [streams, B]
    hold: np.ndarray  # mean hold per batch (ms)
    per_row: np.ndarray  # e: slot time per row (ms), hold included
    backlog_per_row: np.ndarray  # h: work of full own batches ahead, per own row ahead (ms)
    rate: np.ndarray  # batches per ms
    occupied: np.ndarray  # E[O]: slot time per batch (ms)
    occupied_2: np.ndarray  # E[O^2]
    served: np.ndarray  # E[S]: the forward alone
    served_2: np.ndarray  # E[S^2]

    @property
    def load(self) -> float:
        return float((self.rate * self.occupied).sum())


def batching_prediction(cores: int, streams: Sequence[BatchStream], max_batch: int, max_delay_ms: float = 0.0) -> BatchingPrediction:
    """Each stream's P90 at a pod whose server batches up to `max_batch` rows a model (MAX_BATCH_SIZE) with
    MAX_DELAY_MS `max_delay_ms`, on `cores` slots (WORKERS): the model of the module docstring."""
    if isinstance(cores, bool) or not isinstance(cores, (int, np.integer)) or cores < 1:
        raise ValueError(f"cores must be a whole number of slots, 1 or more, got {cores!r}")
    if isinstance(max_batch, bool) or not isinstance(max_batch, (int, np.integer)) or max_batch < 1:
        raise ValueError(f"max_batch (MAX_BATCH_SIZE) must be a whole number, 1 or more, got {max_batch!r}")
    if not (math.isfinite(max_delay_ms) and max_delay_ms >= 0):
        raise ValueError(f"max_delay_ms (MAX_DELAY_MS) must be finite and 0 or more, got {max_delay_ms!r}")
    for i, s in enumerate(streams):
        if not (math.isfinite(s.rate_rps) and s.rate_rps >= 0):
            raise ValueError(f"stream {i}: rate_rps must be finite and 0 or more, got {s.rate_rps!r}")
        if not (math.isfinite(s.extra_ms) and s.extra_ms >= 0 and math.isfinite(s.after_ms) and s.after_ms >= 0):
            raise ValueError(f"stream {i}: extra_ms and after_ms must be finite and 0 or more, got {s.extra_ms!r}, {s.after_ms!r}")
    n, big_b, cores = len(streams), int(max_batch), int(cores)
    if n == 0:
        return BatchingPrediction((), (), (), (), (), 0.0, cores, True)
    lam = np.array([s.rate_rps for s in streams]) / 1000.0  # per ms
    rows = np.arange(1, big_b + 1, dtype=float)
    p50 = np.empty((n, big_b))
    sigma = np.empty((n, big_b))
    for i, s in enumerate(streams):
        a50, a90 = s.curve.at(rows)
        p50[i] = a50
        sigma[i] = np.where(a90 > a50, np.log(np.maximum(a90, a50) / a50) / Z90, 0.0)
    extra = np.array([s.extra_ms for s in streams])[:, None] * rows[None, :]
    mean, second = service_moments(extra, p50, sigma)
    if float((lam * mean[:, -1]).sum()) / big_b >= cores:  # full batches would not keep up
        inf = (math.inf,) * n
        return BatchingPrediction(inf, (float(big_b),) * n, inf, (1.0,) * n, (0.0,) * n, math.inf, cores, False)
    theta = np.zeros(n)  # mean wait of a row that waits
    p_wait = np.zeros(n)
    batches = _batches(lam, p_wait, theta, mean, second, max_delay_ms)
    for _ in range(BATCH_ITERATIONS):
        new_p, new_theta = _wait_step(lam, batches, mean[:, -1], theta, cores)
        done = bool(np.all(np.abs(new_p - p_wait) <= BATCH_TOLERANCE)
                    and np.all(np.abs(new_theta - theta) <= BATCH_TOLERANCE * (1.0 + theta)))
        # Damped: longer waits make larger batches and so shorter waits, and the undamped map swings.
        p_wait, theta = (new_p, new_theta) if done else (0.5 * (p_wait + new_p), 0.5 * (theta + new_theta))
        batches = _batches(lam, p_wait, theta, mean, second, max_delay_ms)
        if done:
            break
    else:
        raise RuntimeError(f"the batching model did not settle in {BATCH_ITERATIONS} steps (cores {cores}, max_batch {max_batch}, "
                           f"rates {[s.rate_rps for s in streams]}): report this pod's figures as a bug")
    p90 = _batching_p90s(streams, p50, sigma, extra, batches, p_wait, theta, lam, max_delay_ms)
    return BatchingPrediction(tuple(p90), tuple((batches.pmf @ rows).tolist()), tuple((p_wait * theta).tolist()),
                              tuple(p_wait.tolist()), tuple(batches.hold.tolist()), batches.load, cores, True)


def batching_p90s_ms(cores: int, streams: Sequence[BatchStream], max_batch: int, max_delay_ms: float = 0.0) -> List[float]:
    """Each stream's predicted P90 at a batching pod (batching_prediction)."""
    return list(batching_prediction(cores, streams, max_batch, max_delay_ms).p90_ms)


def _batches(lam: np.ndarray, p_wait: np.ndarray, theta: np.ndarray, mean: np.ndarray, second: np.ndarray, delay: float) -> _Batches:
    """Batch sizes and slot times when a row of stream i waits for a slot with probability p_wait[i],
    exponentially with mean theta[i]."""
    n, big_b = mean.shape
    lt = lam * theta
    p = lt / (1.0 + lt)  # rows joining during an exponential wait: geometric with this ratio
    ks = np.arange(big_b)
    # Rows joining during the window D: Poisson. A first row still waiting when the window ends waits on
    # with its exponential tail (memoryless), which it does with probability exp(-D / theta).
    pois = _poisson_pmf(lam * delay, big_b)
    geom = (1.0 - p)[:, None] * p[:, None] ** ks[None, :]
    on = np.where(theta > 0, np.exp(-delay / np.maximum(theta, 1e-300)), 0.0) if delay > 0 else np.ones(n)
    conv = np.stack([np.convolve(pois[i], geom[i])[:big_b] for i in range(n)])
    pw = p_wait[:, None]
    joined = (1.0 - pw) * pois + pw * ((1.0 - on)[:, None] * pois + on[:, None] * conv)
    pmf = np.empty((n, big_b))
    pmf[:, :-1] = joined[:, :-1]
    pmf[:, -1] = np.maximum(0.0, 1.0 - joined[:, :-1].sum(axis=1))  # B - 1 or more join: a full batch
    hold = _mean_hold(lam, p_wait, theta, big_b, delay)
    k_mean = pmf @ (ks + 1.0)
    served = (pmf * mean).sum(axis=1)
    served_2 = (pmf * second).sum(axis=1)
    occupied = hold + served  # the hold taken as constant: E[O^2] = E[S^2] + 2 H E[S] + H^2
    occupied_2 = served_2 + 2 * hold * served + hold ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        # full own batches ahead per own row ahead, for a geometric count of rows ahead: p^(B-1) (1 - p) / (1 - p^B)
        ratio = np.where(p < 1.0, p ** (big_b - 1) * (1.0 - p) / (1.0 - p ** big_b), 1.0 / big_b) if big_b > 1 else np.ones(n)
    return _Batches(pmf, hold, occupied / k_mean, mean[:, -1] * ratio, lam / k_mean, occupied, occupied_2, served, served_2)


def _wait_step(lam: np.ndarray, b: _Batches, full_ms: np.ndarray, theta: np.ndarray, cores: int) -> Tuple[np.ndarray, np.ndarray]:
    """The wait (per stream: probability, mean if waiting) that the batches `b` imply.

    Stream i's rows wait behind the batches in service, less its own batches' holds (a row that arrives
    while its model's batch is held joins it): Erlang C and the residual at that load. Then the
    mean-value balance of the docstring, W_i d_i = C_i R_i + T with d_i = c + lambda_i (e_i - h_i) and
    T = sum_j lambda_j e_j W_j the work of the rows queued ahead, solved for T."""
    load = b.load - b.rate * b.hold  # per stream
    work = float((b.rate * b.occupied_2).sum()) - b.rate * (b.occupied_2 - b.served_2)
    d = cores + lam * (b.per_row - b.backlog_per_row)
    g = float((lam * b.per_row / d).sum())
    if b.load >= cores or g >= 1.0 or np.any(d <= 0):
        # not stable at these batch sizes, but full batches are (checked before): longer waits, larger batches
        return np.ones_like(theta), 2.0 * theta + full_ms
    c_wait = erlang_c_of(cores, load)
    with np.errstate(divide="ignore", invalid="ignore"):
        residual = np.where(load > 0, work / (2.0 * load), 0.0)
    ahead = c_wait * residual
    queued = float((lam * b.per_row * ahead / d).sum()) / (1.0 - g)
    mean_wait = (ahead + queued) / d
    with np.errstate(divide="ignore", invalid="ignore"):
        theta_new = np.where(c_wait > 0, mean_wait / np.maximum(c_wait, 1e-300), 0.0)
    return np.where(c_wait > 0, c_wait, 0.0), theta_new


def _poisson_pmf(mean: np.ndarray, count: int) -> np.ndarray:
    """P(N = k) for k < count, each row a Poisson of the given mean."""
    mean = np.asarray(mean, dtype=float)
    ks = np.arange(count)
    log_fact = np.array([math.lgamma(k + 1.0) for k in ks])
    with np.errstate(divide="ignore"):
        logs = ks[None, :] * np.log(np.maximum(mean, 1e-300))[:, None] - mean[:, None] - log_fact[None, :]
    out = np.exp(logs)
    out[mean <= 0] = np.where(ks == 0, 1.0, 0.0)
    return out


def _mean_hold(lam: np.ndarray, p_wait: np.ndarray, theta: np.ndarray, big_b: int, delay: float) -> np.ndarray:
    """A batch's mean hold on its slot: from the grant until D after its first row or until it is full,
    E[(min(D, T) - W)^+] = integral over t < D of P(T > t) P(W < t), T the arrival of the B-th row.
    With p_wait 0, the window itself: E[min(D, T)]."""
    n = len(lam)
    if delay <= 0 or big_b <= 1:
        return np.zeros(n)
    nodes, weights = _GAUSS
    t = (nodes + 1.0) * delay / 2.0
    w = weights * delay / 2.0
    fewer = _poisson_pmf((lam[:, None] * t[None, :]).ravel(), big_b - 1).sum(axis=1).reshape(n, len(t))  # fewer than B-1 more
    with np.errstate(divide="ignore", over="ignore"):
        tail = np.where(theta[:, None] > 0, np.exp(-t[None, :] / np.maximum(theta[:, None], 1e-300)), 0.0)
    return (fewer * (1.0 - np.asarray(p_wait)[:, None] * tail)) @ w


def _batching_p90s(streams: Sequence[BatchStream], p50: np.ndarray, sigma: np.ndarray, extra: np.ndarray, b: _Batches,
                   p_wait: np.ndarray, theta: np.ndarray, lam: np.ndarray, delay: float) -> List[float]:
    """Per stream, the P90 of max(wait, rest of the batch's window) + the service of the row's batch (sizes
    weighted by rows)."""
    z = _normal_midpoints(QUANTILE_POINTS)
    rows = np.arange(1, p50.shape[1] + 1, dtype=float)
    window = _mean_hold(lam, np.zeros(len(lam)), theta, p50.shape[1], delay)  # D, or less where the batch fills first
    out = []
    for i, s in enumerate(streams):
        by_row = b.pmf[i] * rows
        k_mean = float(by_row.sum())
        by_row = by_row / k_mean
        pw, th = float(p_wait[i]), float(theta[i])
        values = (extra[i][:, None] + p50[i][:, None] * np.exp(sigma[i][:, None] * z[None, :])).ravel()  # [B x points]
        weights = np.repeat(by_row / len(z), len(z))
        if window[i] <= 0:
            if pw <= 0 or th <= 0:
                out.append(_lognormal_mixture_quantile(extra[i], p50[i], sigma[i], by_row, 0.9) + s.after_ms)
            else:
                out.append(_weighted_quantile_of_sum(values, weights, pw, th, 0.9) + s.after_ms)
            continue
        # The window runs from the batch's first row: that row sees all of it, a later one (uniform) the rest;
        # a row's batch closes at the later of its slot wait and the window's end.
        rest = np.concatenate([[window[i]], (np.arange(HOLD_POINTS) + 0.5) / HOLD_POINTS * window[i]])
        share = np.concatenate([[1.0 / k_mean], np.full(HOLD_POINTS, (1.0 - 1.0 / k_mean) / HOLD_POINTS)])
        floors = (values[:, None] + rest[None, :]).ravel()
        out.append(_weighted_quantile_of_sum(np.repeat(values, len(rest)), (weights[:, None] * share[None, :]).ravel(), pw, th,
                                             0.9, floors) + s.after_ms)
    return out


def _weighted_quantile_of_sum(values: np.ndarray, weights: np.ndarray, p_wait: float, theta: float, q: float,
                              floors: Optional[np.ndarray] = None) -> float:
    """The q-quantile of max(W, X) + S, S taking `values` with `weights` (summing to 1) and X + S `floors`
    with them (X = 0 where no floors), W 0 with probability 1 - p_wait, else exponential of mean theta; by
    bisection as _quantiles_of_sums."""
    floors = values if floors is None else floors
    lo = float(floors.min())
    tail = theta * (max(math.log(p_wait / (1 - q)), 0.0) + 1.0) if p_wait > 0 and theta > 0 else 0.0
    hi = float(floors.max()) + tail + 1e-9
    for _ in range(QUANTILE_STEPS):
        mid = (lo + hi) / 2
        slack = mid - values
        waited = 1.0 - p_wait * np.exp(-np.maximum(slack, 0.0) / theta) if theta > 0 else np.ones_like(slack)
        cdf = float((weights * np.where(mid >= floors, waited, 0.0)).sum())
        if cdf < q:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def _lognormal_mixture_quantile(extra: np.ndarray, p50: np.ndarray, sigma: np.ndarray, weights: np.ndarray, q: float) -> float:
    """The q-quantile of extra_k + a lognormal (p50_k, sigma_k) taken with probability weights_k: exact, for
    an idle pod (one component: the service's own quantile, as the batch-1 model gives it)."""
    from statistics import NormalDist

    live = weights > 0
    extra, p50, sigma, weights = extra[live], p50[live], sigma[live], weights[live]
    if len(weights) == 1:
        return float(extra[0] + p50[0] * math.exp(sigma[0] * NormalDist().inv_cdf(q)))
    cdf_of = np.vectorize(NormalDist().cdf)

    def cdf(t: float) -> float:
        slack = t - extra
        with np.errstate(divide="ignore", invalid="ignore"):
            zs = np.where(slack > 0, np.log(np.maximum(slack, 1e-300) / p50) / np.where(sigma > 0, sigma, 1.0), -np.inf)
        step = np.where(sigma > 0, cdf_of(np.where(np.isfinite(zs), zs, -40.0)), (slack >= p50).astype(float))
        return float((weights * np.where(slack > 0, step, 0.0)).sum())

    lo = float((extra + p50 * np.exp(sigma * -8.0)).min())
    hi = float((extra + p50 * np.exp(sigma * 8.0)).max()) + 1e-9
    for _ in range(QUANTILE_STEPS + 12):
        mid = (lo + hi) / 2
        if cdf(mid) < q:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2
