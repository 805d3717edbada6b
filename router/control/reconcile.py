"""``router reconcile``: for every event in a window, did each destination it routes to get it?

Each event in the source streams inside the window is decoded and routed with the config's
route table (as the ingest does); for each destination it routes to, its idempotency key is
looked up in what the router keeps:

- ``delivered``: the key is in the destination's dedup journal (``ROUTER_DEDUP``);
- ``parked``: the key waits in the destination's park (``ROUTER_PARKED``);
- ``dead_lettered``: the key (or, for an ingest failure, the source sequence) is in the
  dead-letter stream, with its reason;
- ``in_flight``: none of those, but the source consumer has not acked the event yet (its
  sequence is above the durable's ack floor): the router has not finished it;
- ``unknown``: none of those, and the event was published before the journal's retention
  horizon, so the journal can no longer say whether it was delivered;
- ``unaccounted``: none of those. These are listed with stream, sequence and key.

Duplicates (the same key published again) are one event: counts are of unique keys per
destination and type. With ``destination_keys`` (the keys the destination says it holds), the
delivered keys it does not hold are listed too. Routing uses the config's route table as it is
now; events of a window in which the table changed are judged by it.

It disturbs nothing: every stream is read through an ephemeral consumer with no acks, in memory,
that the server removes when idle (the park, a work queue, by direct gets, since a work queue
allows no second consumer on its subjects); no durable consumer moves. Memory: per destination,
the journal's key hashes as a sorted ``uint64`` array (8 bytes per delivered key); the window's
events are read and classified in chunks, and only unique hashes per (destination, type,
outcome) are kept for the counts (8 bytes each, compacted as they grow); the listings are capped.
"""

from __future__ import annotations

import time
from array import array
from collections import defaultdict
from datetime import datetime, timezone
from typing import Any, Callable, Iterable

import msgspec
import nats.errors
import nats.js.errors
import numpy as np
from nats.js import JetStreamContext

from router.codecs import EventDecoder, InvalidEvent
from router.config import Config
from router.delivery.key_hash import key_hash
from router.ingest.routing import RouteTable, wildcard_match
from router.jetstream.dead_letters import H
from router.jetstream.partitions import consumer_filter, strip_partition
from router.jetstream.stream_reader import batches_until, read_only_consumer
from router.wire import IDEMPOTENCY_KEY, JOURNAL_SHARD_HASHES, journal_subject

__all__ = ["OUTCOMES", "CannotKnow", "Entry", "KeySet", "ReconcileReport", "ReconcileRequest", "UniqueCounter",
           "format_report", "read_key_file", "reconcile"]

DELIVERED, PARKED, DEAD_LETTERED, IN_FLIGHT, UNKNOWN, UNACCOUNTED = range(6)
OUTCOMES = ("delivered", "parked", "dead_lettered", "in_flight", "unknown", "unaccounted")

_CHUNK = 5000  # source events classified together


class KeySet:
    """Sorted unique 64-bit key hashes: 8 bytes per key, vectorised membership."""

    def __init__(self, hashes: np.ndarray | None = None) -> None:
        self._h = np.unique(hashes) if hashes is not None and len(hashes) else np.empty(0, np.uint64)

    @classmethod
    def from_chunks(cls, chunks: Iterable[np.ndarray]) -> "KeySet":
        chunks = [c for c in chunks if len(c)]
        return cls(np.concatenate(chunks).astype(np.uint64, copy=False) if chunks else None)

    def __len__(self) -> int:
        return len(self._h)

    @property
    def nbytes(self) -> int:
        return self._h.nbytes

    def contains(self, hashes: np.ndarray) -> np.ndarray:
        if not len(self._h) or not len(hashes):
            return np.zeros(len(hashes), bool)
        order = np.argsort(hashes)  # sorted needles walk the array in order: about twice as fast
        idx = np.empty(len(hashes), np.intp)
        idx[order] = np.searchsorted(self._h, hashes[order])
        idx[idx == len(self._h)] = 0
        return self._h[idx] == hashes


