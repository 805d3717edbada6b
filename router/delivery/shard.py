"""One destination shard's delivery: dedup, buffer, batching, concurrency, retries, breaker, parking.

``submit`` takes records from ingest and returns once every one of them is final: delivered (and
its key durably journaled), suppressed as a duplicate, dead-lettered with its reason, or parked
durably in JetStream. Only if even parking fails (NATS unreachable), or parking is off and the
retries ran out, does ``submit`` raise, and the ingest side NAKs those source messages.

A destination in trouble never holds its source for long: while its circuit breaker is not
closed, while its buffer is full, or once a record has waited ``buffer.max_wait``, its records
are parked, and from then on every new record joins the park behind them (first in, first
out) until the replayer has drained it. The replayer probes a half-open breaker with small
batches and, once it closes, delivers the parked records through the same dedup.

Records from concurrent ``submit`` calls share batches (``batch.max_records`` / ``max_bytes`` /
``linger``); requests in flight follow the adaptive concurrency limit; a ``Retry-After`` pauses
every request of this shard until it has passed.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from typing import Any, Callable, Protocol

import msgspec

from router.policies.adaptive_concurrency import AdaptiveConcurrency
from router.policies.circuit_breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker
from router.config import Destination
from router.jetstream.dead_letters import DeadLetterPublisher
from router.delivery.dedup_index import DedupIndex, key_hash
from router.jetstream.parking import KEY_HEADER, ORIGIN_HEADER, ParkingLot
from router.policies.rate_limit import TokenBucket
from router.record_batch import RecordBatch
from router.policies.retry import RetryPolicy
from router.sinks import Delivered, Outcome, Permanent, Transient

__all__ = ["DestinationDelivery", "DestinationStats", "RetriesExhausted", "SubmitResult", "batch_id"]

log = logging.getLogger(__name__)

DELIVERED, DEAD_LETTERED, PARKED = "delivered", "dead_lettered", "parked"


class SubmitResult(msgspec.Struct):
    delivered: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    parked: int = 0


class DestinationStats(msgspec.Struct):
    delivered: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    parked: int = 0
    replayed: int = 0
    requests: int = 0
    retries: int = 0
    exhausted_batches: int = 0
    breaker_opened: int = 0
    queued: int = 0
    in_flight_keys: int = 0
    known_keys: int = 0
    park_backlog: int = 0
    concurrency_limit: int = 0
    breaker_state: str = CLOSED


class RetriesExhausted(Exception):
    """A batch kept failing and could not be parked; its records were not delivered (the source is NAKed)."""


class Sink(Protocol):
    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def send(self, batch_id: str, keys: list[str], payloads: list[bytes]) -> Outcome: ...


class Journal(Protocol):
    async def commit(self, hashes: list[int]) -> None: ...


def batch_id(destination: str, keys: list[str]) -> str:
    """Deterministic: a retried batch carries the same ``Idempotency-Key`` header."""
    h = hashlib.blake2b(destination.encode(), digest_size=16)
    for k in keys:
        h.update(b"\x00")
        h.update(k.encode())
    return h.hexdigest()


class _Group:
    """The records of one ``submit`` (or one replay fetch): done when every one is final.
    One future per group, not per record: at tens of thousands of records a second, a future and a
    gather per record cost more than the delivery itself."""

    __slots__ = ("remaining", "future")

    def __init__(self, n: int, future: asyncio.Future) -> None:
        self.remaining, self.future = n, future

    def settle_one(self) -> None:
        self.remaining -= 1
        if self.remaining == 0 and not self.future.done():
            self.future.set_result(None)


class _Item:
    __slots__ = ("h", "key", "payload", "origin", "group", "queued_at", "outcome")

    def __init__(self, h: int, key: str, payload: bytes, origin: str, group: _Group, queued_at: float) -> None:
        self.h, self.key, self.payload, self.origin = h, key, payload, origin
        self.group, self.queued_at = group, queued_at
        self.outcome: Any = None  # DELIVERED, DEAD_LETTERED, PARKED or the exception that stopped it


class DestinationDelivery:
    def __init__(self, name: str, cfg: Destination, sink: Sink, journal: Journal, index: DedupIndex,
                 dead_letters: DeadLetterPublisher, *, parking: ParkingLot | None = None,
                 retry: RetryPolicy | None = None, limiter: TokenBucket | None = None,
                 breaker: CircuitBreaker | None = None, concurrency: AdaptiveConcurrency | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.cfg = cfg
        self.sink = sink
        self.journal = journal
        self.index = index
        self.dead_letters = dead_letters
        self.parking = parking if cfg.park else None
        self.retry = retry or RetryPolicy(cfg.retry)
        self.limiter = limiter
        self.breaker = breaker or CircuitBreaker(cfg.circuit_breaker, clock)
        self.concurrency = concurrency or AdaptiveConcurrency(cfg.concurrency, adaptive=cfg.adaptive_concurrency,
                                                              clock=clock)
        self._clock = clock
        self.stats = DestinationStats()
        self._queue: list[_Item] = []
        self._queue_bytes = 0
        self._in_flight: dict[int, _Group] = {}  # key hash -> the group delivering it
        self._wakeup = asyncio.Event()
        self._sending: set[asyncio.Task] = set()
        self._loops: list[asyncio.Task] = []
        self._closing = False
        self._park_backlog = 0  # records parked and not yet replayed: new records queue up behind them
        self._not_before = 0.0  # a destination's Retry-After: no request before this (clock time)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._loops.append(loop.create_task(self._flush_loop()))
        if self.parking is not None:
            self._park_backlog = await self.parking.open()
            self._loops.append(loop.create_task(self._park_stale_loop()))
            self._loops.append(loop.create_task(self._replay_loop()))

    def snapshot(self) -> DestinationStats:
        s = self.stats
        s.queued, s.in_flight_keys, s.known_keys = len(self._queue), len(self._in_flight), len(self.index)
        s.park_backlog, s.concurrency_limit = self._park_backlog, self.concurrency.current
        s.breaker_state, s.breaker_opened = self.breaker.state, self.breaker.opened_count
        return msgspec.structs.replace(s)

    # -- intake ---------------------------------------------------------------------------------

    def _park_reason(self, incoming: int) -> str | None:
        if self.parking is None:
            return None
        if not self.breaker.allows_traffic():
            return f"circuit breaker {self.breaker.state}: {self.breaker.last_reason}"
        if self._park_backlog > 0:
            return "behind records parked earlier"
        if len(self._queue) + incoming > self.cfg.buffer.max_records:
            return f"buffer full ({self.cfg.buffer.max_records} records)"
        return None

    async def submit(self, records: RecordBatch) -> SubmitResult:
        loop = asyncio.get_running_loop()
        now = self._clock()
        others: set[_Group] = set()
        fresh: list[tuple[int, str, bytes, str]] = []
        seen: set[int] = set()
        duplicates = 0
        contains, in_flight = self.index.contains, self._in_flight
        for key, payload, origin in records:
            h = key_hash(key)
            if h in seen or contains(h):
                duplicates += 1
                continue
            pending = in_flight.get(h)
            if pending is not None:
                # Same key already on its way: its outcome stands for both.
                others.add(pending)
                duplicates += 1
                continue
            seen.add(h)
            fresh.append((h, key, payload, origin))
        self.stats.duplicates += duplicates

        items: list[_Item] = []
        parked_now = 0
        reason = self._park_reason(len(fresh))
        if reason is not None and fresh:
            await self._park([(k, p, o) for _, k, p, o in fresh], reason)
            parked_now = len(fresh)
        elif fresh:
            group = _Group(len(fresh), loop.create_future())
            for h, key, payload, origin in fresh:
                items.append(_Item(h, key, payload, origin, group, now))
                in_flight[h] = group
                self._queue_bytes += len(payload)
            self._queue.extend(items)
            self._wakeup.set()
            await group.future
        if others:
            await asyncio.gather(*(g.future for g in others))
        outcomes = [i.outcome for i in items]
        failures = [o for o in outcomes if isinstance(o, BaseException)]
        if failures:
            raise RetriesExhausted(f"{self.name}: {len(failures)} of {len(records)} records not delivered: {failures[0]}")
        return SubmitResult(
            delivered=outcomes.count(DELIVERED),
            duplicates=duplicates,
            dead_lettered=outcomes.count(DEAD_LETTERED),
            parked=outcomes.count(PARKED) + parked_now,
        )

    # -- parking ----------------------------------------------------------------------------------

    async def _park(self, records: list[tuple[str, bytes, str]], reason: str) -> None:
        assert self.parking is not None
        await self.parking.park(records, reason)
        self._park_backlog += len(records)
        self.stats.parked += len(records)

    async def _park_items(self, items: list[_Item], reason: str) -> None:
        """Move queued or failing items to the park and settle them as parked (or failed, if that fails)."""
        try:
            await self._park([(i.key, i.payload, i.origin) for i in items], reason)
        except Exception as exc:
            self._settle(items, RetriesExhausted(f"could not park: {exc}"))
        else:
            self._settle(items, PARKED)

    def _take_queue(self, pred: Callable[[_Item], bool]) -> list[_Item]:
        """The longest prefix of the queue whose items match ``pred``."""
        n = 0
        while n < len(self._queue) and pred(self._queue[n]):
            n += 1
        return self._take_first(n)

    def _take_first(self, n: int) -> list[_Item]:
        taken, self._queue = self._queue[:n], self._queue[n:]
        self._queue_bytes -= sum(len(i.payload) for i in taken)
        return taken

    async def _park_stale_loop(self) -> None:
        """A record that waited ``buffer.max_wait`` goes to the park, so the source is not held up."""
        every = max(min(self.cfg.buffer.max_wait / 4, 0.25), 0.01)
        while not self._closing:
            await asyncio.sleep(every)
            cutoff = self._clock() - self.cfg.buffer.max_wait
            stale = self._take_queue(lambda i: i.queued_at <= cutoff)  # the queue is in arrival order
            if stale:
                await self._park_items(stale, f"waited over {self.cfg.buffer.max_wait:g}s for {self.name}")

    async def _replay_loop(self) -> None:
        assert self.parking is not None
        while not self._closing:
            state = self.breaker.state
            if state == OPEN:
                await asyncio.sleep(0.1)
                continue
            probe = state == HALF_OPEN
            if probe and not self.breaker.try_probe():
                await asyncio.sleep(0.05)
                continue
            size = min(self.cfg.batch.max_records, 10) if probe else self.cfg.batch.max_records * self.concurrency.current
            try:
                msgs = await self.parking.fetch(size, timeout=0.5)
            except Exception as exc:  # NATS away: the client reconnects
                log.warning("%s: reading parked records failed (%s)", self.name, exc)
                msgs = []
                await asyncio.sleep(0.5)
            if not msgs:
                if probe:
                    self.breaker.release_probe()
                if self._park_backlog:
                    self._park_backlog = 0  # drained: new records go straight to the destination again
                    self._wakeup.set()
                continue
            await self._replay(msgs, probe)

    async def _replay(self, msgs: list[Any], probe: bool) -> None:
        assert self.parking is not None
        group = _Group(0, asyncio.get_running_loop().create_future())
        now = self._clock()
        items: list[_Item] = []
        waits: list[tuple[Any, int, _Item | _Group | None]] = []
        for m in msgs:
            headers = m.headers or {}
            key = headers.get(KEY_HEADER, "")
            h = key_hash(key)
            if self.index.contains(h):
                waits.append((m, h, None))  # already delivered
                continue
            other = self._in_flight.get(h)
            if other is not None:
                waits.append((m, h, other))  # another delivery has it in hand
                continue
            item = _Item(h, key, m.data, headers.get(ORIGIN_HEADER, ""), group, now)
            self._in_flight[h] = group
            items.append(item)
            waits.append((m, h, item))
        group.remaining = len(items)
        if probe and not items:
            self.breaker.release_probe()
        for i in range(0, len(items), self.cfg.batch.max_records):
            await self.concurrency.acquire()
            self._spawn(self._deliver(items[i:i + self.cfg.batch.max_records], from_park=True))
        if items:
            await group.future
        others = {w for _, _, w in waits if isinstance(w, _Group)}
        if others:
            await asyncio.gather(*(g.future for g in others))
        done = 0
        for m, h, w in waits:
            if isinstance(w, _Item):
                outcome = w.outcome
            else:  # known, or settled by another delivery: delivered if the index has it now
                outcome = DELIVERED if self.index.contains(h) else None
            try:
                if outcome in (DELIVERED, DEAD_LETTERED):
                    await self.parking.ack(m)
                    done += 1
                    self.stats.replayed += outcome == DELIVERED and isinstance(w, _Item)
                else:
                    await self.parking.nak(m, 1.0)
            except Exception:  # the parked record stays parked and comes back: dedup covers a repeat
                pass
        self._park_backlog = max(0, self._park_backlog - done)

    # -- batching ---------------------------------------------------------------------------------

    def _take_batch(self) -> list[_Item]:
        max_records, max_bytes = self.cfg.batch.max_records, self.cfg.batch.max_bytes
        n, size = 0, 0
        for item in self._queue:
            if n and (n >= max_records or size + len(item.payload) > max_bytes):
                break
            n += 1
            size += len(item.payload)
        return self._take_first(n)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _flush_loop(self) -> None:
        linger = self.cfg.batch.linger
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if self.parking is not None and not self.breaker.allows_traffic():
                await self._park_items(self._take_queue(lambda _i: True),
                                       f"circuit breaker {self.breaker.state}: {self.breaker.last_reason}")
                continue
            full = len(self._queue) >= self.cfg.batch.max_records or self._queue_bytes >= self.cfg.batch.max_bytes
            wait = self._queue[0].queued_at + linger - self._clock()
            if not full and wait > 0 and not self._closing:
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), wait)
                except asyncio.TimeoutError:
                    pass
                continue
            await self.concurrency.acquire()
            batch = self._take_batch()
            if not batch:  # parked while we waited for a slot
                await self.concurrency.release()
                continue
            self._spawn(self._deliver(batch))

    async def close(self) -> None:
        """Deliver (or park) what is queued, then stop."""
        self._closing = True
        self._wakeup.set()
        flush, *others = self._loops
        for t in others:  # parking stale records and replaying the park stop here
            t.cancel()
        await flush  # it empties the queue before it returns
        await asyncio.gather(*others, return_exceptions=True)
        if self._sending:
            await asyncio.gather(*self._sending, return_exceptions=True)

    # -- sending ----------------------------------------------------------------------------------

    async def _deliver(self, batch: list[_Item], from_park: bool = False) -> None:
        """Runs holding one concurrency slot, which it gives back at the end."""
        try:
            await self._send(batch, from_park)
        except Exception as exc:  # never leave a caller waiting on a future nobody resolves
            log.exception("%s: delivery failed", self.name)
            self._settle(batch, exc)
        finally:
            await self.concurrency.release()

    def _settle(self, batch: list[_Item], outcome: Any) -> None:
        in_flight = self._in_flight
        for item in batch:
            if item.outcome is None:
                in_flight.pop(item.h, None)
                item.outcome = outcome
                item.group.settle_one()

    async def _respect_retry_after(self) -> None:
        while (wait := self._not_before - self._clock()) > 0:
            await asyncio.sleep(wait)

    async def _send(self, batch: list[_Item], from_park: bool = False) -> None:
        keys = [i.key for i in batch]
        payloads = [i.payload for i in batch]
        bid = batch_id(self.name, keys)
        attempts = 0
        while True:
            await self._respect_retry_after()
            if self.limiter:
                await self.limiter.take()
            if self.parking is not None and not from_park and not self.breaker.allows_traffic():
                await self._park_items(batch, f"circuit breaker {self.breaker.state}: {self.breaker.last_reason}")
                return
            attempts += 1
            self.stats.requests += 1
            started = self._clock()
            outcome = await self.sink.send(bid, keys, payloads)
            rtt = self._clock() - started
            if isinstance(outcome, Delivered):
                self.breaker.on_success(rtt)
                self.concurrency.adjust(rtt, backpressure=False)
                hashes = [i.h for i in batch]
                await self.journal.commit(hashes)
                self.index.add_many(hashes)
                self.stats.delivered += len(batch)
                self._settle(batch, DELIVERED)
                return
            if isinstance(outcome, Permanent):
                self.breaker.on_success(rtt)  # the destination is up; it refused these records
                self.concurrency.adjust(rtt, backpressure=False)
                if outcome.record_level and len(batch) > 1:
                    # Split to find the records at fault; the others still get through.
                    mid = len(batch) // 2
                    await asyncio.gather(self._send(batch[:mid], from_park), self._send(batch[mid:], from_park))
                    return
                await self._dead_letter(batch, outcome)
                return
            assert isinstance(outcome, Transient)
            self.breaker.on_failure(rtt, outcome.reason)
            self.concurrency.adjust(rtt, backpressure=True)
            if outcome.retry_after:
                self._not_before = max(self._not_before, self._clock() + outcome.retry_after)
            exhausted = not self.retry.may_retry(attempts)
            if from_park and (exhausted or self.breaker.state != CLOSED):
                # Leave it parked (the replayer NAKs it); it is tried again after the breaker's pause.
                self._settle(batch, RetriesExhausted(outcome.reason))
                return
            if self.parking is not None and (exhausted or not self.breaker.allows_traffic()):
                await self._park_items(batch, f"{outcome.reason} (after {attempts} attempts)")
                return
            if exhausted:
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
