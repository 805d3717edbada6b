"""Parking in JetStream: the ``Parking`` port of a destination shard (see delivery/park_replay.py).

One subject per (destination, shard) in the ``ROUTER_PARKED`` stream, one durable pull consumer
per subject. A parked record counts as final for the source (it is acked), and the shard's
replayer delivers it, through the same dedup, once the destination is back. ``router dlq
replay`` puts dead letters back here too, so a replay is deduplicated like everything else.
"""

from __future__ import annotations

import logging

import nats.js.errors
from nats.aio.client import Client
from nats.js import api

from router.delivery.lanes import LANES, NORMAL
from router.delivery.ports import ParkedRecord, Record
from router.jetstream.pipelined_publisher import PipelinedPublisher
from router.jetstream.pull_consumer import PullConsumer, stream_seq
from router.wire import (IDEMPOTENCY_KEY, ORDERING_KEY, ORIGIN, PARKED_REASON, PRIORITY_LANE, ROUTES_REVISION, park_durable,
                         park_subject)

__all__ = ["ParkingLot", "parse_lane", "parse_order_key"]

log = logging.getLogger(__name__)


def _headers(key: str, origin: str, reason: str, revision: int, okey: int, lane: int) -> dict[str, str]:
    h = {IDEMPOTENCY_KEY: key, ORIGIN: origin, PARKED_REASON: reason, ROUTES_REVISION: str(revision)}
    if okey:
        h[ORDERING_KEY] = f"{okey:016x}"
    if lane != NORMAL:
        h[PRIORITY_LANE] = LANES[lane]
    return h


def parse_lane(text: str | None) -> int:
    return LANES.index(text) if text in LANES else NORMAL


def parse_order_key(text: str | None) -> int:
    try:
        return int(text, 16) if text else 0
    except ValueError:
        return 0


class ParkingLot:
    def __init__(self, nc: Client, stream: str, prefix: str, destination: str, shard: int) -> None:
        self._js = nc.jetstream()
        self.stream = stream
        self.subject = park_subject(prefix, destination, shard)
        self.durable = park_durable(destination, shard)
        self._publisher = PipelinedPublisher(nc)
        self._consumer = PullConsumer(nc, stream, self.durable)

    async def open(self) -> int:
        """Bind the replay consumer; returns how many records are parked."""
        config = api.ConsumerConfig(
            durable_name=self.durable, filter_subject=self.subject, ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=120.0, max_deliver=-1, deliver_policy=api.DeliverPolicy.ALL, max_ack_pending=20_000)
        try:
            info = await self._js.consumer_info(self.stream, self.durable)
        except nats.js.errors.NotFoundError:
            info = None
        if info is not None and info.num_ack_pending:
            # A replayer that died (kill -9) left records fetched and unacked: JetStream would hand
            # them out again only after ack_wait, behind the records parked after them, and
            # sequences would come out of order. The park is a work queue: a new consumer starts
            # at the first record still parked, so they come back first, in park order.
            log.warning("park %s: %d records were out with a replayer that stopped; reading the park "
                        "from its first record again", self.durable, info.num_ack_pending)
            await self._js.delete_consumer(self.stream, self.durable)
            info = None
        if info is None:
            try:
                await self._js.add_consumer(self.stream, config)
            except nats.js.errors.BadRequestError:
                pass  # created meanwhile by another replayer of this shard (a restart racing a reload)
        await self._publisher.start()
        await self._consumer.start()
        return await self.backlog()

    async def backlog(self) -> int:
        info = await self._js.consumer_info(self.stream, self.durable)
        return info.num_pending + info.num_ack_pending

    async def park(self, records: list[Record], reason: str) -> None:
        """Store (key, payload, origin) records with JetStream acks; raises if any was not stored."""
        await self._publisher.publish(
            self.subject, [r[1] for r in records],
            [_headers(k, o, reason, r, ok, lane) for k, _, o, r, ok, lane in records], timeout=10)

    async def fetch(self, n: int, timeout: float) -> list[ParkedRecord]:
        msgs = await self._consumer.fetch(n, expires=timeout)
        out = []
        for m in msgs:
            headers = m.headers or {}
            revision = headers.get(ROUTES_REVISION, "0")
            out.append(ParkedRecord(headers.get(IDEMPOTENCY_KEY, ""), m.data, headers.get(ORIGIN, ""),
                                    int(revision) if revision.isdigit() else 0, m,
                                    parse_order_key(headers.get(ORDERING_KEY)), stream_seq(m.reply),
                                    parse_lane(headers.get(PRIORITY_LANE))))
        return out

    async def ack(self, record: ParkedRecord) -> None:
        await self._consumer.ack(record.handle)

    async def nak(self, record: ParkedRecord, delay: float) -> None:
        await self._consumer.nak(record.handle, delay)
