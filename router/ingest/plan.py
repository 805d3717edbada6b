"""What to do with one fetched batch: decode, route, encode, and group by destination shard.

Plain logic, no I/O: the ingest actor fetches and acks, this decides. Each (destination, shard)
gets one list of records per batch, so a batch of 500 messages costs a handful of Ray calls,
never one per message.

A message that fails anywhere here (decoder, route predicate, encoder; any exception) is
rejected with a reason naming the stage, and the rest of the batch goes on: one hostile message
must not hold back the good ones fetched with it. The ``try`` blocks cost nothing for a message
that does not raise.
"""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from typing import Any, Protocol

from router.codecs import EventDecoder, InvalidEvent

from router.delivery.key_hash import key_hash
from router.record_batch import RecordBatch
from router.delivery.lanes import NORMAL
from router.ingest.routing import RouteTable, RouteTarget, ordering_hash
from router.slo import WorkflowTagger
from router.tracing import traceparent_of, with_traceparent

__all__ = ["BatchPlan", "IngestPlanner", "shard_of"]

_REASON_LIMIT = 300  # characters of an exception's text kept in a reason


class Message(Protocol):
    subject: str
    data: bytes
    headers: dict[str, str] | None


def shard_of(key: str, pool_size: int, order_key: int = 0) -> int:
    """The shard of a pool a record goes to: by its ordering key's hash when it has one (a sequence
    stays in one shard), else by its idempotency key's."""
    return 0 if pool_size == 1 else (order_key or key_hash(key)) % pool_size


class BatchPlan:
    __slots__ = ("rejected", "unrouted", "work", "routed")

    def __init__(self, revision: int = 0) -> None:
        self.rejected: list[tuple[int, str]] = []  # (message index, reason): dead-letter, then ack
        self.unrouted: list[int] = []  # no route matched
        self.routed: dict[tuple[str, str], int] = defaultdict(int)  # (route, destination) -> records, for metrics
        # (destination, shard) -> (records, indexes of the messages they came from)
        self.work: dict[tuple[str, int], tuple[RecordBatch, list[int]]] = defaultdict(
            lambda: (RecordBatch(revision=revision), []))


class IngestPlanner:
    def __init__(self, source: str, table: RouteTable, pool_sizes: dict[str, int], revision: int = 0,
                 workflows: WorkflowTagger | None = None) -> None:
        self.source = source
        self.workflows = workflows if workflows else None  # SLO workflows to tag records with, if any
        self.table = table
        self.revision = revision  # of the route table: every record planned here carries it
        self.pool_sizes = pool_sizes
        self.decoder = EventDecoder()

    def plan(self, msgs: list[Any], seqs: list[int], published: list[int] | None = None) -> BatchPlan:
        """``published``: each message's JetStream publish time (ns), carried for the latency metrics."""
        out = BatchPlan(self.revision)
        decode, targets, source = self.decoder.decode, self.table.targets, self.source
        workflows, work = self.workflows, out.work
        # Per list of targets (the route table hands out one list per set of matched routes): what
        # each target needs, worked out once a batch instead of once a record, and its event count.
        prepared: dict[int, _Prepared] = {}
        # Records that go alike to every destination shard of a group (``_Prepared.together``).
        together: dict[tuple[tuple[str, int], ...], tuple[RecordBatch, list[int]]] = defaultdict(
            lambda: (RecordBatch(revision=self.revision), []))
        for i, m in enumerate(msgs):
            try:
                ev = decode(m.data, m.headers, m.subject)
            except InvalidEvent as exc:
                out.rejected.append((i, str(exc)))
                continue
            except Exception as exc:  # the decoder promises InvalidEvent only; a bug must not stop the stream
                out.rejected.append((i, f"decoder failed: {_describe(exc)}"))
                continue
            try:
                routed = targets(ev)
            except Exception as exc:
                out.rejected.append((i, f"route matching failed: {_describe(exc)}"))
                continue
            if not routed:
                out.unrouted.append(i)
                continue
            prep = prepared.get(id(routed))
            if prep is None or prep.routed is not routed:  # it holds the list, so the id is not reused
                prep = prepared[id(routed)] = _Prepared(routed, self.pool_sizes, workflows is not None)
            tp = traceparent_of(m.headers)  # W3C trace context passed through, in each record (router/tracing.py)
            # Every encoder writes the event's correlation id into the record; with a traceparent the
            # sink reads both back from the record for a NATS message's headers.
            cid = ev.correlation_id if tp is None else ""
            try:
                if prep.encoder is not None:  # the usual fan-out: one encoding for all
                    payload = prep.encoder.encode(ev)
                    if tp is not None:
                        payload = with_traceparent(payload, tp)
                    payloads = itertools.repeat(payload)
                else:
                    payloads = [t.encoder.encode(ev) for t in routed]
                    if tp is not None:
                        payloads = [with_traceparent(p, tp) for p in payloads]
            except Exception:
                out.rejected.append((i, _encoder_failure(ev, routed)))
                continue
            prep.events += 1
            key, origin, at = ev.idempotency_key, f"{source}/{seqs[i]}", published[i] if published else 0
            h = key_hash(key)  # once here, not once per destination in the sink actors
            if prep.together is not None:  # the usual fan-out: gathered once for all its destinations
                records, idx = together[prep.together]
                # RecordBatch.append, inline and without its column padding (nothing to pad)
                records.keys.append(key)
                records.payloads.append(payload)
                records.origins.append(origin)
                records.published.append(at)
                records.hashes.append(h)
                records.correlation_ids.append(cid)
                idx.append(i)
                continue
            hashed, okey_of_route = None, 0  # a route's destinations share its ordering: hash it once
            for (dest, ordering, lane, pool), payload in zip(prep.targets, payloads):
                # An ordering key picks the shard, so one shard sees each sequence whole, in order
                # (``shard_of``, with the key's hash in hand).
                if ordering and ordering is not hashed:
                    hashed, okey_of_route = ordering, ordering_hash(ev, ordering)
                okey = okey_of_route if ordering else 0
                records, idx = work[(dest, 0 if pool == 1 else (okey or h) % pool)]
                records.append(key, payload, origin, at, okey, lane, h, cid)
                idx.append(i)
                if workflows is not None:
                    records.workflow.append(workflows.index(ev.type, dest))
        if together:
            _hand_out(out.work, together)
        for prep in prepared.values():
            if prep.events:
                for t in prep.routed:
                    out.routed[t.route, t.destination] += prep.events
        if workflows is not None:
            for records, _ in out.work.values():
                records.workflows = workflows.table
        return out

    def plan_each(self, msgs: list[Any], seqs: list[int], published: list[int] | None = None) -> BatchPlan:
        """The slow path after ``plan`` raised for a whole batch: plan message by message, and
        reject the message(s) that make it raise, so the rest still go through."""
        out = BatchPlan(self.revision)
        for i, (m, seq) in enumerate(zip(msgs, seqs)):
            try:
                one = self.plan([m], [seq], [published[i]] if published else None)
            except Exception as exc:
                out.rejected.append((i, f"planning failed: {_describe(exc)}"))
                continue
            out.rejected.extend((i, reason) for _, reason in one.rejected)
            out.unrouted.extend(i for _ in one.unrouted)
            for k, n in one.routed.items():
                out.routed[k] += n
            for shard_key, (records, _) in one.work.items():
                into, idx = out.work[shard_key]
                for n, (key, payload, origin, okey, lane, h, cid) in enumerate(zip(
                        records.keys, records.payloads, records.origins, records.order_key_column(),
                        records.lane_column(), records.key_hashes(), records.correlation_id_column())):
                    into.append(key, payload, origin, records.published[n], okey, lane, h, cid)
                    idx.append(i)
                into.workflow.extend(records.workflow)
                into.workflows = records.workflows
        return out


