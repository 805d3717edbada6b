"""Which idempotency keys a destination shard already has: windowed and memory-bounded.

Keys are kept as 64-bit BLAKE2b hashes (8 bytes on the journal, one int in memory): at ten
million keys per destination inside one window the chance of any collision is about 3e-6.

Entries live in time buckets (1/256 of the window), oldest bucket first, each bucket in the order
its keys were added. Expiry drops whole buckets; the size bound trims the oldest keys one by one
(a bucket may be cut partway), so a burst larger than ``max_keys`` keeps exactly the newest
``max_keys`` and never forgets more than it must. A key added again with a newer time moves to
the newer bucket; its old entry stays behind as a stale entry that eviction skips (it neither
counts toward the bound nor removes the live key). Within one bucket a key's place is its latest
add, too (tracked by a per-bucket count of repeats, which is empty in normal operation).
"""

from __future__ import annotations

import hashlib
import time
from collections import deque
from typing import Callable, Iterable

__all__ = ["DedupIndex", "key_hash"]

BUCKETS_PER_WINDOW = 256


def key_hash(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")


class _Bucket:
    """The keys added during one time slice, oldest first; ``head`` keys at the front are already gone."""

    __slots__ = ("id", "keys", "head", "repeats")

    def __init__(self, id: int) -> None:
        self.id = id
        self.keys: list[int] = []
        self.head = 0
        # key -> earlier entries of the same key in this bucket that are stale (a key added twice
        # in one slice keeps the place of its latest add)
        self.repeats: dict[int, int] = {}


class DedupIndex:
    def __init__(self, window: float, max_keys: int, clock: Callable[[], float] = time.time) -> None:
        if window <= 0 or max_keys < 1:
            raise ValueError(f"dedup index needs window > 0 and max_keys >= 1, got {window!r}, {max_keys!r}")
        self.window = window
        self.max_keys = max_keys
        self._clock = clock
        self._bucket_seconds = max(window / BUCKETS_PER_WINDOW, 0.001)
        self._bucket_of: dict[int, int] = {}  # live key -> id of the bucket holding its latest add
        self._buckets: deque[_Bucket] = deque()  # ascending bucket id

    def __len__(self) -> int:
        return len(self._bucket_of)

    def _bucket(self, at: float) -> int:
        return int(at // self._bucket_seconds)

    def contains(self, h: int) -> bool:
        b = self._bucket_of.get(h)
        return b is not None and b >= int((self._clock() - self.window) // self._bucket_seconds)

    def add_many(self, hashes: Iterable[int], at: float | None = None) -> None:
        """Remember hashes as delivered at ``at`` (journal replay passes the original time)."""
        now = self._clock()
        at = now if at is None else at
        if at < now - self.window:
            return
        b = self._bucket(at)
        buckets = self._buckets
        if buckets and buckets[-1].id == b:
            bucket = buckets[-1]
        elif not buckets or buckets[-1].id < b:
            bucket = _Bucket(b)
            buckets.append(bucket)
        else:
            bucket = self._older_bucket(b)  # out-of-order replay: the bucket its time belongs to
        bucket_of, keys = self._bucket_of, bucket.keys
        get = bucket_of.get
        for h in hashes:
            old = get(h)
            if old is None or old < b:
                bucket_of[h] = b
                keys.append(h)
            elif old == b:
                # Again in the same slice: the new entry is its place, the earlier one goes stale.
                bucket.repeats[h] = bucket.repeats.get(h, 0) + 1
                keys.append(h)
            # else: already held with a newer time, which stands
        self.evict()

    def _older_bucket(self, b: int) -> _Bucket:
        buckets = self._buckets
        i = len(buckets)
        while i > 0 and buckets[i - 1].id > b:
            i -= 1
        if i > 0 and buckets[i - 1].id == b:
            return buckets[i - 1]
        bucket = _Bucket(b)
        buckets.insert(i, bucket)
        return bucket

    def evict(self) -> None:
        """Drop what is out of the window, then the oldest keys while more than ``max_keys`` are held."""
        buckets, bucket_of = self._buckets, self._bucket_of
        oldest_valid = self._bucket(self._clock() - self.window)
        while buckets and buckets[0].id < oldest_valid:
            bucket = buckets.popleft()
            b = bucket.id
            for h in bucket.keys[bucket.head:] if bucket.head else bucket.keys:
                if bucket_of.get(h) == b:
                    del bucket_of[h]
        while len(bucket_of) > self.max_keys:
            self._trim_oldest(len(bucket_of) - self.max_keys)

    def _trim_oldest(self, excess: int) -> None:
        """Remove ``excess`` live keys from the front of the oldest bucket (fewer if it runs out)."""
        bucket = self._buckets[0]
        b, keys, head, repeats = bucket.id, bucket.keys, bucket.head, bucket.repeats
        bucket_of = self._bucket_of
        end = len(keys)
        while excess and head < end:
            h = keys[head]
            head += 1
            if bucket_of.get(h) != b:
                continue  # stale: the key moved to a newer bucket
            n = repeats.get(h)
            if n:
                repeats[h] = n - 1  # stale: a later entry in this bucket is the key's place
                continue
            del bucket_of[h]
            excess -= 1
        if head == end:
            self._buckets.popleft()
        elif head > 4096 and head * 2 > end:
            del keys[:head]  # release the consumed front now and then (amortised O(1) per key)
            head = 0
        bucket.head = head
