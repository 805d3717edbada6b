"""Records on their way from an ingest actor to one destination shard, in columns.

A batch crosses the Ray boundary as one MessagePack ``bytes``: Ray moves bytes without looking
inside, whereas a list of small Python objects goes through cloudpickle object by object,
which profiling showed to be the ingest actor's largest single cost.
"""

from __future__ import annotations

import itertools
from typing import Iterator

import msgspec

from router.delivery.key_hash import key_hash
from router.delivery.lanes import NORMAL

__all__ = ["RecordBatch"]


class RecordBatch(msgspec.Struct, array_like=True):
    keys: list[str] = msgspec.field(default_factory=list)  # idempotency keys
    payloads: list[bytes] = msgspec.field(default_factory=list)  # encoded records (JSON objects)
    origins: list[str] = msgspec.field(default_factory=list)  # "<source>/<stream seq>", for dead letters
    revision: int = 0  # the route table revision that routed every record here (0: unknown)
    # JetStream publish time of each record's source message, ns since the epoch (0: unknown), for
    # the end-to-end latency. Shorter than ``keys`` (e.g. empty) when the sender did not fill it.
    published: list[int] = msgspec.field(default_factory=list)
    # Only when the config has SLOs: each record's workflow, an index into ``workflows``
    # ((name, SLO seconds)), or -1 for none; empty otherwise.
    workflow: list[int] = msgspec.field(default_factory=list)
    workflows: list[tuple[str, float]] = msgspec.field(default_factory=list)
    # Per record, the hash of its ordering key (0: none; see `ordering_key` in the route table). Empty when
    # no record of the batch has one.
    order_keys: list[int] = msgspec.field(default_factory=list)
    # Per record, its priority lane (0 high, 1 normal, 2 low; see `priority` in the route table). Empty when
    # every record of the batch is normal.
    lanes: list[int] = msgspec.field(default_factory=list)
    # Per record, its key's hash (``router/delivery/key_hash.py``), worked out once per event by the
    # ingest actor instead of once per destination; used only when there is one for every record.
    hashes: list[int] = msgspec.field(default_factory=list)
    # Per record, the correlation id its encoder wrote into it, for a NATS destination's header
    # (reading it back from the record cost a NATS sink 8% of its CPU); "" for a record to read it
    # from (one with a traceparent, whose header comes from the record too). Used only when there
    # is one for every record.
    correlation_ids: list[str] = msgspec.field(default_factory=list)

    def append(self, key: str, payload: bytes, origin: str, published: int = 0, order_key: int = 0,
               lane: int = NORMAL, h: int | None = None, correlation_id: str | None = None) -> None:
        if order_key and len(self.order_keys) < len(self.keys):  # the first record with one: pad the column
            self.order_keys.extend([0] * (len(self.keys) - len(self.order_keys)))
        if lane != NORMAL and len(self.lanes) < len(self.keys):
            self.lanes.extend([NORMAL] * (len(self.keys) - len(self.lanes)))
        self.keys.append(key)
        self.payloads.append(payload)
        self.origins.append(origin)
        self.published.append(published)
        if order_key or self.order_keys:
            self.order_keys.append(order_key)
        if lane != NORMAL or self.lanes:
            self.lanes.append(lane)
        if h is not None:
            self.hashes.append(h)
        if correlation_id is not None:
            self.correlation_ids.append(correlation_id)

    def extend(self, other: "RecordBatch") -> None:
        """Append ``other``'s records (routed by the same revision)."""
        n, m = len(self.keys), len(other.keys)
        if other.order_keys or self.order_keys:
            self.order_keys.extend([0] * (n - len(self.order_keys)))
            self.order_keys.extend(other.order_keys or [0] * m)
        if other.lanes or self.lanes:
            self.lanes.extend([NORMAL] * (n - len(self.lanes)))
            self.lanes.extend(other.lanes or [NORMAL] * m)
        # Used only when there is one for every record: kept when both batches have them all.
        if len(self.hashes) == n and len(other.hashes) == m:
            self.hashes.extend(other.hashes)
        else:
            self.hashes = []
        if len(self.correlation_ids) == n and len(other.correlation_ids) == m:
            self.correlation_ids.extend(other.correlation_ids)
        else:
            self.correlation_ids = []
        self.keys.extend(other.keys)
        self.payloads.extend(other.payloads)
        self.origins.extend(other.origins)
        self.published.extend(other.published)
        self.workflow.extend(other.workflow)

    def key_hashes(self) -> list[int]:
        """Each record's key hash: the sender's, or worked out here if it did not send them all."""
        return self.hashes if len(self.hashes) == len(self.keys) else [key_hash(k) for k in self.keys]

    def correlation_id_column(self) -> list[str] | itertools.repeat:
        """Each record's correlation id as the sender knew it ("": read it from the record)."""
        return self.correlation_ids if len(self.correlation_ids) == len(self.keys) else itertools.repeat("")

    def order_key_column(self) -> list[int] | itertools.repeat:
        """Each record's ordering key hash (0: none), to zip with the other columns."""
        return self.order_keys or itertools.repeat(0)

    def lane_column(self) -> list[int] | itertools.repeat:
        """Each record's priority lane, to zip with the other columns."""
        return self.lanes or itertools.repeat(NORMAL)

    def __len__(self) -> int:
        return len(self.keys)

    def __iter__(self) -> Iterator[tuple[str, bytes, str]]:
        return zip(self.keys, self.payloads, self.origins)

    def encode(self) -> bytes:
        return _encoder.encode(self)

    @staticmethod
    def decode(blob: bytes) -> "RecordBatch":
        return _decoder.decode(blob)


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(RecordBatch)
