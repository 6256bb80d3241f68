"""JSON for request bodies and replies: orjson where it is installed, else the standard library.

orjson encodes a reply's floats (an embedding is hundreds of them) several times faster than json.dumps and
parses bodies straight from bytes; the server measured less event-loop CPU a request with it
(README, "Serving benchmark"). Either way the output is compact UTF-8 JSON and a bad body raises ValueError,
whose text the protocol modules quote in their 422 message. One difference: a NaN or infinite float encodes as
null with orjson and raises ValueError with json (which would otherwise write non-JSON `NaN`).
"""
from __future__ import annotations

import json
from typing import Any, Callable

try:
    import orjson
except ImportError:  # the server still runs, with the standard library's codec
    orjson = None


def _std_dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")


def _std_loads(data: bytes) -> Any:
    # Decoded first so that only UTF-8 is accepted (json.loads would also take UTF-16 and UTF-32 bytes);
    # UnicodeDecodeError is a ValueError.
    return json.loads(data.decode("utf-8"))


dumps: Callable[[Any], bytes] = orjson.dumps if orjson is not None else _std_dumps
loads: Callable[[bytes], Any] = orjson.loads if orjson is not None else _std_loads


def describe() -> str:
    """Which codec runs, for the start-up log."""
    return "orjson" if orjson is not None else "the standard library's json (orjson is not installed: pip install orjson)"
