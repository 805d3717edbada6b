"""In-memory implementations of the delivery ports, for running a shard without NATS or HTTP.

Unit tests drive ``DestinationShard`` through these, in simulated time; they keep what they
were given so a test can count it. The scripted sink decides each answer with a function of
the batch, so outages, throttling and refusals are one line each.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable

from router.delivery.ports import ParkedRecord, Record
from router.sinks.outcome import Delivered, Outcome

__all__ = ["MemoryDeadLetters", "MemoryJournal", "MemoryParking", "ScriptedSink"]


class ScriptedSink:
    """Answers each batch with ``script(keys)``; takes ``latency`` seconds (of the loop's clock), or
    ``latency()`` seconds when it is a function."""

    def __init__(self, script: Callable[[list[str]], Outcome] | None = None,
                 latency: float | Callable[[], float] = 0.0,
                 clock: Callable[[], float] | None = None) -> None:
        self.script = script or (lambda keys: Delivered())
        self.latency = latency
        self.calls: list[list[str]] = []  # keys of every request, in the order they were sent
        self.batch_ids: list[str] = []
        self.correlation_ids: list[list[str] | None] = []  # as each request was given them
        self.sent_at: list[float] = []
        self._delivered_calls: list[tuple[int, list[str]]] = []  # (call number, keys) answered Delivered
        self.in_flight = 0
        self.max_in_flight = 0
        self._clock = clock

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    @property
    def delivered(self) -> list[str]:
        """Keys of the requests answered with Delivered, in the order those requests were sent."""
        return [k for _, keys in sorted(self._delivered_calls) for k in keys]

    async def send(self, batch_id: str, keys: list[str], payloads: list[bytes], revision: int = 0,
                   correlation_ids: list[str] | None = None) -> Outcome:
        call = len(self.calls)
        self.calls.append(list(keys))
        self.batch_ids.append(batch_id)
        self.correlation_ids.append(None if correlation_ids is None else list(correlation_ids))
        self.sent_at.append(self._clock() if self._clock else asyncio.get_running_loop().time())
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.latency() if callable(self.latency) else self.latency)
            outcome = self.script(list(keys))
        finally:
            self.in_flight -= 1
        if isinstance(outcome, Delivered):
            self._delivered_calls.append((call, list(keys)))
        return outcome


class MemoryJournal:
    def __init__(self) -> None:
        self.committed: list[int] = []
        self.fail_next = 0  # the next n commits raise (the shard retries them)

    async def commit(self, hashes: list[int], shards: list[int] | None = None) -> None:
        if self.fail_next:
            self.fail_next -= 1
            raise ConnectionError("journal unavailable")
        self.committed.extend(hashes)


class MemoryDeadLetters:
    def __init__(self) -> None:
        self.letters: list[dict[str, Any]] = []

    def destination_failure(self, destination: str, key: str, record: bytes, reason: str, *,
                            status: int | None = None, response: str = "", origin: str = "",
                            order_key: int = 0) -> dict[str, Any]:
        return {"destination": destination, "key": key, "record": record, "reason": reason, "status": status,
                "response": response, "origin": origin, "order_key": order_key}

    async def publish(self, letters: list[dict[str, Any]]) -> None:
        self.letters.extend(letters)


class MemoryParking:
    """A work queue in arrival order, with JetStream's semantics as the shard sees them: a fetched
    record is out until acked (gone) or NAKed (back, in its place, after the delay)."""

    def __init__(self) -> None:
        self._records: dict[int, Record] = {}  # sequence -> record, in order
        self._out: set[int] = set()  # fetched, neither acked nor NAKed
        self._not_before: dict[int, float] = {}
        self._seq = 0
        self.parked_total = 0
        self.reasons: list[str] = []

    def __len__(self) -> int:
        return len(self._records)

    def keys(self) -> list[str]:
        return [r[0] for r in self._records.values()]

    async def open(self) -> int:
        return len(self._records)

    async def park(self, records: list[Record], reason: str) -> None:
        for r in records:
            self._seq += 1
            self._records[self._seq] = r
        self.parked_total += len(records)
        self.reasons.append(reason)

    async def fetch(self, n: int, timeout: float) -> list[ParkedRecord]:
        now = asyncio.get_running_loop().time()
        out = []
        for seq, (key, payload, origin, revision, okey, lane) in self._records.items():
            if len(out) >= n:
                break
            if seq in self._out or self._not_before.get(seq, 0.0) > now:
                continue
            self._out.add(seq)
            out.append(ParkedRecord(key, payload, origin, revision, seq, okey, seq, lane))
        if not out:
            await asyncio.sleep(timeout)  # a pull request that waits, as JetStream's does
        return out

    async def ack(self, record: ParkedRecord) -> None:
        self._out.discard(record.handle)
        self._records.pop(record.handle, None)

    async def nak(self, record: ParkedRecord, delay: float) -> None:
        self._out.discard(record.handle)
        self._not_before[record.handle] = asyncio.get_running_loop().time() + delay
