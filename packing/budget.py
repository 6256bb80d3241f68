"""The solve's time budget: one object that says when each stage must end.

A plan gets `--time-limit` seconds in all, counted from before the demand model is built. The
stages end at fixed shares of it: the solver, then the re-plan of part-empty nodes, then emptying
part-filled servers, which has the rest. The solver's own budget runs from when it starts to its
end (at least a second): column generation ends at a share of it, closing the LP's part-used
multi-slot shapes gets a share after it, and each rounding after that gets a share to round and
another to choose instance sizes and place (`rounding_window`): the first always runs; later ones
run while at least half of those shares is left, the last scaled down to end with the solver, so
no time is left over. The re-planner splits its budget between packing new and displaced models
and consolidation the same way. The shares say when a stage should stop, not how long it runs: a
stage that overruns (one HiGHS solve past its limit) leaves the later ones less, and a stage that
finds its end already past either skips (the re-plan of part-empty nodes) or runs for its floor
(the solver's second, `until`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional, Tuple

# Of the whole time limit.
SOLVE = 0.9  # the solver ends here; the re-plan of part-empty nodes runs to IMPROVE
IMPROVE = 0.95
# Of the solver's own budget.
COLUMN_GENERATION = 0.5  # when column generation ends: room for two roundings after it
PART_NODES = 0.03  # how long closing the LP's part-used multi-slot shapes may take (packing/solve/sizes.py)
ROUNDING_EACH = 0.18  # how long each rounding may take
PLACING_EACH = 0.05  # and then choosing its instance sizes, placing and scoring it
# A later rounding runs while this share of ROUNDING_EACH + PLACING_EACH is left. Cut short, it
# leaves more models to the greedy cover, but roundings of one LP differ by several per cent once
# placed and emptied, so one more candidate pays: on the mixed 3,040 catalogue at 60 s (seed 7,
# 2 shared cores, 2026-12-04, three interleaved runs each) the plans' median fell from $29.99/h
# (the second rounding skipped in two runs of three, 18 s unused) to $28.28/h.
ROUNDING_AT_LEAST = 0.5
# Of a re-plan's budget: packing what must move, with or without consolidation after it.
REPLAN_PACK = 0.9
REPLAN_PACK_THEN_CONSOLIDATE = 0.6


@dataclass(frozen=True)
class TimeBudget:
    """`seconds` from `start` (time.perf_counter())."""

    start: float
    seconds: float

    @staticmethod
    def until(deadline: float, floor_s: float = 1.0) -> TimeBudget:
        """From now to `deadline`, at least `floor_s` seconds."""
        now = time.perf_counter()
        return TimeBudget(now, max(deadline - now, floor_s))

    @property
    def deadline(self) -> float:
        return self.start + self.seconds

    def at(self, share: float) -> float:
        """The moment `share` of the budget has passed."""
        return self.start + share * self.seconds

    def left(self, floor_s: float = 0.0) -> float:
        """Seconds left now, at least `floor_s`."""
        return max(floor_s, self.deadline - time.perf_counter())


def rounding_window(budget: TimeBudget, k: int, now: float) -> Optional[Tuple[float, float]]:
    """When the solver's rounding `k` (0 first), starting `now`, must end, and when choosing its
    instance sizes and placing it must: its shares of `budget`, or for a later rounding that
    many scaled down to what is left; None when that is under ROUNDING_AT_LEAST of them."""
    rounding_s, placing_s = ROUNDING_EACH * budget.seconds, PLACING_EACH * budget.seconds
    scale = 1.0 if k == 0 else min(1.0, (budget.deadline - now) / (rounding_s + placing_s))
    if scale < ROUNDING_AT_LEAST:
        return None
    return now + scale * rounding_s, now + scale * (rounding_s + placing_s)
