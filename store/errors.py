"""The store's errors: every message says what is wrong and what to do about it."""
from __future__ import annotations


class StoreError(Exception):
    """The store cannot be reached, a URI is malformed, or an object is missing."""


class NotFoundError(StoreError):
    """A key is absent from the store (the message names the store URI and the key)."""


class IntegrityError(StoreError):
    """Bytes do not match the sha256 or size a manifest lists for them."""
