"""Intake and batching: which records are new, the queue they wait in, and the batches cut from it.

A record is new for a shard when its key is neither in the dedup index (delivered inside the
window) nor on its way already (``in_flight``): a concurrent duplicate waits for the delivery
in hand instead of going out twice. New records join the queue of their priority lane in arrival order; the shard's
flush loop cuts batches of at most ``batch.max_records`` / ``max_bytes`` from the head of the lane
whose turn it is (``lanes.py``). A batch holds records of one lane.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from itertools import repeat
from operator import attrgetter
from typing import Any, Callable

import msgspec

from router.config import BatchConfig
from router.delivery.change_signal import ChangeSignal
from router.delivery.dedup_index import DedupIndex
from router.delivery.lanes import LANES, LaneScheduler

__all__ = ["Admission", "Completion", "Intake", "PendingRecord"]

DELIVERED, DEAD_LETTERED, PARKED = "delivered", "dead_lettered", "parked"


class Completion:
    """The records of one ``submit`` (or one replay read): done when every one is final.
    One future per group, not per record: at tens of thousands of records a second, a future and
    a gather per record cost more than the delivery itself."""

    __slots__ = ("remaining", "future")

    def __init__(self, n: int, future: asyncio.Future) -> None:
        self.remaining, self.future = n, future

    def settle(self, n: int) -> None:
        """``n`` more of its records are final."""
        self.remaining -= n
        if self.remaining == 0 and not self.future.done():
            self.future.set_result(None)


class PendingRecord(msgspec.Struct, eq=False):
    """A record queued for a destination shard: one per record and destination, so a Struct, made
    in C (100 ns against 390 for a class with ``__slots__`` and an ``__init__``), straight from the
    submitted batch's columns. ``eq=False``: compared and hashed by identity."""

    h: int
    key: str
    payload: bytes
    origin: str
    okey: int  # ordering key hash: 0 none
    lane: int
    cid: str  # its correlation id, when the ingest sent it ("": the sink reads it from the record)
    revision: int
    group: Completion
    queued_at: float
    outcome: Any = None  # DELIVERED, DEAD_LETTERED, PARKED or the exception that stopped it


ALL_LANES = frozenset(range(len(LANES)))


class Admission:
    """What the dedup check made of one submitted batch."""

    __slots__ = ("fresh", "duplicates", "waits_on")

    def __init__(self) -> None:
        self.fresh: list[PendingRecord] = []  # the records new to this shard, in order
        self.duplicates = 0
        self.waits_on: set[Completion] = set()  # deliveries in hand that stand for some of these records


