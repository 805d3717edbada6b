"""The 64-bit hash of an idempotency key: it picks the key's shard and is what the dedup index
and the journal hold. Its own module, so the ingest side does not load the index (and numpy)."""

from __future__ import annotations

import hashlib

__all__ = ["key_hash"]


def key_hash(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")
