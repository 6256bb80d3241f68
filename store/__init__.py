"""The artifact store (ARCHITECTURE.md, "Store layout"): file://DIR, a folder path, or s3://bucket/prefix.

    artifacts/<sha256>/<files...>, artifacts/<sha256>/manifest.json   one traced bundle; the manifest last
    models/<model-id>/<processor>.json                                 its StoreEntry; published after the bundle

Kept to Python 3.10 syntax and APIs: this package also runs inside the Neuron images (checked by vermin).
"""
from store.base import Store
from store.bundles import fetch_bundle, publish_bundle, verify_local
from store.entries import entry_key, list_entries, publish_entry, read_entries, read_entry
from store.errors import IntegrityError, NotFoundError, StoreError
from store.local import FileStore
from store.manifests import MANIFEST, describe_files, file_sha256, manifest_bytes, write_manifest
from store.uri import open_store

__all__ = [
    "MANIFEST", "FileStore", "IntegrityError", "NotFoundError", "S3Store", "Store", "StoreError", "describe_files", "entry_key",
    "fetch_bundle", "file_sha256", "list_entries", "manifest_bytes", "open_store", "publish_bundle", "publish_entry",
    "read_entries", "read_entry", "verify_local", "write_manifest",
]


def __getattr__(name: str):
    if name == "S3Store":  # boto3 is imported only when S3 is used
        from store.s3 import S3Store

        return S3Store
    raise AttributeError(f"module 'store' has no attribute {name!r}")
