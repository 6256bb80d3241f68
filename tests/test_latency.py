"""The latency model (packing/model/latency.py) against known values and a queue simulated event by event,
and the SLO tiers' caps (packing/model/tiers.py) as bounds over every mix a tier admits."""
from __future__ import annotations

import heapq
import math
import random

import numpy as np
import pytest

from packing.model.latency import (
    ServiceTime,
    Stream,
    TierBound,
    erlang_c,
    mix_wait,
    mmc_p90_ms,
    pod_p90_ms,
    stream_p90s_ms,
    tier_p90_ms,
    tier_utilisation_cap,
    wait_of,
)

# -- known values -----------------------------------------------------------------------------------

@pytest.mark.parametrize("c, a, expected", [
    (1, 0.5, 0.5),  # M/M/1: P(wait) = rho
    (2, 1.0, 1 / 3),
    (3, 2.0, 4 / 9),
    # Erlang C(5, 4) = (4^5/5! / (1 - 0.8)) / (sum_{k<5} 4^k/k! + 4^5/5! / (1 - 0.8)) = 128/231
    (5, 4.0, 128 / 231),
])
def test_erlang_c_known_values(c, a, expected):
    assert erlang_c(c, a) == pytest.approx(expected, rel=1e-4)


def test_erlang_c_edges():
    assert erlang_c(2, 0.0) == 0.0
    assert erlang_c(2, 2.0) == 1.0


def test_md1_mean_wait_is_pollaczek_khinchine():
    """Constant 30 ms service at 20 req/s (rho 0.6): E[W] = rho S / (2 (1 - rho)) = 22.5 ms."""
    w = mix_wait(1, [Stream(20.0, ServiceTime(30.0, 30.0))])
    assert w.p_wait == pytest.approx(0.6)
    assert w.mean_ms == pytest.approx(0.6 * 30 / (2 * 0.4))


def test_mm1_wait_from_exponential_moments():
    """Exponential service (E[S^2] = 2 E[S]^2) gives M/M/1's wait exactly: P(wait) = rho and a wait
    exponential with mean S / (1 - rho)."""
    w = wait_of(1, 25.0, 20.0, 2 * 20.0 ** 2)  # rho 0.5
    assert w.p_wait == pytest.approx(0.5)
    assert w.mean_if_wait_ms == pytest.approx(20.0 / 0.5)


def test_unstable_pod_predicts_infinity():
    assert math.isinf(pod_p90_ms(1, [Stream(40.0, ServiceTime(30.0, 30.0))]))


def test_idle_pod_predicts_the_service_p90():
    s = ServiceTime(20.0, 26.0)
    assert stream_p90s_ms(2, [Stream(0.0, s)])[0] == pytest.approx(26.0, rel=1e-6)
    # The pod's figure reads the service-time grid: at most a few tenths of a percent above.
    assert 26.0 <= pod_p90_ms(2, [Stream(0.0, s)]) <= 26.0 * 1.005


def test_server_work_off_the_queue_adds_to_the_response():
    s = ServiceTime(10.0, 12.0)
    base = pod_p90_ms(1, [Stream(30.0, s)])
    assert pod_p90_ms(1, [Stream(30.0, s, after_ms=4.0)]) == pytest.approx(base + 4.0)


def test_the_pod_figure_is_its_slowest_model_s():
    streams = [Stream(30.0, ServiceTime(5.0, 6.0)), Stream(6.0, ServiceTime(50.0, 55.0), after_ms=1.0)]
    assert pod_p90_ms(1, streams) == pytest.approx(max(stream_p90s_ms(1, streams)), rel=5e-3)
    assert pod_p90_ms(1, streams) >= max(stream_p90s_ms(1, streams)) * (1 - 1e-3)


def test_a_fast_model_waits_behind_a_slow_one():
    fast, slow = ServiceTime(5.0, 6.0), ServiceTime(60.0, 66.0)
    alone = stream_p90s_ms(1, [Stream(60.0, fast)])[0]  # rho 0.3
    mixed = stream_p90s_ms(1, [Stream(30.0, fast), Stream(2.5, slow)])[0]  # rho 0.3 as well
    assert mixed > 2 * alone


# -- against a simulated queue ------------------------------------------------------------------------

def simulate_p90s(cores: int, streams, arrivals: int, seed: int):
    """First-come first-served on `cores` parallel streams, Poisson arrivals: each stream's P90."""
    rng = random.Random(seed)
    rate = sum(s.rate_rps for s in streams) / 1000.0  # per ms
    weights = [s.rate_rps for s in streams]
    free = [0.0] * cores
    t = 0.0
    out = [[] for _ in streams]
    for _ in range(arrivals):
        t += rng.expovariate(rate)
        k = rng.choices(range(len(streams)), weights)[0]
        svc = streams[k].service
        service = svc.extra_ms + svc.p50_ms * math.exp(svc.sigma * rng.gauss(0.0, 1.0))
        start = max(t, heapq.heappop(free))
        heapq.heappush(free, start + service)
        out[k].append(start + service - t + streams[k].after_ms)
    return [float(np.percentile(v, 90)) for v in out]


