"""Revisions of the live config (route table and destination settings) in a NATS KV bucket.

One key per router deployment (``live.key``) in the bucket ``live.bucket``; each ``put`` is a
new revision (the KV's own sequence number, monotonic), the bucket keeps the last 64 of them
for ``router routes history`` and ``rollback``. Every running router watches the key: a watcher
first replays the current value, then updates; revisions older than the one a router runs are
ignored, so an old value can never replace a newer one.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timezone
from typing import AsyncIterator

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext, api
from nats.js.kv import KeyValue

__all__ = ["HISTORY", "Revision", "RevisionStore"]

log = logging.getLogger(__name__)

HISTORY = 64  # the most a NATS KV bucket keeps per key


class Revision:
    __slots__ = ("number", "created", "value")

    def __init__(self, number: int, created: datetime | None, value: bytes) -> None:
        self.number, self.created, self.value = number, created, value


class RevisionStore:
    def __init__(self, js: JetStreamContext, bucket: str, key: str) -> None:
        self._js = js
        self.bucket = bucket
        self.key = key
        self._kv: KeyValue | None = None

    async def open(self, create: bool = True) -> "RevisionStore":
        try:
            self._kv = await self._js.key_value(self.bucket)
        except nats.js.errors.BucketNotFoundError:
            if not create:
                raise
            self._kv = await self._js.create_key_value(api.KeyValueConfig(
                bucket=self.bucket, history=HISTORY, description="peak-router live config revisions",
                storage=api.StorageType.FILE))
        return self

    @property
    def kv(self) -> KeyValue:
        assert self._kv is not None, "open() first"
        return self._kv

    async def latest(self) -> Revision | None:
        try:
            e = await self.kv.get(self.key)
        except nats.js.errors.KeyNotFoundError:
            return None
        return Revision(e.revision or 0, _created(e), e.value or b"")

    async def get(self, number: int) -> Revision | None:
        try:
            e = await self.kv.get(self.key, revision=number)
        except nats.js.errors.KeyNotFoundError:
            return None
        return Revision(e.revision or 0, _created(e), e.value or b"")

    async def put(self, value: bytes) -> int:
        return await self.kv.put(self.key, value)

    async def history(self) -> list[Revision]:
        try:
            entries = await self.kv.history(self.key)
        except nats.js.errors.NoKeysError:
            return []
        return [Revision(e.revision or 0, _created(e), e.value or b"") for e in entries if e.value]

    async def watch(self, stop: asyncio.Event) -> AsyncIterator[Revision]:
        """The current revision, then each new one, until ``stop`` is set."""
        watcher = await self.kv.watch(self.key)
        try:
            while not stop.is_set():
                try:
                    e = await watcher.updates(timeout=1.0)
                except nats.errors.TimeoutError:
                    continue
                if e is None or not e.value:  # end of the initial values, or a delete
                    continue
                yield Revision(e.revision or 0, _created(e), e.value)
        finally:
            try:
                await watcher.stop()
            except Exception:  # the connection went away: nothing to stop
                pass


def _created(entry: object) -> datetime | None:
    ns = getattr(entry, "created", None)  # nanoseconds since the epoch, when the server said
    return datetime.fromtimestamp(ns / 1e9, timezone.utc) if isinstance(ns, int) and ns > 0 else None
