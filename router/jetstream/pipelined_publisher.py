"""Publishing many messages to JetStream at once, with every ack awaited.

Every message goes out at once with a reply subject on one long-lived ack inbox; the call
returns when the stream has acked each of them. That is about three times the rate of awaiting
``js.publish`` per message, which makes a request, a future and a timer for each. Used by the
NATS destinations and by parking.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Mapping, Sequence

import orjson
from nats.aio.client import Client

from router.jetstream import frames
from router.jetstream.direct_subscription import Delivery, subscribe_direct, unsubscribe_direct

__all__ = ["PipelinedPublisher", "PublishError"]


class PublishError(Exception):
    def __init__(self, message: str, code: int = 0, transient: bool = True) -> None:
        super().__init__(message)
        self.code, self.transient = code, transient


class _Pending:
    __slots__ = ("remaining", "error", "future")

    def __init__(self, n: int, future: asyncio.Future) -> None:
        self.remaining, self.error, self.future = n, None, future


class PipelinedPublisher:
    def __init__(self, nc: Client) -> None:
        self._nc = nc
        self._inbox = ""
        self._sub = None
        self._pending: dict[bytes, _Pending] = {}  # by reply subject
        self._ids = itertools.count()

    async def start(self) -> None:
        self._inbox = self._nc.new_inbox()
        self._sub = await subscribe_direct(self._nc, f"{self._inbox}.*", self._on_ack, self._on_plain_ack)

    async def close(self) -> None:
        if self._sub is not None:
            await unsubscribe_direct(self._nc, self._sub)

    def _on_plain_ack(self, subject: bytes, data: bytes) -> None:
        """A PubAck without headers, as read: the usual one, three per event on the NATS path."""
        p = self._pending.get(subject)
        if p is None:
            return  # a late ack for a call that already timed out (and will be repeated)
        if data[:9] != b'{"stream"':
            self._failed(p, data)
        self._count(p)

    def _on_ack(self, msg: Delivery) -> None:
        """A PubAck with headers (a status: 503 when no stream took the message)."""
        p = self._pending.get(msg.subject.encode())
        if p is None:
            return
        if msg.headers and msg.headers.get("Status") == "503":
            p.error = p.error or PublishError("no stream answered (is the subject captured by a stream?)", 503)
        elif msg.data[:9] != b'{"stream"':
            self._failed(p, msg.data)
        self._count(p)

    @staticmethod
    def _count(p: _Pending) -> None:
        p.remaining -= 1
        if p.remaining == 0 and not p.future.done():
            p.future.set_result(None)

    @staticmethod
    def _failed(p: _Pending, data: bytes) -> None:
        try:
            err = orjson.loads(data).get("error", {}) if data else {}
            code = err.get("code", 0)
        except (orjson.JSONDecodeError, AttributeError):  # not a JetStream answer: fail the call, do not hang it
            err, code = {"description": data[:200]}, 0
        p.error = p.error or PublishError(f"JetStream {code}: {err.get('description', data[:200])}",
                                          code, transient=code >= 500 or code == 0)

    async def publish(self, subject: str | Sequence[str], payloads: Sequence[bytes],
                      headers: Sequence[Mapping[str, str] | bytes | None], timeout: float) -> None:
        """Publish every payload (to one subject, or one subject each); raises ``PublishError``
        (or ``asyncio.TimeoutError``) unless the stream acked them all."""
        if not payloads:
            return
        reply = f"{self._inbox}.{next(self._ids)}"
        key = reply.encode()  # acks are matched as read, undecoded
        pending = self._pending[key] = _Pending(len(payloads), asyncio.get_running_loop().create_future())
        subjects = itertools.repeat(subject) if isinstance(subject, str) else subject
        try:
            await frames.send(self._nc, subjects, reply, payloads, headers)  # one write for the batch
            await asyncio.wait_for(pending.future, timeout)
        finally:
            del self._pending[key]
        if pending.error is not None:
            raise pending.error
