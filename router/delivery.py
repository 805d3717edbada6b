"""One destination shard's delivery: dedup, batching, rate limit, retries, dead letters.

``submit`` takes records from ingest and returns once every one of them is final:
delivered (and its key durably journaled), suppressed as a duplicate, or dead-lettered with its
reason. If a batch is still failing after its retries, ``submit`` raises ``RetriesExhausted`` and
the ingest side NAKs those source messages for redelivery later: nothing is acked that is not final.

Records from concurrent ``submit`` calls share batches (``batch.max_records`` / ``max_bytes`` /
``linger``); at most ``concurrency`` requests are in flight. A record whose key is already on its
way waits for that delivery instead of being sent twice.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from typing import Any, NamedTuple, Protocol

import msgspec

from .config import Destination
from .dead_letter import DeadLetterPublisher
from .dedup_index import DedupIndex, key_hash
from .rate_limit import TokenBucket
from .retry import RetryPolicy
from .sinks import Delivered, Outcome, Permanent, Transient

__all__ = ["DestinationDelivery", "DestinationStats", "Record", "RetriesExhausted", "SubmitResult", "batch_id"]

log = logging.getLogger(__name__)

DELIVERED, DEAD_LETTERED = "delivered", "dead_lettered"


class Record(NamedTuple):
    key: str  # idempotency key
    payload: bytes  # the encoded record (JSON object)
    origin: str  # "<source>/<stream seq>", for dead letters and tracing


class SubmitResult(msgspec.Struct):
    delivered: int = 0
    duplicates: int = 0
    dead_lettered: int = 0


class DestinationStats(msgspec.Struct):
    delivered: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    requests: int = 0
    retries: int = 0
    exhausted_batches: int = 0
    queued: int = 0
    in_flight_keys: int = 0
    known_keys: int = 0


class RetriesExhausted(Exception):
    """A batch kept failing transiently; its records were not delivered (the source is NAKed)."""


class Sink(Protocol):
    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def send(self, batch_id: str, keys: list[str], payloads: list[bytes]) -> Outcome: ...


class Journal(Protocol):
    async def commit(self, hashes: list[int], stop: Any = ...) -> None: ...


def batch_id(destination: str, keys: list[str]) -> str:
    """Deterministic: a retried batch carries the same ``Idempotency-Key`` header."""
    h = hashlib.blake2b(destination.encode(), digest_size=16)
    for k in keys:
        h.update(b"\x00")
        h.update(k.encode())
    return h.hexdigest()


class _Item:
    __slots__ = ("h", "key", "payload", "origin", "future", "queued_at")

    def __init__(self, h: int, rec: Record, future: asyncio.Future, queued_at: float) -> None:
        self.h, self.key, self.payload, self.origin = h, rec.key, rec.payload, rec.origin
        self.future, self.queued_at = future, queued_at


class DestinationDelivery:
    def __init__(self, name: str, cfg: Destination, sink: Sink, journal: Journal, index: DedupIndex,
                 dead_letters: DeadLetterPublisher, retry: RetryPolicy | None = None,
                 limiter: TokenBucket | None = None) -> None:
        self.name = name
        self.cfg = cfg
        self.sink = sink
        self.journal = journal
        self.index = index
        self.dead_letters = dead_letters
        self.retry = retry or RetryPolicy(cfg.retry)
        self.limiter = limiter
        self.stats = DestinationStats()
        self._queue: list[_Item] = []
        self._queue_bytes = 0
        self._in_flight: dict[int, asyncio.Future] = {}
        self._slots = asyncio.Semaphore(cfg.concurrency)
        self._wakeup = asyncio.Event()
        self._sending: set[asyncio.Task] = set()
        self._closing = False
        self._flusher: asyncio.Task | None = None

    def start(self) -> None:
        self._flusher = asyncio.get_running_loop().create_task(self._flush_loop())

    def snapshot(self) -> DestinationStats:
        s = self.stats
        s.queued, s.in_flight_keys, s.known_keys = len(self._queue), len(self._in_flight), len(self.index)
        return msgspec.structs.replace(s)

    # -- intake ---------------------------------------------------------------------------------

    async def submit(self, records: list[Record]) -> SubmitResult:
        loop = asyncio.get_running_loop()
        now = loop.time()
        mine: list[asyncio.Future] = []
        others: list[asyncio.Future] = []
        duplicates = 0
        for rec in records:
            h = key_hash(rec.key)
            if self.index.contains(h):
                duplicates += 1
                continue
            pending = self._in_flight.get(h)
            if pending is not None:
                # Same key already on its way (this call or another): its outcome stands for both.
                others.append(pending)
                duplicates += 1
                continue
            fut = loop.create_future()
            self._in_flight[h] = fut
            self._queue.append(_Item(h, rec, fut, now))
            self._queue_bytes += len(rec.payload)
            mine.append(fut)
        self.stats.duplicates += duplicates
        if mine:
            self._wakeup.set()
        outcomes = await asyncio.gather(*mine, return_exceptions=True)
        if others:
            await asyncio.gather(*others, return_exceptions=True)
        failures = [o for o in outcomes if isinstance(o, BaseException)]
        if failures:
            raise RetriesExhausted(f"{self.name}: {len(failures)} of {len(records)} records not delivered: {failures[0]}")
        return SubmitResult(
            delivered=sum(1 for o in outcomes if o == DELIVERED),
            duplicates=duplicates,
            dead_lettered=sum(1 for o in outcomes if o == DEAD_LETTERED),
        )

    # -- batching ---------------------------------------------------------------------------------

    def _take_batch(self) -> list[_Item]:
        max_records, max_bytes = self.cfg.batch.max_records, self.cfg.batch.max_bytes
        n, size = 0, 0
        for item in self._queue:
            if n and (n >= max_records or size + len(item.payload) > max_bytes):
                break
            n += 1
            size += len(item.payload)
        batch, self._queue = self._queue[:n], self._queue[n:]
        self._queue_bytes -= size
        return batch

    async def _flush_loop(self) -> None:
        loop = asyncio.get_running_loop()
        linger = self.cfg.batch.linger
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            full = len(self._queue) >= self.cfg.batch.max_records or self._queue_bytes >= self.cfg.batch.max_bytes
            wait = self._queue[0].queued_at + linger - loop.time()
            if not full and wait > 0 and not self._closing:
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), wait)
                except asyncio.TimeoutError:
                    pass
                continue
            await self._slots.acquire()
            batch = self._take_batch()
            task = loop.create_task(self._deliver(batch))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def close(self) -> None:
        """Deliver what is queued, then stop."""
        self._closing = True
        self._wakeup.set()
        if self._flusher:
            await self._flusher
        if self._sending:
            await asyncio.gather(*self._sending, return_exceptions=True)

    # -- sending ----------------------------------------------------------------------------------

    async def _deliver(self, batch: list[_Item]) -> None:
        try:
            await self._send(batch)
        except Exception as exc:  # never leave a caller waiting on a future nobody resolves
            log.exception("%s: delivery failed", self.name)
            self._settle(batch, exc)
        finally:
            self._slots.release()

    def _settle(self, batch: list[_Item], outcome: Any) -> None:
        for item in batch:
            self._in_flight.pop(item.h, None)
            if not item.future.done():
                if isinstance(outcome, BaseException):
                    item.future.set_exception(outcome)
                else:
                    item.future.set_result(outcome)

    async def _send(self, batch: list[_Item]) -> None:
        keys = [i.key for i in batch]
        payloads = [i.payload for i in batch]
        bid = batch_id(self.name, keys)
        attempts = 0
        while True:
            if self.limiter:
                await self.limiter.take()
            attempts += 1
            self.stats.requests += 1
            outcome = await self.sink.send(bid, keys, payloads)
            if isinstance(outcome, Delivered):
                hashes = [i.h for i in batch]
                await self.journal.commit(hashes)
                self.index.add_many(hashes)
                self.stats.delivered += len(batch)
                self._settle(batch, DELIVERED)
                return
            if isinstance(outcome, Permanent):
                if outcome.record_level and len(batch) > 1:
                    # Split to find the records at fault; the others still get through.
                    mid = len(batch) // 2
                    await asyncio.gather(self._send(batch[:mid]), self._send(batch[mid:]))
                    return
                await self._dead_letter(batch, outcome)
                return
            assert isinstance(outcome, Transient)
            if not self.retry.may_retry(attempts):
                self.stats.exhausted_batches += 1
                self._settle(batch, RetriesExhausted(f"{outcome.reason} (after {attempts} attempts)"))
                return
            self.stats.retries += 1
            delay = self.retry.backoff(attempts, outcome.retry_after)
            log.info("%s: %s; retry %d in %.2fs", self.name, outcome.reason, attempts, delay)
            await asyncio.sleep(delay)

    async def _dead_letter(self, batch: list[_Item], outcome: Permanent) -> None:
        letters = [
            self.dead_letters.destination_failure(
                self.name, i.key, i.payload, outcome.reason, status=outcome.status,
                response=outcome.response, origin=i.origin)
            for i in batch
        ]
        delay = 0.2
        while True:
            try:
                await self.dead_letters.publish(letters)
                break
            except Exception as exc:  # the dead letter must be stored before the source is acked
                log.warning("%s: dead-letter publish failed (%s); retrying in %.1fs", self.name, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        self.stats.dead_lettered += len(batch)
        self._settle(batch, DEAD_LETTERED)
