"""What a destination shard needs from the world outside it, as Protocols.

Each port has a production implementation (an HTTP or NATS sink in ``router/sinks``; the
JetStream journal, parking lot and dead-letter publisher in ``router/jetstream``) and an
in-memory one (``memory_ports.py``), so the delivery logic runs the same way in a unit test,
in simulated time, as it does in a sink actor.
"""

from __future__ import annotations

from typing import Any, Protocol

from router.delivery.lanes import NORMAL
from router.sinks.outcome import Outcome

__all__ = ["DeadLetters", "DedupJournal", "ParkedRecord", "Parking", "Record", "Sink"]

# (idempotency key, encoded record, origin "<source>/<stream seq>", route table revision that routed it,
#  ordering key hash or 0, priority lane)
Record = tuple[str, bytes, str, int, int, int]


class Sink(Protocol):
    """A destination kind: sends one batch and says what happened."""

    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def send(self, batch_id: str, keys: list[str], payloads: list[bytes], revision: int = 0,
                   correlation_ids: list[str] | None = None) -> Outcome:
        """``revision``: the route table revision that routed every record of the batch (0: unknown).
        ``correlation_ids``: each record's, when known ("" or None: in the record, as always)."""
        ...


class DedupJournal(Protocol):
    """Durable memory of the keys delivered; ``commit`` raises if they were not stored. ``shards``:
    per key, the hash that chose its shard (its ordering key's, when it is not the key's own), so
    a shard that starts loads exactly its own keys."""

    async def commit(self, hashes: list[int], shards: list[int] | None = None) -> None: ...


class ParkedRecord:
    """A record read back from the park; ``handle`` is the parking implementation's own token."""

    __slots__ = ("key", "payload", "origin", "revision", "okey", "seq", "handle", "lane")

    def __init__(self, key: str, payload: bytes, origin: str, revision: int = 0, handle: Any = None,
                 okey: int = 0, seq: int = 0, lane: int = NORMAL) -> None:
        self.key, self.payload, self.origin, self.revision, self.handle = key, payload, origin, revision, handle
        self.okey = okey
        self.lane = lane
        self.seq = seq  # its place in the park: records are parked in order, so in sequence order


class Parking(Protocol):
    """Where a shard's records wait, durably and in order, while the destination cannot take them."""

    async def open(self) -> int:
        """Ready to park and to read back; returns how many records are parked already."""
        ...

    async def park(self, records: list[Record], reason: str) -> None:
        """Store the records durably, in order; raises if any was not stored."""
        ...

    async def fetch(self, n: int, timeout: float) -> list[ParkedRecord]:
        """Up to ``n`` parked records, oldest first; a record not acked is fetched again later."""
        ...

    async def ack(self, record: ParkedRecord) -> None:
        """The record is final (delivered or dead-lettered): it leaves the park."""
        ...

    async def nak(self, record: ParkedRecord, delay: float) -> None:
        """Not delivered yet: fetch it again after ``delay`` seconds."""
        ...


class DeadLetters(Protocol):
    """Records a destination refused for good, stored with the reason before the source is acked."""

    def destination_failure(self, destination: str, key: str, record: bytes, reason: str, *,
                            status: int | None = None, response: str = "", origin: str = "",
                            order_key: int = 0) -> Any: ...

    async def publish(self, letters: list[Any]) -> None: ...
