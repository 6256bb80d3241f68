"""Publishing a traced bundle to the store and fetching it back, both checked against its manifest.

A bundle lives at artifacts/<sha256 of its model file>/; its manifest.json is uploaded last, so its
presence marks the artifact complete. Fetches land in a temporary folder and are renamed into place."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from contracts import BundleManifest, ContractError, check_sha256
from store.base import Store
from store.errors import IntegrityError, NotFoundError, StoreError
from store.manifests import MANIFEST, bundle_files, parse_manifest, verify_file

REPUBLISH = "the stored artifact is damaged: re-publish it with python -m tracing trace --force"
DIR_MODE = 0o755


def artifact_prefix(digest: str) -> str:
    return f"artifacts/{digest}/"


def manifest_key(digest: str) -> str:
    return f"artifacts/{digest}/{MANIFEST}"


def read_bundle(bundle_dir: Path) -> tuple[bytes, BundleManifest]:
    """The manifest of a local bundle (bytes and parsed), after checking every file against it."""
    path = Path(bundle_dir) / MANIFEST
    if not path.is_file():
        raise StoreError(f"{bundle_dir} has no {MANIFEST}: a bundle folder needs one (store.write_manifest writes it)")
    raw = path.read_bytes()
    manifest = parse_manifest(raw, str(path))
    unlisted = sorted(set(bundle_files(Path(bundle_dir))) - set(manifest.files))
    if unlisted:
        raise IntegrityError(
            f"{bundle_dir} holds file(s) its {MANIFEST} does not list: {', '.join(unlisted)}: "
            "list them in the manifest or remove them from the bundle folder"
        )
    for name, expected in sorted(manifest.files.items()):
        verify_file(Path(bundle_dir) / name, name, expected, f"bundle {bundle_dir}",
                    "the bundle changed after its manifest was written: rebuild it")
    return raw, manifest


def publish_bundle(store: Store, bundle_dir: Path, force: bool = False) -> str:
    """Upload a checked bundle to artifacts/<digest>/, manifest.json last, and return the digest.

    Nothing is written when a local file does not match the manifest. When the store already holds a
    complete artifact with a byte-identical manifest and files of the listed sizes, nothing is uploaded
    (content-addressed); `force` uploads everything again (to repair a damaged stored artifact)."""
    raw, manifest = read_bundle(Path(bundle_dir))
    digest = manifest.digest
    prefix = artifact_prefix(digest)
    if not force and _already_published(store, digest, raw, manifest):
        return digest
    for name in sorted(manifest.files):
        store.upload_file(Path(bundle_dir) / name, prefix + name)
    store.write_bytes(manifest_key(digest), raw)
    return digest


def _already_published(store: Store, digest: str, raw: bytes, manifest: BundleManifest) -> bool:
    try:
        stored = store.read_bytes(manifest_key(digest))
    except NotFoundError:
        return False
    if stored != raw:
        return False
    prefix = artifact_prefix(digest)
    sizes = store.list_sizes(prefix)
    return all(sizes.get(prefix + name) == f.size for name, f in manifest.files.items())


def fetch_bundle(store: Store, digest: str, cache_dir: Path) -> Path:
    """artifacts/<digest>/ as the local folder cache_dir/<digest>/, every file checked against the manifest.

    A cached copy is checked again and used; a damaged one is fetched anew. A failed fetch leaves nothing."""
    try:
        check_sha256(digest)
    except ValueError as exc:
        raise StoreError(f"artifact digest {exc}") from None
    cache_dir = Path(cache_dir)
    final = cache_dir / digest
    if final.exists():
        try:
            verify_local(final, digest)
            return final
        except (IntegrityError, ContractError, OSError):
            shutil.rmtree(final, ignore_errors=True)
    try:
        raw = store.read_bytes(manifest_key(digest))
    except NotFoundError:
        raise StoreError(f"artifact {digest} is not in {store.uri} (or its publish did not finish)") from None
    manifest = parse_manifest(raw, store.describe(manifest_key(digest)))
    where = f"artifact {digest} in {store.uri}"
    if manifest.digest != digest:
        raise IntegrityError(f"the manifest of {where} names model file sha256 {manifest.digest}: {REPUBLISH}")
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{digest}.", suffix=".tmp", dir=cache_dir))
    try:
        _download(store, digest, manifest, tmp, where)
        (tmp / MANIFEST).write_bytes(raw)
        os.chmod(tmp, DIR_MODE)
        try:
            os.rename(tmp, final)
        except OSError:
            # Another process put it in place first: use theirs if it is sound.
            if not final.exists():
                raise
            verify_local(final, digest)
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _download(store: Store, digest: str, manifest: BundleManifest, tmp: Path, where: str) -> None:
    prefix = artifact_prefix(digest)
    for name, expected in sorted(manifest.files.items()):
        target = tmp / name
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            store.download_file(prefix + name, target)
        except NotFoundError:
            raise IntegrityError(f"{name} of {where} is missing from the store: {REPUBLISH}") from None
        verify_file(target, name, expected, where, REPUBLISH)


def verify_local(folder: Path, digest: str) -> BundleManifest:
    """Check a fetched bundle folder against its own manifest; IntegrityError or ContractError when it is not sound."""
    manifest = parse_manifest((folder / MANIFEST).read_bytes(), str(folder / MANIFEST))
    if manifest.digest != digest:
        raise IntegrityError(f"{folder}: its manifest names model file sha256 {manifest.digest}, not {digest}")
    for name, expected in manifest.files.items():
        verify_file(folder / name, name, expected, f"cached artifact {folder}", "it will be fetched again")
    return manifest