class _Prepared:
    """A list of route targets, as the planner uses it."""

    __slots__ = ("routed", "encoder", "targets", "events", "together")

    def __init__(self, routed: list[RouteTarget], pool_sizes: dict[str, int], tagged: bool) -> None:
        self.routed = routed
        first = routed[0].encoder
        self.encoder = first if all(t.encoder is first for t in routed) else None  # one encoding for all
        self.targets = [(t.destination, t.ordering, t.lane, pool_sizes[t.destination]) for t in routed]
        self.events = 0  # events planned with it in this batch
        # Its destination shards when each of them gets the same record for an event (one encoding,
        # no ordering key, the normal lane, a pool of one, no SLO workflow to tag per destination):
        # the records are gathered once for all of them and their batch encoded once.
        alike = self.encoder is not None and not tagged and all(
            not ordering and lane == NORMAL and pool == 1 for _, ordering, lane, pool in self.targets)
        self.together = tuple((t.destination, 0) for t in routed) if alike else None


def _hand_out(work: dict[tuple[str, int], tuple[RecordBatch, list[int]]],
              together: dict[tuple[tuple[str, int], ...], tuple[RecordBatch, list[int]]]) -> None:
    """Each group's records to its destination shards: the one batch shared where nothing else goes
    to that shard (the usual fan-out), else appended to what does."""
    groups_of = Counter(dest_shard for group in together for dest_shard in group)
    for group, (records, idx) in together.items():
        for dest_shard in group:
            if groups_of[dest_shard] == 1 and dest_shard not in work:
                work[dest_shard] = (records, idx)
            else:
                into, into_idx = work[dest_shard]
                into.extend(records)
                into_idx.extend(idx)


def _describe(exc: BaseException) -> str:
    text = f"{exc.__class__.__name__}: {exc}"
    return text if len(text) <= _REASON_LIMIT else text[: _REASON_LIMIT - 3] + "..."


def _encoder_failure(ev: Any, routed: list[Any]) -> str:
    # Off the hot path: find which encoder raised, to name it in the reason.
    for t in routed:
        try:
            t.encoder.encode(ev)
        except InvalidEvent as exc:  # the encoder's own reason
            return f"for destination `{t.destination}`: {exc}"
        except Exception as exc:
            return f"encoder `{t.encoder.name}` for destination `{t.destination}` failed: {_describe(exc)}"
    return "encoder failed, then succeeded on a second try (not deterministic)"
