"""Pulling batches from a durable JetStream consumer over one core subscription.

nats-py's ``fetch`` waits for each message with its own timer and queue read; at tens of
thousands of messages a second that bookkeeping costs more than the messages. Here one pull
request asks for a whole batch, the subscription callback appends each delivery to a list, and
the request ends when the batch is full or the server says there is nothing more for now
(status 404 / 408). The ack subject of each message (``msg.reply``) also carries its stream
sequence and delivery count, read without building nats-py's metadata object.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import Any, Iterable

import orjson
from nats.aio.client import Client

from router.jetstream import frames
from router.jetstream.direct_subscription import Delivery, subscribe_direct, unsubscribe_direct

from router.jetstream.partitions import strip_partition

__all__ = ["PullConsumer", "delivery_count", "pending_count", "seqs_and_published", "stream_seq"]

log = logging.getLogger(__name__)

ACK, NAK, PROGRESS = b"", b"-NAK", b"+WPI"


def _tokens(reply: str) -> list[str]:
    t = reply.split(".")
    # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>, or the form with
    # <domain>.<account hash> after ACK and a random token at the end.
    return t if len(t) == 9 else t[:2] + t[4:11]


def stream_seq(reply: str) -> int:
    return int(_tokens(reply)[5])


def delivery_count(reply: str) -> int:
    return int(_tokens(reply)[4])


def pending_count(reply: str) -> int:
    """How many messages the stream held for the consumer after this one (-1 if unreadable)."""
    try:
        return int(_tokens(reply)[8])
    except (IndexError, ValueError):
        return -1


def _nak(delay: float) -> bytes:
    """A NAK that asks for redelivery after ``delay`` seconds."""
    return NAK + b" " + orjson.dumps({"delay": int(delay * 1e9)})


def seqs_and_published(replies: Iterable[str]) -> tuple[list[int], list[int], list[int]]:
    """Each ack subject's stream sequence, when JetStream stored the message (ns since the epoch;
    0 if unreadable) and its delivery sequence on the consumer, reading each subject once (per
    message, on the ingest's hot path)."""
    seqs, published, dseqs = [], [], []
    for reply in replies:
        t = _tokens(reply)
        seqs.append(int(t[5]))
        dseqs.append(int(t[6]))
        try:
            published.append(int(t[7]))
        except (IndexError, ValueError):
            published.append(0)
    return seqs, published, dseqs


class PullConsumer:
    def __init__(self, nc: Client, stream: str, durable: str, partitioned: bool = False) -> None:
        self._nc = nc
        self._partitioned = partitioned  # a partition consumer: each subject has the partition number in front
        self._next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self._inbox = ""
        self._sub: Any = None
        self._ids = itertools.count()
        self._batch: list[Delivery] = []
        self._want = 0
        self._done: asyncio.Future | None = None
        self._fill = True  # wait for a full batch (until ``expires``), or return once the stream has no more
        self._request = ""  # reply subject of the last pull request: only its end ends a fetch

    async def start(self) -> None:
        self._inbox = self._nc.new_inbox()
        self._sub = await subscribe_direct(self._nc, f"{self._inbox}.*", self._on_msg)

    async def stop(self) -> None:
        """Unsubscribe; deliveries that came after the last fetch returned are NAKed, so the next
        reader gets them at once rather than after ``ack_wait``."""
        if self._sub is not None:
            await unsubscribe_direct(self._nc, self._sub)
        left, self._batch = self._batch, []
        await self._reply(left, [NAK] * len(left))

    def _on_msg(self, msg: Delivery) -> None:
        if msg.reply:
            # A delivery. One that arrives after its request ended still counts: it is pending on
            # the server, so it goes into the batch being gathered now.
            if self._partitioned:
                msg.subject = strip_partition(msg.subject)
            self._batch.append(msg)
            if len(self._batch) >= self._want:
                self._finish()
            elif not self._fill and pending_count(msg.reply) == 0:  # after the rest of this read is in
                asyncio.get_running_loop().call_soon(self._finish)
            return
        if msg.subject != self._request:
            return  # the end of an earlier request (one a fetch returned before): this fetch goes on
        status = msg.headers.get("Status", "") if msg.headers else ""
        if status in ("404", "408"):  # nothing (more) for now, or the request expired
            self._finish()
        elif status == "409":  # e.g. the consumer was deleted or a leader changed: say so, pull again
            log.warning("pull request ended: %s", msg.headers.get("Description", status) if msg.headers else status)
            self._finish()

    def _finish(self) -> None:
        if self._done is not None and not self._done.done():
            self._done.set_result(None)

    def hurry(self) -> None:
        """The fetch under way need not fill its batch: it returns as soon as the stream has no
        more messages pending (see ``fetch``)."""
        self._fill = False
        if self._batch and pending_count(self._batch[-1].reply) == 0:
            self._finish()

    async def fetch(self, batch: int, expires: float, fill: bool = True) -> list[Delivery]:
        """About ``batch`` messages; fewer (or none) when the stream has no more within ``expires``.
        ``fill=False`` (the reader has nothing in hand): it returns as soon as messages are here and
        the stream has no more pending, rather than wait ``expires`` for more to be published; a
        reader that is busy waits and gets fuller batches (Nagle's rule)."""
        self._fill = fill
        if not fill and self._batch:  # late deliveries of the last request: they go now
            out, self._batch = self._batch, []
            return out
        want = batch - len(self._batch)  # late deliveries of the last request are already here
        if want > 0:
            self._want = batch
            self._done = asyncio.get_running_loop().create_future()
            request = orjson.dumps({"batch": want, "expires": int(expires * 1e9)})
            self._request = f"{self._inbox}.{next(self._ids)}"
            await self._nc.publish(self._next_subject, request, reply=self._request)
            try:
                await asyncio.wait_for(self._done, expires + 2.0)
            except asyncio.TimeoutError:
                pass  # the server never answered (NATS restarting); return what came
        out, self._batch = self._batch, []
        return out

    async def ack(self, msg: Delivery) -> None:
        await self._nc.publish(msg.reply, ACK)

    async def ack_many(self, msgs: list[Delivery]) -> None:
        """Ack each message; one write for all of them."""
        await self._reply(msgs, [ACK] * len(msgs))

    async def ack_all(self, reply: str) -> None:
        """On a consumer with ``ack_policy: all``: ack the message of this ack subject and every one
        before it (``AckWatermark`` says which)."""
        await self._nc.publish(reply, ACK)

    async def nak_many(self, msgs: list[Delivery], delay: float) -> None:
        """NAK each message (redeliver after ``delay``), acking none: one write."""
        await self._reply(msgs, [_nak(delay)] * len(msgs))

    def discard_buffered(self) -> None:
        """Forget deliveries gathered for the next fetch (the consumer was created again: they come again)."""
        self._batch = []

    async def settle_each(self, msgs: list[Delivery], failed: set[int], delay: float) -> None:
        """NAK (redeliver after ``delay``) the messages at the indexes in ``failed``, ack the others; one write."""
        nak = _nak(delay)
        await self._reply(msgs, [nak if i in failed else ACK for i in range(len(msgs))])

    async def in_progress_many(self, msgs: list[Delivery]) -> None:
        """Restart the ack timer of each message (still being worked on); one write."""
        await self._reply(msgs, [PROGRESS] * len(msgs))

    async def _reply(self, msgs: list[Delivery], payloads: list[bytes]) -> None:
        if msgs:
            await frames.send(self._nc, [m.reply for m in msgs], "", payloads, [None] * len(msgs))

    async def nak(self, msg: Delivery, delay: float) -> None:
        await self._nc.publish(msg.reply, _nak(delay))
