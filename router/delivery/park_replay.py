"""Parking and replay: a shard's records wait durably while the destination cannot take them.

A record is parked when the breaker is not closed, the buffer is full for its lane, it waited
longer than ``buffer.max_wait``, or its retries ran out. A parked record is final for the source
(it was stored before the source is acked). From the first parked record of a priority lane on,
every new record of that lane joins the park behind it, first in first out, until the replayer
has drained it: that keeps the lane's records in order and the park bounded by what the
destination missed. The buffer fills low first: a lane's records count against
``buffer.max_records`` together with those of the lanes above it only, so when stock updates
fill it, orders still queue (and go first), and the stock updates wait in the park.

The replayer waits while the breaker is open, probes a half-open breaker with small reads,
and once it is closed delivers the park in order through the shard (the same dedup, so a
record delivered by another path is acked without being sent again).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable

from router.config import BufferConfig
from router.delivery.intake import DEAD_LETTERED, DELIVERED
from router.delivery.lanes import LANES
from router.delivery.ports import ParkedRecord, Parking, Record
from router.policies.circuit_breaker import HALF_OPEN, OPEN, CircuitBreaker

__all__ = ["ParkAndReplay"]

log = logging.getLogger(__name__)

PROBE_RECORDS = 10  # records read for one half-open probe
NAK_DELAY = 1.0  # seconds before a parked record that was not delivered is read again


class ParkAndReplay:
    def __init__(self, name: str, parking: Parking, breaker: CircuitBreaker, buffer: BufferConfig) -> None:
        self.name = name
        self.parking = parking
        self.breaker = breaker
        self.buffer = buffer
        self.backlog = 0  # records parked and not yet replayed
        # The same per priority lane: new records of a lane with a backlog queue up behind it. After
        # a restart the lanes of what is parked are not known: every lane waits until it is drained.
        self.lane_backlog = [0] * len(LANES)
        self.parked = 0
        self._order = asyncio.Lock()  # parks are stored one after the other, in the order asked
        # Park sequence numbers of records with an ordering key that were sent back (NAKed) and
        # have not come back and been delivered: nothing after them goes before they do.
        self._held_back: set[int] = set()
    async def open(self) -> None:
        self.backlog = await self.parking.open()
        self.lane_backlog = [self.backlog] * len(LANES)

    def lanes_behind(self) -> frozenset[int]:
        """The lanes whose new records go to the park, behind their records parked earlier."""
        if not self.breaker.allows_traffic():
            return frozenset(range(len(LANES)))
        return frozenset(lane for lane, n in enumerate(self.lane_backlog) if n > 0)

    def parks_none(self, queued: int, incoming: int) -> bool:
        """Whether no lane has a ``reason_to_park`` for ``incoming`` records arriving at a queue of
        ``queued``, whatever their lanes (the usual case, checked once for a whole submit)."""
        return (self.breaker.allows_traffic() and not any(self.lane_backlog)
                and queued + incoming <= self.buffer.max_records)

    def reason_to_park(self, lane: int, queued: int, incoming: int) -> str | None:
        """Why records of ``lane`` arriving now must go to the park rather than the queue, if they
        must; ``queued`` and ``incoming`` count the records of this lane and the lanes above it."""
        if not self.breaker.allows_traffic():
            return f"circuit breaker {self.breaker.state}: {self.breaker.last_reason}"
        if self.lane_backlog[lane] > 0:
            return "behind records parked earlier"
        if queued + incoming > self.buffer.max_records:
            return f"buffer full ({self.buffer.max_records} records)"
        return None

    async def park(self, records: list[Record], reason: str) -> None:
        """Store durably (raises if not stored); the records are then final for the source."""
        async with self._order:
            await self.parking.park(records, reason)
        self.backlog += len(records)
        for r in records:
            self.lane_backlog[r[5]] += 1
        self.parked += len(records)

    async def replay_loop(self, read_size: Callable[[], int], max_batch: int,
                          deliver: Callable[[list[ParkedRecord], bool], Awaitable[list[str | None]]],
                          on_drained: Callable[[], None], stopping: Callable[[], bool]) -> None:
        """Until ``stopping()``: read the park in order and hand it to ``deliver``, which returns
        each record's outcome (``DELIVERED``, ``DEAD_LETTERED`` or None for not yet)."""
        while not stopping():
            state = self.breaker.state
            if state == OPEN:
                await asyncio.sleep(0.1)
                continue
            probe = state == HALF_OPEN
            if probe and not self.breaker.try_probe():
                await asyncio.sleep(0.05)
                continue
            size = min(max_batch, PROBE_RECORDS) if probe else read_size()
            parked_before = self.parked
            try:
                records = await self.parking.fetch(size, timeout=0.5)
            except Exception as exc:  # NATS away: the client reconnects; the park is not drained for that
                log.warning("%s: reading parked records failed (%s)", self.name, exc)
                if probe:
                    self.breaker.release_probe()
                await asyncio.sleep(0.5)
                continue
            if records and any(r.okey for r in records):
                records = await self._in_sequence(records)
            if not records:
                if probe:
                    self.breaker.release_probe()
                if (self.backlog or any(self.lane_backlog)) and not self._held_back and self.parked == parked_before:
                    self.backlog = 0  # drained: new records go straight to the destination again
                    self.lane_backlog = [0] * len(LANES)
                    on_drained()
                continue
            outcomes = await deliver(records, probe)
            if await self._settle(records, outcomes):
                await asyncio.sleep(NAK_DELAY + 0.1)  # let the NAKed records become due before reading again

    async def _in_sequence(self, records: list[ParkedRecord]) -> list[ParkedRecord]:
        """Records with ordering keys are delivered in park order, whatever order the park hands them
        back in (a NAKed record comes back after its delay, when later ones may already be out): a
        record goes only when no earlier record that was sent back is still out; the others are
        sent back too, to come again after it."""
        present = {r.seq for r in records}
        missing = [s for s in self._held_back if s not in present]
        limit = min(missing) if missing else None
        go, later = [], []
        for r in sorted(records, key=lambda r: r.seq):
            (go if limit is None or r.seq < limit else later).append(r)
        for r in later:
            try:
                await self.parking.nak(r, NAK_DELAY)
                self._held_back.add(r.seq)
            except Exception:  # it comes back after the park's ack wait; still held back by its seq
                self._held_back.add(r.seq)
        if later and not go:
            await asyncio.sleep(0.1)
        return go

    async def _settle(self, records: list[ParkedRecord], outcomes: list[str | None]) -> int:
        """Ack the final records, NAK the others; returns how many were NAKed."""
        done = naked = 0
        for rec, outcome in zip(records, outcomes):
            try:
                if outcome in (DELIVERED, DEAD_LETTERED):
                    self._held_back.discard(rec.seq)
                    await self.parking.ack(rec)
                    done += 1
                    self.lane_backlog[rec.lane] = max(0, self.lane_backlog[rec.lane] - 1)
                else:
                    if rec.okey:
                        self._held_back.add(rec.seq)
                    await self.parking.nak(rec, NAK_DELAY)
                    naked += 1
            except Exception:  # the record stays parked and comes back: dedup covers a repeat
                pass
        self.backlog = max(0, self.backlog - done)
        return naked
