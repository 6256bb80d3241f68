"""The batching latency model (packing/model/latency.py, `batching_prediction`) against its known limits and against the
server's batching queue simulated event by event.

The simulation is the test's oracle, written from serving/batcher.py's rules rather than from the model: Poisson
arrivals per model, one FIFO queue of rows per model, `cores` slots shared by every model and granted first come
first served to the models' batchers (a model's batcher waits for a slot only with a row to run, so at most once),
and a batch of up to B rows of one model taken at the grant, or with MAX_DELAY_MS = D held on its slot until D after
its first row's arrival or until full. A batch of k rows takes a lognormal draw through the curve's p50 and p90 at k,
plus k times the server's work per row."""
from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import dataclass
from typing import List, Sequence

import numpy as np
import pytest

from contracts.models import LatencyPoint
from packing.model.latency import (
    Z90,
    BatchCurve,
    BatchStream,
    ServiceTime,
    Stream,
    batching_p90s_ms,
    batching_prediction,
    stream_p90s_ms,
)

TOLERANCE = (0.8, 1.25)  # simulated P90 / predicted P90, every stream of every case


def cpu_curve(p50: float, p90: float, fixed: float = 0.55) -> BatchCurve:
    """A curve like MiniLM's on one cpu core: b rows cost (fixed + (1 - fixed) b) times one, measured at 1, 2, 4, 8."""
    sizes = (1, 2, 4, 8)
    return BatchCurve(sizes, tuple(p50 * (fixed + (1 - fixed) * b) for b in sizes), tuple(p90 * (fixed + (1 - fixed) * b) for b in sizes))


MINILM = cpu_curve(30.0, 33.0)  # ~30 ms at batch 1
BERT_MINI = cpu_curve(11.0, 12.4)  # ~11 ms


# -- the simulation ---------------------------------------------------------------------------------

@dataclass
class Simulated:
    responses: List[np.ndarray]  # per stream, ms (warm-up dropped)
    waits: List[np.ndarray]  # per stream: arrival until the batch's slot was granted
    batches: List[float]  # per stream: mean rows per batch

    def p90s(self) -> List[float]:
        return [float(np.percentile(r, 90)) for r in self.responses]


