"""jsii's run-time type checks, off for the command.

jsii checks every struct's Python types with typeguard before it crosses to Node: a third of synth's time.
The tests build the same constructs with the checks on (and Node checks the types again), so
`python -m charts synth` turns them off unless CHARTS_TYPECHECK=1, and so does each process it builds
servers in. Process-wide: only the command and its workers call this. Imports nothing of the charts'.
"""
from __future__ import annotations

import os
from typing import Any


def _no_type_check(**_kwargs: Any) -> None:
    """Stands in for jsii's typeguard check."""


def skip_jsii_type_checks(force: bool = False) -> None:
    if os.environ.get("CHARTS_TYPECHECK") == "1" and not force:
        return
    import jsii._type_checking as checking

    if hasattr(checking, "_resolved_check"):
        checking._resolved_check = _no_type_check


def type_checks_on() -> bool:
    """Whether this process checks types (a worker process is told to do as its parent does)."""
    from jsii import _type_checking

    return getattr(_type_checking, "_resolved_check", None) is not _no_type_check
