"""argparse types shared by the packing commands: each says what was wrong and what is allowed."""
from __future__ import annotations

import argparse
import math
from typing import Callable


def positive(kind: type = float) -> Callable[[str], float]:
    def parse(text: str):
        try:
            x = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {'whole ' if kind is int else ''}number, got {text!r}") from None
        if not (x > 0 and math.isfinite(x)):
            raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
        return x
    return parse


def fraction(lo: float = 0.0, hi: float = 1.0, *, open_lo: bool = True) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            x = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not ((x > lo if open_lo else x >= lo) and x <= hi):
            raise argparse.ArgumentTypeError(f"must be in {'(' if open_lo else '['}{lo}, {hi}], got {x}")
        return x
    return parse
