"""One destination shard: the parts of delivery wired together.

``submit`` takes records from ingest and returns once every one of them is final: delivered
(and its key durably journaled), suppressed as a duplicate, dead-lettered with its reason, or
parked durably. Only if even parking fails (NATS unreachable), or parking is off and the
retries ran out, does ``submit`` raise, and the ingest side NAKs those source messages.

    submit -> Intake (dedup, a queue per priority lane) -> flush loop cuts batches, lane by lane
           -> SendPolicy (one attempt)
           -> journal + dedup index | split | dead letters | retry | ParkAndReplay

A destination in trouble never holds its source for long: see ``park_replay.py``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
from collections import Counter
from operator import attrgetter
from typing import Any, Callable, NamedTuple

import msgspec

from router.config import Destination
from router.delivery.dedup_index import DedupIndex
from router.delivery.key_hash import key_hash
from router.delivery.intake import DEAD_LETTERED, DELIVERED, PARKED, Completion, Intake, PendingRecord
from router.delivery.lanes import LANES
from router.delivery.latency import LatencyRecorder
from router.delivery.park_events import ParkEventLog
from router.tracing import record_trace
from router.delivery.park_replay import ParkAndReplay
from router.delivery.ports import DeadLetters, DedupJournal, ParkedRecord, Parking, Sink
from router.delivery.send_policy import (BREAKER_OPEN, DEAD_LETTER, DONE, GIVE_UP, PARK, RETRY, SPLIT,
                                         SendPolicy)
from router.delivery.stats import DestinationStats, SubmitResult
from router.policies.adaptive_concurrency import AdaptiveConcurrency
from router.policies.circuit_breaker import CircuitBreaker
from router.policies.rate_limit import TokenBucket
from router.policies.retry import RetryPolicy, retry_until_done
from router.policies.retry_after import RetryAfterGate
from router.sinks.outcome import Permanent, Transient

__all__ = ["DestinationShard", "RetriesExhausted", "ShardPorts", "batch_id"]

log = logging.getLogger(__name__)
_LANE = attrgetter("lane")  # of a PendingRecord


def _set(future: asyncio.Future | None) -> None:
    if future is not None and not future.done():
        future.set_result(None)


class RetriesExhausted(Exception):
    """A batch kept failing and could not be parked; its records were not delivered (the source is NAKed)."""


class ShardPorts(NamedTuple):
    sink: Sink
    journal: DedupJournal
    dead_letters: DeadLetters
    parking: Parking | None = None  # None: parking off, a failing batch NAKs its source messages


def batch_id(destination: str, keys: list[str]) -> str:
    """Deterministic: a retried batch carries the same ``Idempotency-Key`` header."""
    h = hashlib.blake2b(destination.encode(), digest_size=16)
    if keys:  # each key after a NUL byte, hashed in one update (one per key cost more than the rest of it)
        h.update(("\x00" + "\x00".join(keys)).encode())
    return h.hexdigest()


class DestinationShard:
    def __init__(self, name: str, cfg: Destination, ports: ShardPorts, index: DedupIndex, *,
                 clock: Callable[[], float] = time.monotonic, rand: Callable[[], float] = random.random,
                 gate: Any = None, make_limiter: Callable[[Destination], Any] | None = None) -> None:
        # ``gate`` / ``make_limiter``: limits shared with the rest of the pool (the sink actor builds
        # them, see ``router/policies/shared_limits.py``); none: this shard's own.
        self._make_limiter = make_limiter
        self.name = name
        self.cfg = cfg
        self.ports = ports
        self.index = index
        self._clock = clock
        self._rand = rand
        self.intake = Intake(index, cfg.batch, cfg.lanes.as_tuple())
        self.breaker = CircuitBreaker(cfg.circuit_breaker, clock, on_change=self._breaker_changed)
        self.concurrency = AdaptiveConcurrency(cfg.concurrency, adaptive=cfg.adaptive_concurrency, clock=clock)
        self.policy = SendPolicy(ports.sink, retry=RetryPolicy(cfg.retry, rand), breaker=self.breaker,
                                 concurrency=self.concurrency, gate=gate or RetryAfterGate(clock),
                                 limiter=self._limiter(cfg), clock=clock)
        self.park = (ParkAndReplay(name, ports.parking, self.breaker, cfg.buffer)
                     if cfg.park and ports.parking is not None else None)
        self.stats = DestinationStats()
        self.latency = LatencyRecorder(name, self.stats)
        self.park_events = ParkEventLog(name)
        self.held: set[int] = set()  # ordering keys held behind a dead letter (`after_dead_letter: hold`)
        self._sending: set[asyncio.Task] = set()
        self._loops: list[asyncio.Task] = []
        self._closing = False

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._loops.append(loop.create_task(self._flush_loop()))
        if self.park is not None:
            await self.park.open()
            self._loops.append(loop.create_task(self._park_stale_loop()))
            self._loops.append(loop.create_task(self.park.replay_loop(
                read_size=lambda: self.cfg.batch.max_records * self.concurrency.current,
                max_batch=self.cfg.batch.max_records, deliver=self._deliver_parked,
                on_drained=self.intake.wakeup.set, stopping=lambda: self._closing)))

    def _breaker_changed(self, old: str, new: str, reason: str) -> None:
        log.log(logging.WARNING if new == "open" else logging.INFO, "%s: circuit breaker %s -> %s: %s",
                self.name, old, new, reason,
                extra={"event": "breaker", "destination": self.name, "from_state": old, "to_state": new,
                       "reason": reason})

    def _limiter(self, cfg: Destination) -> Any:
        if self._make_limiter is not None:
            return self._make_limiter(cfg)
        return TokenBucket(cfg.rate_limit.per_second, cfg.rate_limit.burst, self._clock) if cfg.rate_limit else None

    async def reconfigure(self, cfg: Destination) -> None:
        """New settings in place (a live reload): no restart, no journal replay. Requests already in
        flight finish under the old ones; `pool_size` and `park` need new shards (the supervisor's job)."""
        old, self.cfg = self.cfg, cfg
        self.intake.batch = cfg.batch
        self.intake.scheduler.shares = cfg.lanes.as_tuple()
        self.breaker.cfg = cfg.circuit_breaker
        await self.concurrency.reconfigure(cfg.concurrency, cfg.adaptive_concurrency)
        self.policy.retry = RetryPolicy(cfg.retry, self._rand)
        if cfg.rate_limit != old.rate_limit:
            self.policy.limiter = self._limiter(cfg)
        if self.park is not None:
            self.park.buffer = cfg.buffer
        reconfigure_sink = getattr(self.ports.sink, "reconfigure", None)
        if reconfigure_sink is not None:
            reconfigure_sink(cfg)
        self.intake.wakeup.set()  # a smaller batch or a shorter linger may let the queue go now

    def snapshot(self) -> DestinationStats:
        s = self.stats
        s.queued, s.in_flight_keys, s.known_keys = self.intake.queued, len(self.intake.in_flight), len(self.index)
        s.lane_queued = {LANES[lane]: len(q) for lane, q in enumerate(self.intake.lanes) if q}
        s.park_backlog = self.park.backlog if self.park else 0
        s.parked = self.park.parked if self.park else 0
        s.requests, s.concurrency_limit = self.policy.requests, self.concurrency.current
        s.breaker_state, s.breaker_opened = self.breaker.state, self.breaker.opened_count
        s.request_seconds, s.batch_records = self.policy.request_seconds, self.policy.batch_records
        self.park_events.report(s, self.breaker)
        return msgspec.structs.replace(s)

    # -- intake -----------------------------------------------------------------------------------

    async def submit(self, records: Any, revision: int = 0, admitted: asyncio.Future | None = None) -> SubmitResult:
        """``records``: a ``RecordBatch``; ``revision``: the route table revision that routed them.
        ``admitted`` is set once the records have their place (queued or parked): from then on
        records submitted later go behind them."""
        group = Completion(0, asyncio.get_running_loop().create_future())  # counted once placed
        adm = self.intake.admit(records, revision, group, self._clock())
        self.stats.duplicates += adm.duplicates
        items: list[PendingRecord] = []
        parked_now = 0
        to_queue, to_park = self._place(adm.fresh)
        for reason, fresh in to_park:
            assert self.park is not None
            if self.intake.busy or self.intake.queued:
                await self._wait_until_behind(fresh)
            await self.park.park([(i.key, i.payload, i.origin, revision, i.okey, i.lane) for i in fresh], reason)
            self._count_lanes(self.stats.lane_parked, map(_LANE, fresh))
            parked_now += len(fresh)
        if to_queue:
            if to_park:  # queued after the parking above: from now on
                now = self._clock()
                for i in to_queue:
                    i.queued_at = now
            items = to_queue
            group.remaining = len(items)
            self.intake.enqueue(items)
            _set(admitted)
            await group.future
        _set(admitted)
        if adm.waits_on:
            await asyncio.gather(*(g.future for g in adm.waits_on))
        self.latency.observe(records, items)
        outcomes = [i.outcome for i in items]
        failures = [o for o in outcomes if isinstance(o, BaseException)]
        if failures:
            raise RetriesExhausted(f"{self.name}: {len(failures)} of {len(items)} records not delivered: {failures[0]}")
        return SubmitResult(delivered=outcomes.count(DELIVERED), duplicates=adm.duplicates,
                            dead_lettered=outcomes.count(DEAD_LETTERED), parked=outcomes.count(PARKED) + parked_now)

    def _place(self, fresh: list[PendingRecord]) -> tuple[list[PendingRecord], list[tuple[str, list[PendingRecord]]]]:
        """Which new records join the queue and which go straight to the park (with the reason): a
        lane parks while the breaker is open, while it has records parked earlier, or when it and
        the lanes above it would hold more than ``buffer.max_records``; so low is parked first."""
        if self.park is None or not fresh or self.park.parks_none(self.intake.queued, len(fresh)):
            return fresh, []
        incoming = [0] * len(LANES)
        for lane, n in Counter(map(_LANE, fresh)).items():
            incoming[lane] += n
        reasons: list[str | None] = []
        above = queued = 0
        for lane in range(len(LANES)):
            above += incoming[lane]
            queued += len(self.intake.lanes[lane])
            reasons.append(self.park.reason_to_park(lane, queued, above) if incoming[lane] else None)
        if not any(reasons):
            return fresh, []
        to_park: dict[str, list[PendingRecord]] = {}
        to_queue = []
        for f in fresh:
            reason = reasons[f.lane]
            if reason is None:
                to_queue.append(f)
            else:
                to_park.setdefault(reason, []).append(f)
        return to_queue, list(to_park.items())

    @staticmethod
    def _count_lanes(into: dict[str, int], lanes: Any) -> None:
        for lane, n in Counter(lanes).items():  # counted in C, then one update per lane
            name = LANES[lane]
            into[name] = into.get(name, 0) + n

    # -- batching ---------------------------------------------------------------------------------

    def _lanes_to_park(self) -> frozenset[int]:
        """Lanes whose queued records go to the park, not the destination: all while the breaker is
        open, else those with records parked earlier (they go behind them)."""
        return self.park.lanes_behind() if self.park is not None else frozenset()

    async def _flush_loop(self) -> None:
        intake = self.intake
        while True:
            if not intake.queued:
                if self._closing:
                    return
                intake.wakeup.clear()
                await intake.wakeup.wait()
                continue
            behind = self._lanes_to_park()
            if behind and intake.queued_in(behind):
                parkable = intake.take_parkable(behind)
                if parkable:
                    reason = (f"circuit breaker {self.breaker.state}: {self.breaker.last_reason}"
                              if not self.breaker.allows_traffic() else "behind records parked earlier")
                    await self._park_items(parkable, reason)
                    continue
            lanes = intake.waiting_lanes(behind)
            if not lanes:  # only records waiting for their sequence's batch on its way: wait for it
                intake.wakeup.clear()
                await intake.wakeup.wait()
                continue
            # A partial batch waits for more records only while a batch of this shard is on its way
            # (Nagle's rule): under load that fills batches, and an idle destination gets the records
            # at once instead of ``linger`` later.
            wait = intake.oldest(lanes) + self.cfg.batch.linger - self._clock()
            if not intake.is_full() and wait > 0 and not self._closing and self.concurrency.in_flight:
                intake.wakeup.clear()
                try:
                    await asyncio.wait_for(intake.wakeup.wait(), wait)
                except asyncio.TimeoutError:
                    pass
                continue
            await self.concurrency.acquire()
            batch = intake.take_batch(self._lanes_to_park())  # (the park may have changed while we waited)
            if not batch:
                await self.concurrency.release()
                if intake.waiting_lanes(self._lanes_to_park()):  # every one waits for its sequence's batch on its way
                    intake.wakeup.clear()
                    await intake.wakeup.wait()
                continue  # (or they were parked while we waited for a slot)
            self._spawn(self._deliver(batch))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def close(self) -> None:
        """Deliver (or park) what is queued, then stop."""
        self._closing = True
        self.intake.wakeup.set()
        flush, *others = self._loops
        for t in others:  # parking stale records and replaying the park stop here
            t.cancel()
        await flush  # it empties the queue before it returns
        await asyncio.gather(*others, return_exceptions=True)
        if self._sending:
            await asyncio.gather(*self._sending, return_exceptions=True)

    # -- parking ----------------------------------------------------------------------------------

    async def _park_items(self, items: list[PendingRecord], reason: str) -> None:
        """Move queued or failing records to the park and settle them as parked (or failed, if that fails)."""
        assert self.park is not None
        try:
            await self.park.park([(i.key, i.payload, i.origin, i.revision, i.okey, i.lane) for i in items], reason)
        except Exception as exc:
            self.intake.settle(items, RetriesExhausted(f"could not park: {exc}"))
        else:
            self._count_lanes(self.stats.lane_parked, map(_LANE, items))
            self.intake.settle(items, PARKED)

    async def _wait_until_behind(self, fresh: list[PendingRecord]) -> None:
        """Before parking records that carry an ordering key, let the earlier records of that key that
        are queued or on their way reach the destination or the park first."""
        okeys = {f.okey for f in fresh if f.okey}
        while okeys and self.intake.ahead_of(okeys):
            released = self.intake.released.watch()
            self.intake.wakeup.set()
            try:
                await asyncio.wait_for(released.wait(), 0.5)
            except asyncio.TimeoutError:
                pass

    async def _park_stale_loop(self) -> None:
        """A record that waited ``buffer.max_wait`` goes to the park, so the source is not held up."""
        max_wait = self.cfg.buffer.max_wait
        every = max(min(max_wait / 4, 0.25), 0.01)
        while not self._closing:
            await asyncio.sleep(every)
            cutoff = self._clock() - max_wait
            stale = self.intake.take_while_free(lambda i: i.queued_at <= cutoff)  # the queue is in arrival order
            if stale:
                await self._park_items(stale, f"waited over {max_wait:g}s for {self.name}")

    async def _deliver_parked(self, records: list[ParkedRecord], probe: bool) -> list[str | None]:
        """Deliver records read from the park, through the same dedup; each one's outcome."""
        intake = self.intake
        group = Completion(0, asyncio.get_running_loop().create_future())
        now = self._clock()
        items: list[PendingRecord] = []
        waits: list[tuple[int, PendingRecord | Completion | None]] = []
        hashes = [key_hash(rec.key) for rec in records]
        known = self.index.contains_many(hashes).tolist()
        for rec, h, was_known in zip(records, hashes, known):
            if was_known:
                waits.append((h, None))  # already delivered
                continue
            other = intake.claim(h, group)
            if other is not None:
                waits.append((h, other))  # another delivery has it in hand
                continue
            item = PendingRecord(h, rec.key, rec.payload, rec.origin, rec.okey, rec.lane, "", rec.revision, group, now)
            items.append(item)
            waits.append((h, item))
        group.remaining = len(items)
        if probe and not items:
            self.breaker.release_probe()
        step = self.cfg.batch.max_records
        ordered = any(i.okey for i in items)
        for i in range(0, len(items), step):
            if ordered and i and items[i - 1].outcome not in (DELIVERED, DEAD_LETTERED):
                # The batch before did not get through: stop here; the rest goes back to the park
                # (NAKed) and comes back after it, in order.
                intake.settle(items[i:], RetriesExhausted("behind a parked record that was not delivered"))
                break
            await self._wait_for_turn(items[i:i + step])
            await self.concurrency.acquire()
            if ordered:  # one batch after the other: a sequence split over two batches keeps its order
                await self._deliver(items[i:i + step], from_park=True)
            else:
                self._spawn(self._deliver(items[i:i + step], from_park=True))
        if items:
            await group.future
        others = {w for _, w in waits if isinstance(w, Completion)}
        if others:
            await asyncio.gather(*(g.future for g in others))
        outcomes: list[str | None] = []
        known_now = self.index.contains_many([h for h, _ in waits]).tolist()
        for (h, w), is_known in zip(waits, known_now):
            if isinstance(w, PendingRecord):
                outcome = w.outcome if w.outcome in (DELIVERED, DEAD_LETTERED) else None
                self.stats.replayed += outcome == DELIVERED
            else:  # known, or settled by another delivery: final if the index has it now
                outcome = DELIVERED if is_known else None
            outcomes.append(outcome)
        return outcomes

    async def _wait_for_turn(self, chunk: list[PendingRecord]) -> None:
        """Parked records take their lane's turn against the queued lanes: a low-priority backlog in
        the park gets its share, and no more, while orders queue."""
        lane = max(i.lane for i in chunk)
        while not self._closing and not self.intake.my_turn(lane, len(chunk), self._lanes_to_park()):
            turned = self.intake.turned.watch()
            try:
                await asyncio.wait_for(turned.wait(), 0.05)
            except asyncio.TimeoutError:
                pass

    # -- sending ----------------------------------------------------------------------------------

    async def _deliver(self, batch: list[PendingRecord], from_park: bool = False) -> None:
        """Runs holding one concurrency slot, which it gives back at the end."""
        whole = batch
        try:
            if self.held and not from_park:  # a replay (of fixed dead letters, say) is what lifts a hold
                batch = await self._dead_letter_held(batch)
            if batch:
                await self._send(batch, from_park)
        except Exception as exc:  # never leave a caller waiting on a future nobody resolves
            log.exception("%s: delivery failed", self.name)
            self.intake.settle(whole, exc)
        finally:
            if not from_park:  # a batch cut from the queue held its ordering keys (replays go one by one)
                self.intake.release(whole)
            await self.concurrency.release()
            self.intake.wakeup.set()  # a partial batch that waited for this one may go now (its slot is free)

    async def _behind(self, first: list[PendingRecord], second: list[PendingRecord]) -> list[PendingRecord]:
        """After the first half of a split ordered batch: records of the second half whose sequence
        has a record in the first half that did not get through follow it (held with it, parked
        behind it, or back to the source); returns the rest, to send."""
        stuck = {i.okey: i.outcome for i in first if i.okey and i.outcome != DELIVERED}
        if self.cfg.after_dead_letter == "continue":
            stuck = {k: o for k, o in stuck.items() if o != DEAD_LETTERED}
        if not stuck:
            return second
        follow = [i for i in second if i.okey in stuck]
        if follow:
            dead = [i for i in follow if stuck[i.okey] == DEAD_LETTERED]
            parked = [i for i in follow if stuck[i.okey] == PARKED]
            failed = [i for i in follow if stuck[i.okey] not in (DEAD_LETTERED, PARKED)]
            if dead:
                await self._dead_letter(dead, Permanent("held: an earlier record of its ordering key was dead-lettered"))
            if parked:
                await self._park_items(parked, "behind an earlier record of its ordering key")
            if failed:
                self.intake.settle(failed, RetriesExhausted("behind an earlier record of its ordering key"))
        return [i for i in second if i.okey not in stuck]

    async def _dead_letter_held(self, batch: list[PendingRecord]) -> list[PendingRecord]:
        """With `after_dead_letter: hold`: records of an ordering key whose earlier record was
        dead-lettered follow it to the dead letters (in order), so a replay restores the sequence.
        Returns the records that go on."""
        held = [i for i in batch if i.okey in self.held]
        if not held:
            return batch
        await self._dead_letter(held, Permanent("held: an earlier record of its ordering key was dead-lettered"))
        return [i for i in batch if i.okey not in self.held]

    async def _send(self, batch: list[PendingRecord], from_park: bool = False) -> None:
        keys = [i.key for i in batch]
        payloads = [i.payload for i in batch]
        cids = [i.cid for i in batch]
        bid = batch_id(self.name, keys)
        revision = batch[0].revision
        can_park = self.park is not None
        attempts = 0
        while True:
            outcome = await self.policy.attempt(bid, keys, payloads, revision, cids,
                                                respect_breaker=can_park and not from_park)
            if outcome is BREAKER_OPEN:
                await self._park_items(batch, f"circuit breaker {self.breaker.state}: {self.breaker.last_reason}")
                return
            attempts += 1
            step = self.policy.next_step(outcome, attempts, len(batch), from_park=from_park, can_park=can_park)
            if step == DONE:
                hashes = [i.h for i in batch]
                shards = [i.okey or i.h for i in batch] if any(i.okey for i in batch) else None
                await retry_until_done(lambda: self.ports.journal.commit(hashes, shards), f"{self.name}: dedup journal")
                if from_park and self.held:  # a replayed sequence is back in order: its key flows again
                    self.held.difference_update(i.okey for i in batch)
                self.index.add_many(hashes)
                self.stats.delivered += len(batch)
                self._count_lanes(self.stats.lane_delivered, map(_LANE, batch))
                self.intake.settle(batch, DELIVERED)
                return
            if step == SPLIT:  # find the records at fault; the others still get through
                mid = len(batch) // 2
                if any(i.okey for i in batch):  # the first half first: a sequence may span both
                    first, second = batch[:mid], batch[mid:]
                    await self._send(first, from_park)
                    second = await self._behind(first, second)
                    if second:
                        await self._send(second, from_park)
                else:
                    await asyncio.gather(self._send(batch[:mid], from_park), self._send(batch[mid:], from_park))
                return
            if step == DEAD_LETTER:
                assert isinstance(outcome, Permanent)
                await self._dead_letter(batch, outcome)
                return
            assert isinstance(outcome, Transient)
            if step == PARK:
                await self._park_items(batch, f"{outcome.reason} (after {attempts} attempts)")
                return
            if step == GIVE_UP:
                self.stats.exhausted_batches += not from_park
                self.intake.settle(batch, RetriesExhausted(f"{outcome.reason} (after {attempts} attempts)"))
                return
            assert step == RETRY
            self.stats.retries += 1
            delay = self.policy.backoff(attempts, outcome)
            log.info("%s: %s; retry %d in %.2fs", self.name, outcome.reason, attempts, delay)
            await asyncio.sleep(delay)

    async def _dead_letter(self, batch: list[PendingRecord], outcome: Permanent) -> None:
        dlq = self.ports.dead_letters
        letters = [dlq.destination_failure(self.name, i.key, i.payload, outcome.reason, status=outcome.status,
                                           response=outcome.response, origin=i.origin, order_key=i.okey)
                   for i in batch]
        if self.cfg.after_dead_letter == "hold":
            self.held.update(i.okey for i in batch if i.okey)
        # The dead letter must be stored before the source is acked.
        await retry_until_done(lambda: dlq.publish(letters), f"{self.name}: dead-letter publish")
        log.warning("%s: %d records dead-lettered: %s", self.name, len(batch), outcome.reason,
                    extra={"event": "dead_letter", "destination": self.name, "count": len(batch),
                           "reason": outcome.reason, "status": outcome.status, "idempotency_key": batch[0].key,
                           "correlation_id": record_trace(batch[0].payload).correlation_id,
                           "origin": batch[0].origin})
        self.stats.dead_lettered += len(batch)
        self.intake.settle(batch, DEAD_LETTERED)
