"""Reading contract files with errors that name the file, the entry and the field, and writing
them atomically so a failed run never leaves a half-written file behind."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Type, TypeVar, Union

import yaml
from pydantic import BaseModel, ValidationError

T = TypeVar("T", bound=BaseModel)
PathLike = Union[str, "os.PathLike[str]"]

# The C loader parses large catalogues an order of magnitude faster than the pure-Python one.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class ContractError(ValueError):
    """An input file breaks its contract. The message says which file, entry and field, and why."""


def format_location(loc: Iterable[Any]) -> str:
    """('models', 17, 'rps') -> 'models[17].rps'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _describe(error: dict) -> str:
    kind, ctx, got = error["type"], error.get("ctx") or {}, error.get("input")
    bounds = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}
    if kind in bounds:
        limit = next(iter(ctx.values())) if ctx else "?"
        if isinstance(limit, float) and limit.is_integer():
            limit = int(limit)
        return f"must be {bounds[kind]} {limit}, got {got!r}"
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        return "is not a known field (check its spelling against ARCHITECTURE.md)"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected')}, got {got!r}"
    if kind in ("float_parsing", "float_type", "int_parsing", "int_type", "int_from_float"):
        return f"must be a {'whole ' if kind.startswith('int') else ''}number, got {got!r}"
    if kind == "too_short":
        return f"must have at least {ctx.get('min_length')} item(s)"
    if kind in ("value_error", "assertion_error"):
        return str(ctx.get("error", error["msg"])).removeprefix("Value error, ")
    return f"{error['msg']}, got {got!r}"


def validation_messages(label: str, exc: ValidationError) -> list:
    lines = []
    for error in exc.errors(include_url=False):
        # Errors inside dict keys carry '[key]' markers that say nothing to a user.
        loc = [p for p in error["loc"] if not (isinstance(p, str) and p.startswith("[key]"))]
        where = format_location(loc)
        lines.append(f"{label}: {where + ': ' if where else ''}{_describe(error)}")
    return lines


def parse(cls: Type[T], data: Any, label: str) -> T:
    """Validate already-parsed data; `label` names its origin in every message."""
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        lines = validation_messages(label, exc)
        more = f"\n(and {len(lines) - 20} more)" if len(lines) > 20 else ""
        raise ContractError("\n".join(lines[:20]) + more) from None


def parse_json(cls: Type[T], raw: bytes, label: str) -> T:
    """A contract from JSON bytes (a store object, an HTTP body); errors name `label`."""
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ContractError(f"{label}: not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ContractError(f"{label}: must be a JSON object, got {type(data).__name__}")
    return parse(cls, data, label)


def read_data(path: PathLike) -> Any:
    """YAML or JSON (by suffix) from a file, with a clear error when it cannot be read."""
    p = Path(path)
    if not p.is_file():
        raise ContractError(f"{p}: no such file")
    text = p.read_text(encoding="utf-8")
    try:
        if p.suffix == ".json":
            return json.loads(text)
        return yaml.load(text, Loader=_YAML_LOADER)
    except json.JSONDecodeError as exc:
        raise ContractError(f"{p.name}: not valid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ContractError(f"{p.name}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None


def load(cls: Type[T], path: PathLike) -> T:
    """Read a contract file. Raises ContractError naming the file, the entry and the field."""
    data = read_data(path)
    if not isinstance(data, dict):
        raise ContractError(f"{Path(path).name}: must be a mapping at the top level, got {type(data).__name__}")
    return parse(cls, data, Path(path).name)


def write_atomic(path: PathLike, data: Union[str, bytes]) -> Path:
    """Write to a temporary file beside `path`, fsync, then rename over it: all or nothing."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return p


def write_json_atomic(path: PathLike, obj: Any) -> Path:
    return write_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")