CASES = {
    "md1 at 0.6": (1, [Stream(20.0, ServiceTime(30.0, 30.0))]),
    "traced model, 1 stream, 0.8": (1, [Stream(32.0, ServiceTime(25.0, 28.0, extra_ms=0.0))]),
    "2 streams at 0.7": (2, [Stream(56.0, ServiceTime(25.0, 29.0))]),
    "4 streams at 0.8 (a NeuronCore chip)": (4, [Stream(160.0, ServiceTime(20.0, 22.0))]),
    "mixed pod, 1 stream, 0.6": (1, [Stream(40.0, ServiceTime(5.0, 6.0)), Stream(8.0, ServiceTime(50.0, 55.0))]),
    "mixed pod, 2 streams, 0.5": (2, [Stream(60.0, ServiceTime(8.0, 9.0)), Stream(10.0, ServiceTime(50.0, 60.0))]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_model_matches_a_simulated_queue(name):
    """Within 12% of a long simulation of the same queue, for every stream of the pod."""
    cores, streams = CASES[name]
    predicted = stream_p90s_ms(cores, streams)
    simulated = simulate_p90s(cores, streams, arrivals=60_000, seed=7)
    for p, s in zip(predicted, simulated, strict=True):
        assert 0.88 <= s / p <= 1.12, (name, predicted, simulated)


def test_the_old_rule_is_far_off_where_the_model_is_close():
    """M/M/c with the slowest p90 added to the wait: the comparison the latency benchmark shows."""
    cores, streams = CASES["traced model, 1 stream, 0.8"]
    simulated = simulate_p90s(cores, streams, arrivals=60_000, seed=3)[0]
    old = mmc_p90_ms(1, 0.8, 25.0, 28.0)
    new = pod_p90_ms(cores, streams)
    assert abs(new / simulated - 1) < 0.12
    assert old / simulated > 1.5


# -- tier caps -------------------------------------------------------------------------------------

def test_tier_cap_meets_the_slo_at_the_cap_and_not_above():
    bound = TierBound.of([(ServiceTime(31.0, 35.0), 0.0)])
    cap = tier_utilisation_cap(1, bound, 100.0, 0.83)
    assert 0.3 < cap < 0.83
    assert tier_p90_ms(1, cap, bound) <= 100.0 + 1e-6
    assert tier_p90_ms(1, cap * 1.02, bound) > 100.0


def test_tier_cap_is_zero_where_the_service_alone_misses_the_slo():
    bound = TierBound.of([(ServiceTime(90.0, 120.0), 0.0)])
    assert tier_utilisation_cap(1, bound, 100.0, 0.83) == 0.0


def test_tier_cap_is_the_maximum_when_the_slo_is_loose():
    bound = TierBound.of([(ServiceTime(5.0, 6.0), 0.0)])
    assert tier_utilisation_cap(2, bound, 1000.0, 0.83) == 0.83


def test_tier_cap_bounds_every_mix_of_its_members():
    """Random pods of a tier's members at or below the tier's cap all predict within its SLO."""
    rng = random.Random(11)
    for trial in range(40):
        cores = rng.choice([1, 2, 4])
        members = [(ServiceTime(p50, p50 * rng.uniform(1.0, 1.4), extra_ms=rng.choice([0.0, 2.0])), rng.choice([0.0, 1.5]))
                   for p50 in (rng.uniform(2, 40) for _ in range(rng.randint(1, 4)))]
        slo = max(s.p90_ms + s.extra_ms + a for s, a in members) * rng.uniform(1.3, 4.0)
        bound = TierBound.of(members)
        cap = tier_utilisation_cap(cores, bound, slo, 0.83)
        assert cap > 0
        for _ in range(5):
            share = [rng.random() for _ in members]
            util = cap * rng.uniform(0.2, 1.0)
            # Rates that make the planned utilisation (rate x p50 / cores) equal `util`.
            total = sum(w * s.p50_ms for w, (s, _) in zip(share, members, strict=True))
            scale = util * cores * 1000.0 / total
            streams = [Stream(w * scale, s, a) for w, (s, a) in zip(share, members, strict=True)]
            assert pod_p90_ms(cores, streams) <= slo * (1 + 1e-6), (trial, cores, members, slo, cap, util)
