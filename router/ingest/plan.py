"""What to do with one fetched batch: decode, route, encode, and group by destination shard.

Plain logic, no I/O: the ingest actor fetches and acks, this decides. Each (destination, shard)
gets one list of records per batch, so a batch of 500 messages costs a handful of Ray calls,
never one per message.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Protocol

from router.codecs import EventDecoder, InvalidEvent

from router.delivery.dedup_index import key_hash
from router.record_batch import RecordBatch
from router.ingest.routing import RouteTable

__all__ = ["BatchPlan", "IngestPlanner", "shard_of"]


class Message(Protocol):
    subject: str
    data: bytes
    headers: dict[str, str] | None


def shard_of(key: str, pool_size: int) -> int:
    return 0 if pool_size == 1 else key_hash(key) % pool_size


class BatchPlan:
    __slots__ = ("rejected", "unrouted", "work")

    def __init__(self) -> None:
        self.rejected: list[tuple[int, str]] = []  # (message index, reason): dead-letter, then ack
        self.unrouted: list[int] = []  # no route matched
        # (destination, shard) -> (records, indexes of the messages they came from)
        self.work: dict[tuple[str, int], tuple[RecordBatch, list[int]]] = defaultdict(lambda: (RecordBatch(), []))


class IngestPlanner:
    def __init__(self, source: str, table: RouteTable, pool_sizes: dict[str, int]) -> None:
        self.source = source
        self.table = table
        self.pool_sizes = pool_sizes
        self.decoder = EventDecoder()

    def plan(self, msgs: list[Any], seqs: list[int]) -> BatchPlan:
        out = BatchPlan()
        decode, targets, pools, source = self.decoder.decode, self.table.targets, self.pool_sizes, self.source
        for i, m in enumerate(msgs):
            try:
                ev = decode(m.data, m.headers, m.subject)
            except InvalidEvent as exc:
                out.rejected.append((i, str(exc)))
                continue
            routed = targets(ev)
            if not routed:
                out.unrouted.append(i)
                continue
            origin = f"{source}/{seqs[i]}"
            try:
                encoded = [(t.destination, t.encoder.encode(ev)) for t in routed]
            except Exception as exc:  # an encoder bug must not stop the stream
                out.rejected.append((i, f"encoder failed: {exc.__class__.__name__}: {exc}"))
                continue
            for dest, payload in encoded:
                records, idx = out.work[(dest, shard_of(ev.idempotency_key, pools[dest]))]
                records.append(ev.idempotency_key, payload, origin)
                idx.append(i)
        return out