class Intake:
    def __init__(self, index: DedupIndex, batch: BatchConfig,
                 shares: tuple[float, float, float] = (70, 20, 10)) -> None:
        self.index = index
        self.batch = batch
        self.in_flight: dict[int, Completion] = {}  # key hash -> the group delivering it
        self.lanes: list[list[PendingRecord]] = [[] for _ in LANES]  # each in arrival order
        self.queued = 0
        self.queue_bytes = 0
        self.scheduler = LaneScheduler(shares)
        self.wakeup = asyncio.Event()
        # Ordering keys with a batch on its way: their later records wait, so a sequence is never
        # sent by two requests at once (the later could overtake the earlier, or its retries).
        self.busy: set[int] = set()
        self.released = ChangeSignal()  # whenever a batch gives its ordering keys back
        self.turned = ChangeSignal()  # whenever a lane's batch is taken: another lane's turn may be next

    def admit(self, records: Any, revision: int, group: Completion, now: float) -> Admission:
        """``records``: a ``RecordBatch`` routed by route table ``revision``; its new records are
        made ready to queue as part of ``group``, queued at ``now``."""
        out = Admission()
        seen: set[int] = set()
        in_flight, fresh = self.in_flight, out.fresh
        hashes = records.key_hashes()
        known = self.index.contains_many(hashes)  # one vectorised lookup for the batch
        columns = (records.keys, records.payloads, records.origins, records.order_key_column(),
                   records.lane_column(), records.correlation_id_column())
        if not known.any() and in_flight.keys().isdisjoint(hashes) and len(set(hashes)) == len(hashes):
            # The usual batch, every record new: made in C, column by column.
            out.fresh = list(map(PendingRecord, hashes, *columns, repeat(revision), repeat(group), repeat(now)))
            return out
        for h, was_known, key, payload, origin, okey, lane, cid in zip(hashes, known.tolist(), *columns):
            if was_known or h in seen:
                out.duplicates += 1
                continue
            pending = in_flight.get(h)
            if pending is not None:  # same key already on its way: its outcome stands for both
                out.waits_on.add(pending)
                out.duplicates += 1
                continue
            seen.add(h)
            fresh.append(PendingRecord(h, key, payload, origin, okey, lane, cid, revision, group, now))
        return out

    def enqueue(self, items: list[PendingRecord]) -> None:
        """Admitted records (of one group) join their lanes' queues and are on their way."""
        if not items:
            return
        lanes = set(map(_LANE, items))
        if len(lanes) == 1:
            self.lanes[lanes.pop()].extend(items)
        else:
            for item in items:
                self.lanes[item.lane].append(item)
        self.in_flight.update(dict.fromkeys(map(_HASH, items), items[0].group))
        self.queue_bytes += sum(map(len, map(_PAYLOAD, items)))
        self.queued += len(items)
        self.wakeup.set()

    def claim(self, h: int, group: Completion) -> Completion | None:
        """Mark a key as being delivered by ``group``; returns the group already delivering it, if any."""
        other = self.in_flight.get(h)
        if other is None:
            self.in_flight[h] = group
        return other

    def settle(self, batch: list[PendingRecord], outcome: Any) -> None:
        pop = self.in_flight.pop
        final = [item for item in batch if item.outcome is None]
        for item in final:
            pop(item.h, None)
            item.outcome = outcome
        for group, n in Counter(map(_GROUP, final)).items():  # counted in C; most batches have one group
            group.settle(n)

    # -- the queue --------------------------------------------------------------------------------

    def queued_in(self, lanes: Any) -> int:
        return sum(len(self.lanes[lane]) for lane in lanes)

    def waiting_lanes(self, exclude: frozenset[int] = frozenset()) -> list[int]:
        return [lane for lane, q in enumerate(self.lanes) if q and lane not in exclude]

    def oldest(self, lanes: list[int]) -> float:
        """When the longest-waiting record of these lanes was queued."""
        return min(self.lanes[lane][0].queued_at for lane in lanes)

    def is_full(self) -> bool:
        return self.queued >= self.batch.max_records or self.queue_bytes >= self.batch.max_bytes

    def take_batch(self, exclude: frozenset[int] = frozenset()) -> list[PendingRecord]:
        """The next batch, from the lane whose turn it is (lanes in ``exclude`` wait): at most
        ``max_records`` and ``max_bytes`` from the head of its queue (a single record larger than
        ``max_bytes`` still goes, alone), all routed by one revision of the route table (the batch
        carries it to the destination). Empty when every waiting record waits for its sequence."""
        waiting = self.waiting_lanes(exclude)
        while waiting:
            lane = self.scheduler.pick(waiting)
            assert lane is not None
            batch = self._take_from(lane)
            if batch:
                self.scheduler.charge(lane, len(batch))
                self.turned.notify()
                return batch
            waiting.remove(lane)  # every record of it waits for its sequence's batch on its way
        return []

    def my_turn(self, lane: int, n: int, exclude: frozenset[int] = frozenset()) -> bool:
        """Whether ``n`` records of ``lane`` from elsewhere (the park) may go now rather than leave the
        turn to a queued lane (lanes in ``exclude`` do not compete: their records go to the park);
        charged to the lane when they may."""
        waiting = self.waiting_lanes(exclude)
        if lane not in waiting:
            waiting.append(lane)
        if self.scheduler.pick(waiting) != lane:
            return False
        self.scheduler.charge(lane, n)
        return True

    def _take_from(self, lane: int) -> list[PendingRecord]:
        queue = self.lanes[lane]
        max_records, max_bytes = self.batch.max_records, self.batch.max_bytes
        busy = self.busy
        if busy and any(i.okey in busy for i in queue):
            return self._take_around_busy(lane, max_records, max_bytes)
        head = queue[:max_records]
        revision = queue[0].revision
        if sum(map(len, map(_PAYLOAD, head))) <= max_bytes and set(map(_REVISION, head)) == {revision}:
            n = len(head)  # the usual batch: the head of the queue, whole
        else:
            n, size = 0, 0
            for item in head:
                if n and (size + len(item.payload) > max_bytes or item.revision != revision):
                    break
                n += 1
                size += len(item.payload)
        batch = self._take_first(lane, n)
        busy.update(i.okey for i in batch if i.okey)
        return batch

    def _take_around_busy(self, lane: int, max_records: int, max_bytes: int) -> list[PendingRecord]:
        """A batch of the lane's records whose ordering key has no batch on its way; the others stay
        queued, in their order, until it is done."""
        busy = self.busy
        taken: list[PendingRecord] = []
        kept: list[PendingRecord] = []
        size, revision = 0, None
        blocked: set[int] = set()  # keys with a record kept back in this pass: their later ones stay too
        for item in self.lanes[lane]:
            full = taken and (len(taken) >= max_records or size + len(item.payload) > max_bytes
                              or item.revision != revision)
            if full or (item.okey and (item.okey in busy or item.okey in blocked)):
                kept.append(item)
                if item.okey:
                    blocked.add(item.okey)
                continue
            if revision is None:
                revision = item.revision
            taken.append(item)
            size += len(item.payload)
        self.lanes[lane] = kept
        self.queued -= len(taken)
        self.queue_bytes -= size
        busy.update(i.okey for i in taken if i.okey)
        return taken

    def release(self, batch: list[PendingRecord]) -> None:
        """A batch is done (whatever its outcome): later records of its ordering keys may go."""
        if self.busy:
            for i in batch:
                self.busy.discard(i.okey)
            self.wakeup.set()
            self.released.notify()

    def ahead_of(self, okeys: set[int]) -> bool:
        """Whether a record of one of these ordering keys is queued or on its way: records of those
        keys arriving now must not go to the park before it."""
        return bool(okeys & self.busy) or any(i.okey in okeys for q in self.lanes for i in q)

    def take_parkable(self, lanes: frozenset[int] = ALL_LANES) -> list[PendingRecord]:
        """Every queued record of these lanes up to the first whose ordering key has a batch on its
        way (those wait for it)."""
        return self.take_while_free(lambda i: True, lanes)

    def take_while_free(self, pred: Callable[[PendingRecord], bool],
                        lanes: frozenset[int] = ALL_LANES) -> list[PendingRecord]:
        """In each of these lanes, the prefix of its queue matching ``pred``, up to the first record
        whose ordering key is busy."""
        busy = self.busy
        return self.take_while(lambda i: pred(i) and not (i.okey and i.okey in busy), lanes)

    def take_while(self, pred: Callable[[PendingRecord], bool],
                   lanes: frozenset[int] = ALL_LANES) -> list[PendingRecord]:
        """In each of these lanes, the longest prefix of its queue whose records match ``pred``."""
        taken: list[PendingRecord] = []
        for lane in sorted(lanes):
            queue = self.lanes[lane]
            n = 0
            while n < len(queue) and pred(queue[n]):
                n += 1
            if n:
                taken += self._take_first(lane, n)
        return taken

    def _take_first(self, lane: int, n: int) -> list[PendingRecord]:
        queue = self.lanes[lane]
        taken, self.lanes[lane] = queue[:n], queue[n:]
        self.queued -= n
        self.queue_bytes -= sum(map(len, map(_PAYLOAD, taken)))
        return taken


_HASH, _PAYLOAD, _LANE = attrgetter("h"), attrgetter("payload"), attrgetter("lane")  # of a PendingRecord
_REVISION, _GROUP = attrgetter("revision"), attrgetter("group")
