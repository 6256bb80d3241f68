"""Queueing allowance for a pod: an M/M/c queue with c = the device's cores.

A pod receives Poisson arrivals (rate lambda) served by c parallel streams with mean service
time S (the batch-1 p50). With offered load a = lambda x S and utilisation rho = a / c < 1,
Erlang's C formula gives the probability that a request waits, C(c, a), and the waiting time
is exponential beyond that: P(W > t) = C(c, a) x exp(-(c - a) t / S). The p90 wait is

    W90 = S x ln(10 C(c, a)) / (c - a)   if C(c, a) > 0.1, else 0,

and a pod's predicted p90 is the slowest model's batch-1 p90 plus W90. Exponential service
is pessimistic next to the nearly constant service time of a traced model, which keeps the
SLO check on the safe side.
"""
from __future__ import annotations

import math


def erlang_c(c: int, a: float) -> float:
    """Probability that an arrival waits in M/M/c with offered load a (in servers)."""
    if a <= 0:
        return 0.0
    if a >= c:
        return 1.0
    # Erlang B by its stable recurrence, then C from B.
    b = 1.0
    for k in range(1, c + 1):
        b = a * b / (k + a * b)
    rho = a / c
    return b / (1 - rho + rho * b)


def wait_p90_ms(cores: int, utilisation: float, service_ms: float) -> float:
    """p90 of the queueing wait at a given per-pod utilisation (a fraction of all its cores)."""
    if utilisation <= 0:
        return 0.0
    if utilisation >= 1:
        return math.inf
    a = utilisation * cores
    c_wait = erlang_c(cores, a)
    if c_wait <= 0.1:
        return 0.0
    return service_ms * math.log(10 * c_wait) / (cores - a)


def predicted_p90_ms(cores: int, utilisation: float, service_ms: float, slowest_p90_ms: float) -> float:
    return slowest_p90_ms + wait_p90_ms(cores, utilisation, service_ms)
