"""Durable dedup state: one JetStream stream, one subject per destination.

Why a stream and not a KV bucket: a KV write is one message per key, while the journal writes
one message per delivered batch (8 bytes per key), so it costs one publish per HTTP request or
NATS burst; the stream's ``max_age`` is the dedup window, so JetStream expires old keys for us.
A sink actor that starts (or that Ray restarts) replays its destination's subject and keeps the
keys of its own shard, so changing ``pool_size`` needs no migration.
"""

from __future__ import annotations

import struct
from typing import Callable

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext, api

from router.delivery.dedup_index import DedupIndex
from router.wire import journal_subject

__all__ = ["DedupJournal"]

_HASH = struct.Struct(">Q")


class DedupJournal:
    def __init__(self, js: JetStreamContext, stream: str, destination: str) -> None:
        self._js = js
        self._stream = stream
        self.subject = journal_subject(stream, destination)

    async def commit(self, hashes: list[int]) -> None:
        """Persist delivered keys; raises unless JetStream stored them (the shard retries)."""
        payload = b"".join(_HASH.pack(h) for h in hashes)
        await self._js.publish(self.subject, payload, stream=self._stream, timeout=5)

    async def load(self, index: DedupIndex, keep: Callable[[int], bool]) -> int:
        """Replay this destination's keys (inside the window) into ``index``; returns how many were kept."""
        kept = 0
        try:
            info = await self._js.stream_info(self._stream, subjects_filter=self.subject)
        except nats.js.errors.NotFoundError:
            return 0
        if not info.state.subjects or not info.state.subjects.get(self.subject):
            return 0
        sub = await self._js.pull_subscribe(
            self.subject,
            stream=self._stream,
            config=api.ConsumerConfig(
                ack_policy=api.AckPolicy.NONE,
                deliver_policy=api.DeliverPolicy.ALL,
                inactive_threshold=60.0,
                mem_storage=True,
            ),
        )
        try:
            while True:
                try:
                    msgs = await sub.fetch(1000, timeout=1.0)
                except nats.errors.TimeoutError:
                    break
                for m in msgs:
                    at = m.metadata.timestamp.timestamp()
                    hashes = [h for (h,) in _HASH.iter_unpack(m.data) if keep(h)]
                    index.add_many(hashes, at)
                    kept += len(hashes)
                if msgs and msgs[-1].metadata.num_pending == 0:
                    break
        finally:
            await sub.unsubscribe()
        return kept

