"""Opening a store from its URI: file://DIR, a plain folder path, or s3://bucket/prefix[?options]."""
from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from store.base import Store
from store.errors import StoreError
from store.local import FileStore

USAGE = "store URI must be file://DIR, a folder path, or s3://bucket/prefix"
S3_OPTIONS = ("endpoint_url", "region", "max_attempts", "connect_timeout", "read_timeout")
BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def open_store(uri: str | Path) -> Store:
    """A Store for `uri`. A path without a scheme is a folder (relative to the working directory).

    file://DIR takes an absolute path (file:///abs/dir); file://rel/dir is read as the relative folder rel/dir.
    S3 options (see store.s3) go in the query: s3://bucket/prefix?endpoint_url=http://127.0.0.1:5000&max_attempts=1."""
    if isinstance(uri, Path):
        return FileStore(uri)
    text = str(uri).strip()
    if not text:
        raise StoreError(f"{USAGE}, got an empty string")
    if "://" not in text:
        return FileStore(Path(text))
    scheme = text.split("://", 1)[0].lower()
    if scheme == "file":
        return _file_store(text)
    if scheme == "s3":
        return _s3_store(text)
    raise StoreError(f"{USAGE}, got {text!r}")


def _file_store(text: str) -> FileStore:
    parts = urlsplit(text)
    if parts.query or parts.fragment:
        raise StoreError(f"a file:// store URI takes no options ('?' or '#'), got {text!r}")
    host = "" if parts.netloc in ("", "localhost") else parts.netloc
    path = unquote(host + parts.path)
    if not path:
        raise StoreError(f"{USAGE}, got {text!r} (no folder)")
    return FileStore(Path(path))


def _s3_store(text: str) -> Store:
    # boto3 takes ~0.4 s to import: only when an s3:// store is opened.
    from store.s3 import DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAX_ATTEMPTS, DEFAULT_READ_TIMEOUT, S3Store

    parts = urlsplit(text)
    bucket = parts.netloc
    if not BUCKET.match(bucket):
        raise StoreError(
            f"{USAGE}, got {text!r}: {bucket!r} is not a bucket name (3-63 lower-case letters, digits, '.' and '-')"
        )
    if parts.fragment:
        raise StoreError(f"an s3:// store URI takes no '#' part, got {text!r}")
    query = parse_qs(parts.query, keep_blank_values=True, strict_parsing=False)
    unknown = sorted(set(query) - set(S3_OPTIONS))
    if unknown:
        raise StoreError(f"unknown option(s) {', '.join(unknown)} in store URI {text!r}: known are {', '.join(S3_OPTIONS)}")
    options = {name: values[-1] for name, values in query.items()}
    prefix = unquote(parts.path).strip("/")
    if prefix and any(p in ("", ".", "..") or p.startswith(".") for p in prefix.split("/")):
        raise StoreError(f"the prefix {prefix!r} of store URI {text!r} has an empty, '.', '..' or hidden segment")
    return S3Store(
        uri=text,
        bucket=bucket,
        prefix=prefix,
        endpoint_url=options.get("endpoint_url") or None,
        region=options.get("region") or None,
        max_attempts=_number(text, options, "max_attempts", DEFAULT_MAX_ATTEMPTS, int),
        connect_timeout=_number(text, options, "connect_timeout", DEFAULT_CONNECT_TIMEOUT, float),
        read_timeout=_number(text, options, "read_timeout", DEFAULT_READ_TIMEOUT, float),
    )


def _number(text: str, options: dict[str, str], name: str, default: float, kind: type) -> float:
    if name not in options:
        return default
    try:
        value = kind(options[name])
    except ValueError:
        value = -1
    if value < 0 or (value == 0 and name != "max_attempts"):
        least = "0 or more" if name == "max_attempts" else "a positive number"
        raise StoreError(f"option {name} in store URI {text!r} must be {least}, got {options[name]!r}")
    return value