def simulate(cores: int, streams: Sequence[BatchStream], max_batch: int, arrivals: int, seed: int, delay_ms: float = 0.0) -> Simulated:
    rng = np.random.default_rng(seed)
    rates = np.array([s.rate_rps for s in streams]) / 1000.0
    times = np.cumsum(rng.exponential(1.0 / rates.sum(), arrivals))
    owner = rng.choice(len(streams), size=arrivals, p=rates / rates.sum())
    per = [times[owner == m] for m in range(len(streams))]
    sizes = np.arange(1, max_batch + 1)
    curves = []
    for s in streams:
        p50, p90 = s.curve.at(sizes)
        curves.append((p50, np.where(p90 > p50, np.log(p90 / p50) / Z90, 0.0), sizes * s.extra_ms))
    normals = iter(rng.standard_normal(arrivals + 1))
    n = len(streams)
    head = [0] * n  # each stream's first row not yet in a batch
    arrived = [0] * n
    state = ["idle"] * n  # idle (no row waiting), waiting (for a slot), collecting (holding a slot for D)
    queue: deque = deque()  # batchers waiting for a slot, first come first served
    free = cores
    events: list = []  # (time, order, kind, stream): kind 0 a batch ends, 1 a held batch closes
    order = 0
    resp = [np.zeros(len(p)) for p in per]
    wait = [np.zeros(len(p)) for p in per]
    counts: List[List[int]] = [[] for _ in range(n)]

    def ask(m: int, t: float) -> None:
        nonlocal free
        if free > 0 and not queue:
            free -= 1
            start(m, t)
        else:
            state[m] = "waiting"
            queue.append(m)

    def start(m: int, t: float) -> None:
        nonlocal order
        rows, h = per[m], head[m]
        close, taken = t, arrived[m]
        if delay_ms > 0:
            full_at = rows[h + max_batch - 1] if h + max_batch - 1 < len(rows) else math.inf
            close = max(t, min(rows[h] + delay_ms, full_at))
            taken = int(np.searchsorted(rows, close, side="right"))
        k = min(max_batch, taken - h)
        p50, sigma, extra = curves[m]
        end = close + extra[k - 1] + p50[k - 1] * math.exp(sigma[k - 1] * next(normals))
        resp[m][h:h + k] = end - rows[h:h + k]
        wait[m][h:h + k] = np.maximum(t - rows[h:h + k], 0.0)
        counts[m].append(k)
        head[m] = h + k
        heapq.heappush(events, (end, order, 0, m))
        order += 1
        if close > t:
            state[m] = "collecting"
            heapq.heappush(events, (close, order, 1, m))
            order += 1
        else:
            done_collecting(m, t)

    def done_collecting(m: int, t: float) -> None:
        if arrived[m] > head[m]:
            ask(m, t)
        else:
            state[m] = "idle"

    i = 0
    while i < arrivals or events:
        if events and (i >= arrivals or events[0][0] < times[i]):
            t, _, kind, m = heapq.heappop(events)
            if kind == 1:
                done_collecting(m, t)
                continue
            free += 1
            while free > 0 and queue:
                free -= 1
                start(queue.popleft(), t)
            continue
        t, m = times[i], owner[i]
        i += 1
        arrived[m] += 1
        if arrived[m] > head[m] and state[m] == "idle":  # rows already taken by a held batch are not new
            ask(m, t)
    cut = [len(r) // 20 for r in resp]
    return Simulated([r[c:] for r, c in zip(resp, cut)], [w[c:] for w, c in zip(wait, cut)],
                     [float(np.mean(c)) for c in counts])


def pod(kind: str, cores: int, utilisation: float, extra_ms: float = 0.0) -> List[BatchStream]:
    """One MiniLM-like model, or it and a bert-mini-like one with half of the requests each, at a planned
    utilisation of the batch-1 capacity (rate x batch-1 p50 / cores)."""
    if kind == "one":
        return [BatchStream(utilisation * cores * 1000.0 / 30.0, MINILM, extra_ms)]
    total = utilisation * cores * 1000.0 / ((30.0 + 11.0) / 2)
    return [BatchStream(total / 2, MINILM, extra_ms), BatchStream(total / 2, BERT_MINI, extra_ms)]


def assert_close_to_simulation(cores, streams, max_batch, delay_ms=0.0, arrivals=40_000, seed=5):
    predicted = batching_prediction(cores, streams, max_batch, delay_ms)
    simulated = simulate(cores, streams, max_batch, arrivals, seed, delay_ms)
    for p, s in zip(predicted.p90_ms, simulated.p90s(), strict=True):
        assert TOLERANCE[0] <= s / p <= TOLERANCE[1], (predicted.p90_ms, simulated.p90s())
    for p, s in zip(predicted.mean_batch, simulated.batches, strict=True):
        assert abs(p - s) <= 0.1 * s, (predicted.mean_batch, simulated.batches)
    return predicted, simulated


# -- the oracle itself ------------------------------------------------------------------------------

def test_the_simulation_at_batch_1_is_m_d_1():
    """One model, constant 30 ms, 20 req/s, B = 1: Pollaczek-Khinchine's mean wait, rho S / 2 (1 - rho) = 22.5 ms."""
    streams = [BatchStream(20.0, BatchCurve((1,), (30.0,), (30.0,)))]
    waits = simulate(1, streams, 1, 60_000, 3).waits[0]
    assert waits.mean() == pytest.approx(22.5, rel=0.05)


def test_the_simulation_takes_every_row_that_waited_into_one_batch():
    """One slot, one model: rows arriving during a batch all go into the next one (fewer than B here)."""
    sim = simulate(1, [BatchStream(25.0, MINILM)], 8, 20_000, 4)
    assert 1.2 < sim.batches[0] < 1.6
    assert float(np.max(sim.waits[0])) <= MINILM.at([8])[1][0] * 3  # never more than the batch in service and its tail


# -- against the simulation -------------------------------------------------------------------------

@pytest.mark.parametrize("cores", [1, 2])
@pytest.mark.parametrize("kind", ["one", "mix"])
@pytest.mark.parametrize("utilisation", [0.2, 0.4, 0.6, 0.8, 0.9])
def test_batching_model_matches_the_simulated_server_queue(cores, kind, utilisation):
    """MAX_BATCH_SIZE 8, MAX_DELAY_MS 0: every stream's P90 within the tolerance, mean batch within 10%."""
    assert_close_to_simulation(cores, pod(kind, cores, utilisation), 8)


@pytest.mark.parametrize("max_batch", [2, 4])
@pytest.mark.parametrize("cores, kind", [(1, "mix"), (2, "one")])
def test_smaller_batches_match_the_simulation(max_batch, cores, kind):
    assert_close_to_simulation(cores, pod(kind, cores, 0.8), max_batch)


@pytest.mark.parametrize("cores, kind, utilisation", [(1, "one", 0.2), (1, "one", 0.8), (1, "mix", 0.5), (2, "mix", 0.8)])
def test_a_max_delay_matches_the_simulation(cores, kind, utilisation):
    """MAX_DELAY_MS 5 (a sixth of the slow model's forward): batches held on their slot until 5 ms after their first row."""
    predicted, _ = assert_close_to_simulation(cores, pod(kind, cores, utilisation), 8, delay_ms=5.0)
    assert all(h > 0 for h in predicted.hold_ms)


def test_server_work_per_row_and_after_the_queue():
    """3 ms of the server's own work per row on the same core, and 2 ms after the queue (added as is)."""
    streams = [BatchStream(s.rate_rps, s.curve, s.extra_ms, 2.0) for s in pod("mix", 1, 0.7, extra_ms=3.0)]
    assert_close_to_simulation(1, streams, 8)


def test_past_the_batch_1_capacity_batching_still_keeps_up():
    """At 1.2 x what batch-1 service could carry, batches carry it: finite, and as simulated."""
    streams = pod("one", 1, 1.2)
    assert math.isinf(stream_p90s_ms(1, [Stream(streams[0].rate_rps, ServiceTime(30.0, 33.0))])[0])
    predicted, _ = assert_close_to_simulation(1, streams, 8)
    assert 1.5 < predicted.mean_batch[0] < 8


def test_the_wait_of_one_model_on_one_slot_is_the_rest_of_the_batch_in_service():
    """Rows behind the batch in service go together into the next one: the mean wait is about the residual of one
    batch, not the M/G/1 queue's residual / (1 - rho)."""
    streams = pod("one", 1, 0.8)
    predicted = batching_prediction(1, streams, 8)
    sim = simulate(1, streams, 8, 40_000, 8)
    assert predicted.mean_wait_ms[0] == pytest.approx(float(sim.waits[0].mean()), rel=0.15)
    busy = predicted.load
    assert predicted.mean_wait_ms[0] < busy * MINILM.at([2])[0][0]  # below P(busy) x a batch of 2 rows


# -- known limits -----------------------------------------------------------------------------------

def _batch1(cores: int, streams: Sequence[BatchStream]) -> List[float]:
    return stream_p90s_ms(cores, [Stream(s.rate_rps, ServiceTime(s.curve.p50_ms[0], s.curve.p90_ms[0], s.extra_ms), s.after_ms)
                                  for s in streams])


@pytest.mark.parametrize("cores", [1, 2, 4])
@pytest.mark.parametrize("utilisation", [0.05, 0.4, 0.7, 0.9])
def test_at_max_batch_1_it_is_the_batch_1_model(cores, utilisation):
    streams = [BatchStream(s.rate_rps, s.curve, 2.5, after) for s, after in zip(pod("mix", cores, utilisation), (0.0, 1.5), strict=True)]
    assert batching_p90s_ms(cores, streams, 1) == pytest.approx(_batch1(cores, streams), rel=1e-9)


def test_at_max_batch_1_the_simulation_agrees_too():
    streams = pod("one", 2, 0.7)
    simulated = simulate(2, streams, 1, 60_000, 7).p90s()[0]
    assert 0.88 <= simulated / batching_p90s_ms(2, streams, 1)[0] <= 1.12


@pytest.mark.parametrize("max_batch", [1, 2, 8])
def test_an_idle_pod_predicts_the_batch_1_service_p90(max_batch):
    idle = [BatchStream(0.0, MINILM, 3.0, 1.0), BatchStream(0.0, BERT_MINI)]
    assert batching_p90s_ms(2, idle, max_batch) == pytest.approx([33.0 + 3.0 + 1.0, 12.4], rel=1e-9)
    # a trickle of load: read off the service-time grid, a few tenths of a percent above at most
    trickle = [BatchStream(1e-3, s.curve, s.extra_ms, s.after_ms) for s in idle]
    for got, want in zip(batching_p90s_ms(2, trickle, max_batch), (37.0, 12.4), strict=True):
        assert want <= got <= want * 1.003


def test_an_idle_pod_with_a_max_delay_adds_the_whole_delay():
    got = batching_p90s_ms(1, [BatchStream(1e-6, MINILM)], 8, max_delay_ms=10.0)[0]
    assert got == pytest.approx(33.0 + 10.0, rel=5e-3)


def test_at_light_load_batching_changes_little_and_under_load_it_helps():
    light, busy = pod("mix", 1, 0.2), pod("mix", 1, 0.8)
    assert batching_p90s_ms(1, light, 8) == pytest.approx(_batch1(1, light), rel=0.05)
    # at 0.8 of the batch-1 capacity, batches of about 1.3 rows bring the load to 0.7, and the rows behind a batch go
    # together in the next one: the P90 about halves
    assert all(b < 0.6 * a for a, b in zip(_batch1(1, busy), batching_p90s_ms(1, busy, 8), strict=True))


def test_batches_fill_as_the_load_nears_what_full_batches_carry():
    full_ms = MINILM.at([8])[0][0]
    near = [BatchStream(0.97 * 8 * 1000.0 / full_ms, MINILM)]
    assert batching_prediction(1, near, 8).mean_batch[0] > 6.0
    over = [BatchStream(1.01 * 8 * 1000.0 / full_ms, MINILM)]
    got = batching_prediction(1, over, 8)
    assert not got.stable and all(math.isinf(p) for p in got.p90_ms)


def test_the_pod_figure_is_its_slowest_model_s():
    got = batching_prediction(2, pod("mix", 2, 0.6), 8)
    assert got.pod_p90_ms == max(got.p90_ms) and got.p90_ms[0] > got.p90_ms[1]


# -- the batch curve and bad input ------------------------------------------------------------------

def test_the_curve_interpolates_and_extends_on_the_last_slope():
    curve = BatchCurve.of({"2": {"p50_ms": 16.0, "p90_ms": 18.0}, "4": LatencyPoint(p50_ms=26.0, p90_ms=30.0)}, 10.0, 11.0)
    p50, p90 = curve.at([1, 2, 3, 4, 6, 8])
    assert p50.tolist() == pytest.approx([10.0, 16.0, 21.0, 26.0, 36.0, 46.0])
    assert p90.tolist() == pytest.approx([11.0, 18.0, 24.0, 30.0, 42.0, 54.0])


def test_the_profiles_batch_1_figures_win_over_its_by_batch_entry():
    curve = BatchCurve.of({"1": {"p50_ms": 9.0, "p90_ms": 9.5}, "2": {"p50_ms": 15.0, "p90_ms": 16.0}}, 10.0, 11.0)
    assert (curve.p50_ms[0], curve.p90_ms[0]) == (10.0, 11.0)


def test_a_curve_never_falls_and_batch_1_alone_means_no_gain():
    falling = BatchCurve((1, 2, 4), (10.0, 16.0, 15.0), (11.0, 17.0, 16.0))
    p50, _ = falling.at([3, 4, 8])
    assert p50.tolist() == pytest.approx([16.0, 16.0, 16.0])  # a noisy point does not make larger batches faster
    alone = BatchCurve.of({}, 10.0, 12.0)
    p50, p90 = alone.at([3])
    assert (p50[0], p90[0]) == pytest.approx((30.0, 36.0))


@pytest.mark.parametrize("by_batch, message", [
    ({"two": {"p50_ms": 1.0, "p90_ms": 2.0}}, "not a batch size"),
    ({"0": {"p50_ms": 1.0, "p90_ms": 2.0}}, "sizes start at 1"),
    ({"2": {"p50_ms": 1.0}}, "needs p50_ms and p90_ms"),
])
def test_a_bad_by_batch_is_named(by_batch, message):
    with pytest.raises(ValueError, match=message):
        BatchCurve.of(by_batch, 10.0, 11.0)


@pytest.mark.parametrize("sizes, p50, p90, message", [
    ((2, 4), (1.0, 2.0), (1.0, 2.0), "start at 1 and rise"),
    ((1, 1), (1.0, 2.0), (1.0, 2.0), "start at 1 and rise"),
    ((1, 2), (1.0, 2.0), (1.0, 1.5), "p90 >= p50"),
    ((1,), (0.0,), (1.0,), "p50 > 0"),
    ((1, 2), (1.0,), (1.0, 2.0), "one p50 and one p90 per batch size"),
])
def test_a_bad_curve_is_named(sizes, p50, p90, message):
    with pytest.raises(ValueError, match=message):
        BatchCurve(sizes, p50, p90)


@pytest.mark.parametrize("kwargs, message", [
    ({"cores": 0}, "cores must be a whole number"),
    ({"max_batch": 0}, "MAX_BATCH_SIZE"),
    ({"max_batch": 2.5}, "MAX_BATCH_SIZE"),
    ({"max_delay_ms": -1.0}, "MAX_DELAY_MS"),
    ({"streams": [BatchStream(-1.0, MINILM)]}, "stream 0: rate_rps"),
    ({"streams": [BatchStream(1.0, MINILM, extra_ms=math.nan)]}, "stream 0: extra_ms"),
])
def test_bad_pod_figures_are_named(kwargs, message):
    args = {"cores": 1, "streams": [BatchStream(10.0, MINILM)], "max_batch": 8, "max_delay_ms": 0.0} | kwargs
    with pytest.raises(ValueError, match=message):
        batching_prediction(args["cores"], args["streams"], args["max_batch"], args["max_delay_ms"])


def test_on_four_slots_at_moderate_load_greedy_batches_raise_the_p90():
    """Two rows together where a second slot would soon be free: the simulated P90 with batches is above the one
    without, and the batching model follows it above the batch-1 model (the README's caveat on the caps)."""
    streams = pod("one", 4, 0.6)
    with_batches, without = simulate(4, streams, 8, 60_000, 3).p90s()[0], simulate(4, streams, 1, 60_000, 3).p90s()[0]
    assert with_batches > 1.05 * without
    predicted = batching_p90s_ms(4, streams, 8)[0]
    assert predicted > _batch1(4, streams)[0]
    assert TOLERANCE[0] <= with_batches / predicted <= TOLERANCE[1]
