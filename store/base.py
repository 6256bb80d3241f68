"""What every store offers: a small object API over '/'-separated keys relative to the store root."""
from __future__ import annotations

import abc
from pathlib import Path

from store.errors import StoreError

# Objects and fetched files are readable by other users (a container running as another uid reading a mounted store).
FILE_MODE = 0o644


def check_key(key: str) -> str:
    """A key is a relative '/'-separated path without empty, '.', '..' or hidden segments.

    Segments starting with '.' are reserved for the temporary files of atomic writes."""
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") or p.startswith(".") for p in parts):
        raise StoreError(
            f"bad store key {key!r}: keys are relative '/'-separated paths without empty, '.', '..' or hidden ('.x') segments"
        )
    return key


def check_prefix(prefix: str) -> str:
    """A listing prefix: '' (everything) or the start of a key."""
    if prefix:
        check_key(prefix[:-1] if prefix.endswith("/") else prefix)
    return prefix


class Store(abc.ABC):
    """An artifact store rooted at `uri` (file://DIR or s3://bucket/prefix)."""

    uri: str
    #: how many small objects it pays to read at once (S3 requests are slow, local reads are not)
    read_workers: int = 1

    def describe(self, key: str) -> str:
        """The full address of `key`, for messages."""
        return f"{self.uri.split('?', 1)[0].rstrip('/')}/{key}"

    def not_found(self, key: str) -> str:
        return f"{key} not found in store {self.uri} ({self.describe(key)})"

    @abc.abstractmethod
    def read_bytes(self, key: str) -> bytes:
        """The object's bytes; NotFoundError (a StoreError) naming the store and key when it is absent."""

    @abc.abstractmethod
    def write_bytes(self, key: str, data: bytes) -> None:
        """Write one object atomically: readers see the old object or the new one, never a part."""

    @abc.abstractmethod
    def upload_file(self, local_path: Path, key: str) -> None:
        """Copy a local file to `key` atomically (S3: multipart above 8 MiB)."""

    @abc.abstractmethod
    def download_file(self, key: str, local_path: Path) -> None:
        """Copy `key` to `local_path` through a temporary file beside it, then rename."""

    @abc.abstractmethod
    def exists(self, key: str) -> bool:
        """Whether the object `key` exists."""

    @abc.abstractmethod
    def list_sizes(self, prefix: str = "") -> dict[str, int]:
        """Every key starting with `prefix`, with its size in bytes."""

    def list_keys(self, prefix: str = "") -> list[str]:
        """Every key starting with `prefix`, sorted."""
        return sorted(self.list_sizes(prefix))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"
