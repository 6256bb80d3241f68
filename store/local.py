"""file:// stores: a folder on this machine. Every write goes to a temporary file in the target's folder,
is fsynced and renamed into place, so readers and concurrent writers never see a partial object."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

from store.base import FILE_MODE, Store, check_key, check_prefix
from store.errors import NotFoundError, StoreError


def replace_atomically(target: Path, fill: Callable[[BinaryIO], None]) -> None:
    """Write through `fill` into a temporary file beside `target`, fsync it, then rename it over `target`."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            fill(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def copy_into(source: Path) -> Callable[[BinaryIO], None]:
    def fill(out: BinaryIO) -> None:
        with open(source, "rb") as src:
            shutil.copyfileobj(src, out, 1 << 20)

    return fill


class FileStore(Store):
    read_workers = 4

    def __init__(self, root: Path) -> None:
        self.root = root.absolute()
        self.uri = self.root.as_uri()
        if self.root.exists() and not self.root.is_dir():
            raise StoreError(f"store {self.uri} is a file, not a folder: point the store URI at a folder")

    def describe(self, key: str) -> str:
        return str(self.root / key)

    def path(self, key: str) -> Path:
        return self.root / check_key(key)

    def read_bytes(self, key: str) -> bytes:
        try:
            return self.path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise NotFoundError(self.not_found(key)) from None

    def write_bytes(self, key: str, data: bytes) -> None:
        replace_atomically(self.path(key), lambda f: f.write(data))

    def upload_file(self, local_path: Path, key: str) -> None:
        if not Path(local_path).is_file():
            raise StoreError(f"cannot upload {local_path} to {self.describe(key)}: no such file")
        replace_atomically(self.path(key), copy_into(Path(local_path)))

    def download_file(self, key: str, local_path: Path) -> None:
        source = self.path(key)
        if not source.is_file():
            raise NotFoundError(self.not_found(key))
        replace_atomically(Path(local_path), copy_into(source))

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def list_sizes(self, prefix: str = "") -> dict[str, int]:
        check_prefix(prefix)
        # Walk only the deepest folder the prefix names, then filter by the rest of it.
        folder = self.root / prefix.rsplit("/", 1)[0] if "/" in prefix else self.root
        found: dict[str, int] = {}
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            rel = Path(dirpath).relative_to(self.root).as_posix()
            for name in filenames:
                if name.startswith("."):
                    continue  # temporary files of writes in progress
                key = name if rel == "." else f"{rel}/{name}"
                if key.startswith(prefix):
                    try:
                        found[key] = os.stat(os.path.join(dirpath, name)).st_size
                    except FileNotFoundError:
                        continue  # removed while listing
        return found
