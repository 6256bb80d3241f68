"""The solve's time budget: one object that says when each stage must end.

A plan gets `--time-limit` seconds in all, counted from before the demand model is built. The
stages end at fixed shares of it: the solver, then the re-plan of part-empty nodes, then emptying
part-filled servers, which has the rest. The solver's own budget runs from when it starts to its
end (at least a second): column generation ends at a share of it, and each rounding after it
gets a share to round and another to choose instance sizes and place, for as many roundings as
fit before the solver's end (the first always runs). The re-planner splits its budget between packing new
and displaced models and consolidation the same way. The shares say when a stage should stop, not
how long it runs: a stage that overruns (one HiGHS solve past its limit) leaves the later ones
less, and a stage that finds its end already past either skips (the re-plan of part-empty nodes)
or runs for its floor (the solver's second, `until`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

# Of the whole time limit.
SOLVE = 0.9  # the solver ends here; the re-plan of part-empty nodes runs to IMPROVE
IMPROVE = 0.95
# Of the solver's own budget.
COLUMN_GENERATION = 0.5  # when column generation ends: room for two roundings after it
ROUNDING_EACH = 0.18  # how long each rounding may take
PLACING_EACH = 0.05  # and then choosing its instance sizes, placing and scoring it
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
