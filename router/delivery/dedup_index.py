"""Which idempotency keys a destination shard already has: windowed and memory-bounded.

Keys are kept as 64-bit BLAKE2b hashes (8 bytes on the journal, one int in memory): at ten
million keys per destination inside one window the chance of any collision is about 3e-6.
Entries live in time buckets (1/256 of the window), so expiry and the size bound drop whole
buckets in O(1) per key instead of scanning.
"""

from __future__ import annotations

import hashlib
import time
from collections import deque
from typing import Callable, Iterable

__all__ = ["DedupIndex", "key_hash"]


def key_hash(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")


class DedupIndex:
    def __init__(self, window: float, max_keys: int, clock: Callable[[], float] = time.time) -> None:
        self.window = window
        self.max_keys = max_keys
        self._clock = clock
        self._bucket_seconds = max(window / 256.0, 0.001)
        self._bucket_of: dict[int, int] = {}
        self._buckets: deque[tuple[int, list[int]]] = deque()

    def __len__(self) -> int:
        return len(self._bucket_of)

    def _bucket(self, at: float) -> int:
        return int(at // self._bucket_seconds)

    def contains(self, h: int) -> bool:
        b = self._bucket_of.get(h)
        return b is not None and b >= self._bucket(self._clock() - self.window)

    def add_many(self, hashes: Iterable[int], at: float | None = None) -> None:
        """Remember hashes as delivered at ``at`` (journal replay passes the original time)."""
        now = self._clock()
        at = now if at is None else at
        if at < now - self.window:
            return
        b = self._bucket(at)
        if not self._buckets or self._buckets[-1][0] != b:
            if self._buckets and self._buckets[-1][0] > b:
                # Out-of-order replay: fold into the newest bucket (expires a little later, never sooner).
                b = self._buckets[-1][0]
            else:
                self._buckets.append((b, []))
        bucket = self._buckets[-1][1]
        for h in hashes:
            self._bucket_of[h] = b
            bucket.append(h)
        self.evict()

    def evict(self) -> None:
        oldest_valid = self._bucket(self._clock() - self.window)
        while self._buckets and (self._buckets[0][0] < oldest_valid or len(self._bucket_of) > self.max_keys):
            b, hashes = self._buckets.popleft()
            for h in hashes:
                if self._bucket_of.get(h) == b:
                    del self._bucket_of[h]