class UniqueCounter:
    """How many distinct hashes were added, in 8 bytes per distinct hash (compacted as it grows)."""

    def __init__(self, compact_at: int = 1_000_000) -> None:
        self._done = np.empty(0, np.uint64)
        self._pending: list[np.ndarray] = []
        self._n_pending = 0
        self._compact_at = compact_at

    def add(self, hashes: np.ndarray) -> None:
        if len(hashes):
            self._pending.append(hashes)
            self._n_pending += len(hashes)
            if self._n_pending >= max(self._compact_at, len(self._done)):
                self._compact()

    def _compact(self) -> None:
        if self._pending:
            self._done = np.unique(np.concatenate([self._done, *self._pending]))
            self._pending, self._n_pending = [], 0

    def count(self) -> int:
        self._compact()
        return len(self._done)


class ReconcileRequest(msgspec.Struct):
    since: float  # unix seconds
    until: float | None = None
    destinations: list[str] = []  # empty: every destination
    types: list[str] = []  # event type patterns (`order.*`); empty: every type
    destination_keys: list[str] | None = None  # the keys the (one) destination says it holds
    limit: int = 1000  # entries kept per listing


class Entry(msgspec.Struct):
    """One event for one destination, as listed."""

    destination: str
    type: str
    key: str
    source: str
    stream: str
    seq: int
    subject: str
    published_at: str
    reason: str = ""


class CannotKnow(msgspec.Struct):
    what: str
    events: int  # how many (for a stream's lost messages: at most)
    reason: str


class ReconcileReport(msgspec.Struct):
    window: dict[str, str | None]
    destinations: list[str]
    types: list[str]
    events_read: int
    counts: dict[str, dict[str, dict[str, int]]]  # destination -> type -> outcome -> unique keys
    totals: dict[str, dict[str, int]]  # destination -> outcome -> unique keys
    dead_letter_reasons: dict[str, dict[str, int]]  # destination -> reason -> unique keys
    unaccounted: list[Entry]
    unaccounted_total: int
    in_flight: list[Entry]
    ingest: dict[str, int]  # undecodable events in the window, and how many are dead-lettered
    cannot_know: list[CannotKnow]
    journal_keys: dict[str, int]  # destination -> keys in its dedup journal
    missing_at_destination: list[Entry] | None = None
    missing_at_destination_total: int | None = None
    destination_keys: int | None = None
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        missing = self.missing_at_destination_total or 0
        return 1 if self.unaccounted_total or self.ingest.get("unaccounted", 0) or missing else 0


def read_key_file(path: str) -> list[str]:
    """One key a line; blank lines and surrounding whitespace ignored."""
    with open(path, encoding="utf-8") as fh:
        return [line.strip() for line in fh if line.strip()]


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _hashes_of(keys: Iterable[str]) -> np.ndarray:
    return np.fromiter((key_hash(k) for k in keys), np.uint64)


async def _stream_info(js: JetStreamContext, stream: str, subject: str | None = None) -> Any:
    try:
        return await js.stream_info(stream, subjects_filter=subject) if subject else await js.stream_info(stream)
    except nats.js.errors.NotFoundError:
        return None


