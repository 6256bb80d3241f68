"""Per-model entries: models/<model-id>/<processor>.json, each a StoreEntry, published after its artifact."""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable

from contracts import ContractError, StoreEntry, parse_json
from store.base import Store
from store.bundles import manifest_key
from store.errors import NotFoundError, StoreError

MODELS = "models/"


def entry_key(model_id: str, processor: str) -> str:
    return f"{MODELS}{model_id}/{processor}.json"


def split_entry_key(key: str) -> tuple[str, str] | None:
    """models/<id>/<processor>.json -> (id, processor); None for any other key."""
    parts = key.split("/")
    if len(parts) != 3 or parts[0] != MODELS.rstrip("/") or not parts[2].endswith(".json") or len(parts[2]) == len(".json"):
        return None
    return parts[1], parts[2][: -len(".json")]


def publish_entry(store: Store, entry: StoreEntry) -> None:
    """Write the entry atomically; StoreError when its artifact is not (completely) in the store yet."""
    if not store.exists(manifest_key(entry.artifact)):
        raise StoreError(
            f"cannot publish the entry of {entry.model_id} on {entry.processor}: artifact {entry.artifact} is not in "
            f"{store.uri} (or its publish did not finish): publish the bundle first, the entry last"
        )
    data = json.dumps(entry.to_json_dict(), indent=2) + "\n"
    store.write_bytes(entry_key(entry.model_id, entry.processor), data.encode("utf-8"))


def read_entry(store: Store, model_id: str, processor: str) -> StoreEntry | None:
    """The entry, or None when there is none; ContractError naming the key when it is not a valid entry."""
    key = entry_key(model_id, processor)
    try:
        raw = store.read_bytes(key)
    except NotFoundError:
        return None
    return parse_entry(store, key, raw)


def parse_entry(store: Store, key: str, raw: bytes) -> StoreEntry:
    label = store.describe(key)
    entry = parse_json(StoreEntry, raw, label)
    expected = split_entry_key(key)
    if expected and (entry.model_id, entry.processor) != expected:
        raise ContractError(
            f"{label}: holds the entry of {entry.model_id} on {entry.processor}, not of {expected[0]} on {expected[1]}"
        )
    return entry


def list_entries(store: Store) -> list[tuple[str, str]]:
    """Every (model_id, processor) with an entry, sorted."""
    return sorted(pair for pair in map(split_entry_key, store.list_keys(MODELS)) if pair)


def read_entries(store: Store, model_ids: Iterable[str]) -> dict[str, dict[str, StoreEntry]]:
    """The entries of the given models: {model_id: {processor: entry}}; models without entries are absent.

    Lists models/ once, then reads only the requested models' entries (in parallel where the store is remote)."""
    wanted = set(model_ids)
    keys = [key for key in store.list_keys(MODELS) if (pair := split_entry_key(key)) and pair[0] in wanted]

    def load(key: str) -> StoreEntry | None:
        try:
            return parse_entry(store, key, store.read_bytes(key))
        except NotFoundError:
            return None  # removed since the listing

    if store.read_workers > 1 and len(keys) > 1:
        with ThreadPoolExecutor(max_workers=min(store.read_workers, len(keys))) as pool:
            entries = list(pool.map(load, keys))
    else:
        entries = [load(key) for key in keys]
    out: dict[str, dict[str, StoreEntry]] = {}
    for entry in entries:
        if entry is not None:
            out.setdefault(entry.model_id, {})[entry.processor] = entry
    return out