def _journal_keys(m: Any) -> np.ndarray:
    """The key hashes of one journal message (without the shard hashes some carry after them)."""
    values = np.frombuffer(m.data, dtype=">u8")
    if m.headers and m.headers.get(JOURNAL_SHARD_HASHES):
        values = values[: len(values) // 2]
    return values


async def _read_journal(js: JetStreamContext, cfg: Config, dest: str) -> KeySet:
    subject = journal_subject(cfg.dedup.stream, dest)
    info = await _stream_info(js, cfg.dedup.stream, subject)
    if info is None or not (info.state.subjects or {}).get(subject):
        return KeySet()
    chunks: list[np.ndarray] = []
    sub = await read_only_consumer(js, cfg.dedup.stream, subject)
    try:
        async for msgs in batches_until(sub, info.state.last_seq):
            chunks.extend(_journal_keys(m) for m in msgs if m.data)
    finally:
        await sub.unsubscribe()
    return KeySet.from_chunks(chunks)


async def _first_time(js: JetStreamContext, stream: str, info: Any) -> float | None:
    """When the oldest message still in the stream was stored (stream state does not say)."""
    if not info.state.messages:
        return None
    try:
        m = await js.get_msg(stream, seq=info.state.first_seq, subject=">", next=True)
    except nats.js.errors.NotFoundError:
        return None
    return m.time.timestamp() if m.time else None


async def _journal_horizon(js: JetStreamContext, cfg: Config, now: float) -> float | None:
    """Events published before this may have had their delivery record expired from the journal.

    A delivery is journaled after the event was published, and the journal keeps each record
    ``max_age``: an event published after ``now - max_age`` still has its record if it was
    delivered. Limits that cut by count (messages, bytes) make the oldest message's time count too.
    """
    info = await _stream_info(js, cfg.dedup.stream)
    if info is None:
        return None
    horizon = now - info.config.max_age if info.config.max_age else None
    limited = any((getattr(info.config, k, None) or -1) > 0 for k in ("max_msgs", "max_bytes", "max_msgs_per_subject"))
    if limited and info.state.first_seq > 1:
        first = await _first_time(js, cfg.dedup.stream, info)
        if first is not None:
            horizon = first if horizon is None else max(horizon, first)
    return horizon


async def _read_parked(js: JetStreamContext, cfg: Config, dests: list[str]) -> dict[str, KeySet]:
    """Keys waiting in each destination's park. Direct gets: a work queue allows no other consumer."""
    info = await _stream_info(js, cfg.parking.stream)
    out: dict[str, array] = defaultdict(lambda: array("Q"))  # key hashes, 8 bytes each
    if info is not None and info.state.messages:
        prefix = cfg.parking.subject_prefix
        seq = info.state.first_seq
        while seq <= info.state.last_seq:
            try:
                m = await js.get_msg(cfg.parking.stream, seq=seq, subject=f"{prefix}.>", next=True)
            except nats.js.errors.NotFoundError:
                break
            dest = (m.subject or "")[len(prefix) + 1:].split(".", 1)[0]
            if dest in dests:
                out[dest].append(key_hash((m.headers or {}).get(IDEMPOTENCY_KEY, "")))
            seq = (m.seq or seq) + 1
    return {d: KeySet(np.frombuffer(out[d], np.uint64) if d in out else None) for d in dests}


class _DeadLetters:
    def __init__(self) -> None:
        self.by_dest: dict[str, dict[int, str]] = defaultdict(dict)  # destination -> key hash -> reason
        self.ingest: dict[tuple[str, int], str] = {}  # (source, stream seq) -> reason


async def _read_dead_letters(js: JetStreamContext, cfg: Config, dests: list[str]) -> _DeadLetters:
    out = _DeadLetters()
    info = await _stream_info(js, cfg.dead_letter.stream)
    if info is None or not info.state.messages:
        return out
    reasons: dict[str, str] = {}  # one copy of each reason text
    sub = await read_only_consumer(js, cfg.dead_letter.stream, f"{cfg.dead_letter.subject_prefix}.>")
    try:
        async for msgs in batches_until(sub, info.state.last_seq):
            for m in msgs:
                h = m.headers or {}
                reason = h.get(H.REASON, "")
                reason = reasons.setdefault(reason, reason)
                if h.get(H.STAGE) == "ingest":
                    try:
                        out.ingest[(h.get(H.SOURCE, ""), int(h.get(H.STREAM_SEQ, "")))] = reason
                    except ValueError:
                        pass
                elif h.get(H.DESTINATION) in dests:
                    out.by_dest[h[H.DESTINATION]][key_hash(h.get(H.KEY, ""))] = reason
    finally:
        await sub.unsubscribe()
    return out


async def _ack_floor(js: JetStreamContext, stream: str, durable: str) -> int:
    try:
        info = await js.consumer_info(stream, durable)
    except nats.js.errors.NotFoundError:
        return 0  # the router never consumed this source: nothing of it is final
    return info.ack_floor.stream_seq if info.ack_floor else 0


class _Pending:
    """Events of one chunk routed to one destination."""

    __slots__ = ("hashes", "types", "rows")

    def __init__(self) -> None:
        self.hashes: list[int] = []
        self.types: list[int] = []
        self.rows: list[tuple[str, str, str, int, str, float, str]] = []  # key, source, stream, seq, subject, ts, type


class _Tally:
    def __init__(self, req: ReconcileRequest) -> None:
        self.req = req
        self.type_ids: dict[str, int] = {}
        self.counters: dict[tuple[str, int, int], UniqueCounter] = defaultdict(UniqueCounter)
        self.reasons: dict[str, dict[str, set[int]]] = defaultdict(lambda: defaultdict(set))
        self.listed: dict[int, dict[tuple[str, str], Entry]] = {UNACCOUNTED: {}, IN_FLIGHT: {}}
        self.missing_counter = UniqueCounter()
        self.missing: dict[tuple[str, str], Entry] = {}

    def type_id(self, t: str) -> int:
        return self.type_ids.setdefault(t, len(self.type_ids))

    def list_entry(self, into: dict[tuple[str, str], Entry], dest: str, row: tuple, reason: str = "") -> None:
        key, source, stream, seq, subject, ts, typ = row
        ident = (dest, key or f"{stream}/{seq}")  # an undecodable event may have no key
        if len(into) < self.req.limit and ident not in into:
            into[ident] = Entry(dest, typ, key, source, stream, seq, subject, _iso(ts), reason)


async def reconcile(js: JetStreamContext, cfg: Config, req: ReconcileRequest,
                    progress: Callable[[int, int], None] = lambda done, total: None) -> ReconcileReport:
    started = time.monotonic()
    now = time.time()
    dests = req.destinations or sorted(cfg.destinations)
    table, decoder = RouteTable(cfg.route_list), EventDecoder()

    journals = {d: await _read_journal(js, cfg, d) for d in dests}
    horizon = await _journal_horizon(js, cfg, now)
    parked = await _read_parked(js, cfg, dests)
    letters = await _read_dead_letters(js, cfg, dests)
    dest_keys = KeySet(_hashes_of(req.destination_keys)) if req.destination_keys is not None else None

    tally = _Tally(req)
    cannot_know: list[CannotKnow] = []
    ingest = {"undecodable": 0, "dead_lettered": 0, "in_flight": 0, "unaccounted": 0}

    # What to read: each source subject, from the window's start to the stream's end now.
    plan = []
    total = 0
    for src in cfg.sources:
        info = await _stream_info(js, src.stream)
        if info is None:
            cannot_know.append(CannotKnow(f"source {src.name}", 0, f"stream {src.stream} does not exist"))
            continue
        first_ts = await _first_time(js, src.stream, info) if info.state.first_seq > 1 else None
        if info.state.first_seq > 1 and first_ts is not None and req.since < first_ts:
            cannot_know.append(CannotKnow(
                f"source {src.name}", info.state.first_seq - 1,
                f"stream {src.stream} keeps messages from {_iso(first_ts)} (seq {info.state.first_seq}); "
                f"up to {info.state.first_seq - 1} earlier ones have left it and cannot be checked"))
        if not info.state.messages:
            continue
        floor = await _ack_floor(js, src.stream, src.durable)
        # (subject, its consumer's ack floor, whether a partition number is in front)
        reads = [(subject, floor, False) for subject in src.subjects]
        if src.partitions > 1:  # each partition, and under `durable` what was stored before partitioning
            for k, consumer in enumerate(src.consumers):
                reads.append((consumer_filter(src, k), await _ack_floor(js, src.stream, consumer), True))
        for subject, floor, partitioned in reads:
            # Counted now for the progress total, read later through a new consumer: one left
            # idle while other subjects are read would be removed by the server (inactive_threshold).
            sub = await read_only_consumer(js, src.stream, subject, since=req.since)
            pending = (await sub.consumer_info()).num_pending
            await sub.unsubscribe()
            total += pending
            if pending:
                plan.append((src, subject, info.state.last_seq, floor, partitioned))

    read = 0
    progress(0, total)
    for src, subject, last_seq, floor, partitioned in plan:
        sub = await read_only_consumer(js, src.stream, subject, since=req.since)
        try:
            chunk: list[Any] = []
            async for msgs in batches_until(sub, last_seq):
                read += len(msgs)
                if partitioned:  # routed by the publisher's subject
                    for m in msgs:
                        m.subject = strip_partition(m.subject)
                chunk += [(m, m.metadata.sequence.stream, m.metadata.timestamp.timestamp()) for m in msgs]
                ended = bool(chunk) and (chunk[-1][1] >= last_seq or (req.until is not None and chunk[-1][2] > req.until))
                chunk = [c for c in chunk if c[1] <= last_seq and (req.until is None or c[2] <= req.until)]
                if len(chunk) >= _CHUNK or ended:
                    _classify(chunk, src, table, decoder, dests, req, journals, parked, letters, dest_keys,
                              horizon, floor, tally, ingest)
                    chunk = []
                progress(min(read, total), total)
                if ended:
                    break
            _classify(chunk, src, table, decoder, dests, req, journals, parked, letters, dest_keys,
                      horizon, floor, tally, ingest)
        finally:
            try:
                await sub.unsubscribe()
            except Exception:  # noqa: BLE001 - the server removes an idle ephemeral consumer anyway
                pass

    types_by_id = {i: t for t, i in tally.type_ids.items()}
    counts: dict[str, dict[str, dict[str, int]]] = {d: {} for d in dests}
    totals: dict[str, dict[str, int]] = {d: dict.fromkeys(OUTCOMES, 0) for d in dests}
    for (dest, tid, outcome), counter in sorted(tally.counters.items()):
        n = counter.count()
        counts[dest].setdefault(types_by_id[tid], dict.fromkeys(OUTCOMES, 0))[OUTCOMES[outcome]] = n
        totals[dest][OUTCOMES[outcome]] += n
    if horizon is not None and any(t["unknown"] for t in totals.values()):
        cannot_know.append(CannotKnow(
            "dedup journal", sum(t["unknown"] for t in totals.values()),
            f"published before {_iso(horizon)}, beyond the journal's retention ({cfg.dedup.stream} max_age): "
            "found neither delivered, parked nor dead-lettered, and the journal can no longer say"))

    report = ReconcileReport(
        window={"since": _iso(req.since), "until": _iso(req.until) if req.until is not None else None},
        destinations=dests, types=list(req.types), events_read=read, counts=counts, totals=totals,
        dead_letter_reasons={d: {r: len(ks) for r, ks in sorted(tally.reasons[d].items())} for d in dests
                             if tally.reasons.get(d)},
        unaccounted=sorted(tally.listed[UNACCOUNTED].values(), key=lambda e: (e.stream, e.seq, e.destination)),
        unaccounted_total=sum(t["unaccounted"] for t in totals.values()),
        in_flight=sorted(tally.listed[IN_FLIGHT].values(), key=lambda e: (e.stream, e.seq, e.destination)),
        ingest=ingest, cannot_know=cannot_know, journal_keys={d: len(j) for d, j in journals.items()},
        seconds=round(time.monotonic() - started, 3))
    if dest_keys is not None:
        report.missing_at_destination = sorted(tally.missing.values(), key=lambda e: (e.stream, e.seq))
        report.missing_at_destination_total = tally.missing_counter.count()
        report.destination_keys = len(dest_keys)
    return report


def _classify(chunk: list[Any], src: Any, table: RouteTable, decoder: EventDecoder, dests: list[str],
              req: ReconcileRequest, journals: dict[str, KeySet], parked: dict[str, KeySet],
              letters: _DeadLetters, dest_keys: KeySet | None, horizon: float | None, floor: int,
              tally: _Tally, ingest: dict[str, int]) -> None:
    """Classify one chunk of source events for every destination (undecodable ones into ``ingest``)."""
    by_dest: dict[str, _Pending] = defaultdict(_Pending)
    wanted = set(dests)
    for m, seq, ts in chunk:
        try:
            ev = decoder.decode(m.data, m.headers, m.subject)
        except InvalidEvent:
            _undecodable(src, m, seq, ts, letters, floor, tally, ingest)
            continue
        if req.types and not any(wildcard_match(p, ev.type) for p in req.types):
            continue
        try:
            targets = table.targets(ev)
        except Exception:  # noqa: BLE001 - the ingest dead-letters what its routing raises on
            _undecodable(src, m, seq, ts, letters, floor, tally, ingest)
            continue
        h = key_hash(ev.idempotency_key)
        tid = tally.type_id(ev.type)
        for t in targets:
            if t.destination in wanted:
                p = by_dest[t.destination]
                p.hashes.append(h)
                p.types.append(tid)
                p.rows.append((ev.idempotency_key, src.name, src.stream, seq, m.subject, ts, ev.type))

    for dest, p in by_dest.items():
        hashes = np.array(p.hashes, np.uint64)
        types = np.array(p.types, np.int64)
        outcome = np.full(len(hashes), UNACCOUNTED, np.int8)
        delivered = journals[dest].contains(hashes)
        outcome[delivered] = DELIVERED
        outcome[~delivered & parked[dest].contains(hashes)] = PARKED
        dl = letters.by_dest.get(dest, {})
        for i in np.flatnonzero(outcome == UNACCOUNTED):
            row = p.rows[i]
            reason = dl.get(p.hashes[i]) or letters.ingest.get((row[1], row[3]))
            if reason is not None:
                outcome[i] = DEAD_LETTERED
                tally.reasons[dest][reason].add(p.hashes[i])
            elif row[3] > floor:
                outcome[i] = IN_FLIGHT
                tally.list_entry(tally.listed[IN_FLIGHT], dest, row)
            elif horizon is not None and row[5] < horizon:
                outcome[i] = UNKNOWN
            else:
                tally.list_entry(tally.listed[UNACCOUNTED], dest, row)
        for tid in np.unique(types):
            of_type = types == tid
            for o in np.unique(outcome[of_type]):
                tally.counters[(dest, int(tid), int(o))].add(hashes[of_type & (outcome == o)])
        if dest_keys is not None:
            gone = np.flatnonzero(delivered & ~dest_keys.contains(hashes))
            if len(gone):
                tally.missing_counter.add(hashes[gone])
                for i in gone:
                    tally.list_entry(tally.missing, dest, p.rows[i])


def _undecodable(src: Any, m: Any, seq: int, ts: float, letters: _DeadLetters, floor: int, tally: _Tally,
                 ingest: dict[str, int]) -> None:
    """An event the router cannot decode or route must be in the ingest dead letters (by source sequence)."""
    ingest["undecodable"] += 1
    if (src.name, seq) in letters.ingest:
        ingest["dead_lettered"] += 1
    elif seq > floor:
        ingest["in_flight"] += 1
    else:
        ingest["unaccounted"] += 1
        tally.list_entry(tally.listed[UNACCOUNTED], "(ingest)",
                         ("", src.name, src.stream, seq, m.subject, ts, "(undecodable)"),
                         "undecodable and not in the dead-letter stream")


def format_report(r: ReconcileReport) -> str:
    """The report as text for a terminal (keys and reasons as they are; the CLI escapes them)."""
    out = [f"window {r.window['since']} .. {r.window['until'] or 'now'}: {r.events_read:,} source events read"
           + (f", types {', '.join(r.types)}" if r.types else "") + f" ({r.seconds:.1f}s)"]
    cols = ("delivered", "parked", "dead_lettered", "in_flight", "unknown", "unaccounted")
    out.append(f"{'destination':<14} {'type':<24} " + " ".join(f"{c.replace('_', '-'):>13}" for c in cols))
    for d in r.destinations:
        for t, c in sorted(r.counts[d].items()):
            out.append(f"{d:<14} {t:<24} " + " ".join(f"{c[k]:>13,}" for k in cols))
        out.append(f"{d:<14} {'(all types)':<24} " + " ".join(f"{r.totals[d][k]:>13,}" for k in cols))
    for d, reasons in r.dead_letter_reasons.items():
        for reason, n in reasons.items():
            out.append(f"dead-lettered at {d}: {n:,} x {reason}")
    if r.ingest["undecodable"]:
        out.append(f"undecodable events in the window: {r.ingest['undecodable']:,} "
                   f"({r.ingest['dead_lettered']:,} dead-lettered at ingest, {r.ingest['in_flight']:,} not final yet, "
                   f"{r.ingest['unaccounted']:,} unaccounted)")
    for c in r.cannot_know:
        out.append(f"cannot know ({c.what}): {c.events:,} event(s): {c.reason}")
    if r.in_flight:
        out.append(f"not yet final at the router (above the source consumer's ack floor), first {len(r.in_flight)}:")
        out += [f"  {e.stream} seq {e.seq:>10}  {e.destination:<12} {e.type:<20} {e.key}" for e in r.in_flight]
    if r.unaccounted_total:
        shown = f" (first {len(r.unaccounted)}; --limit for more)" if len(r.unaccounted) < r.unaccounted_total else ""
        out.append(f"UNACCOUNTED: {r.unaccounted_total:,} (destination, key) pair(s){shown}:")
        out += [f"  {e.stream} seq {e.seq:>10}  {e.destination:<12} {e.type:<20} {e.key}" for e in r.unaccounted]
    if r.missing_at_destination_total is not None:
        n = r.missing_at_destination_total
        out.append(f"destination keys given: {r.destination_keys:,}; delivered by the router but not held there: {n:,}")
        out += [f"  {e.stream} seq {e.seq:>10}  {e.destination:<12} {e.type:<20} {e.key}"
                for e in r.missing_at_destination or []]
    out.append("every event is accounted for" if r.exit_code == 0 else "NOT everything is accounted for")
    return "\n".join(out)
