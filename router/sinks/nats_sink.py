"""NATS destinations: each record is one message on ``subject``.

With ``jetstream: true`` (default) the batch is published pipelined: every record goes out at
once with a reply subject on one long-lived ack inbox, and the batch is delivered when the
stream has acked every record. That is about three times the rate of awaiting ``js.publish``
per record, which makes a request, a future and a timer for each. ``Nats-Msg-Id`` carries the
record's idempotency key, so the stream drops a re-sent record within its own duplicate window
too. With ``jetstream: false`` it is a core publish followed by a flush.
"""

from __future__ import annotations

import asyncio
import itertools

import nats.errors
import orjson
from nats.aio.client import Client
from nats.aio.msg import Msg

from router.config import Destination

from .outcome import Delivered, Outcome, Permanent, Transient

__all__ = ["NatsSink"]


class _Pending:
    __slots__ = ("remaining", "error", "future")

    def __init__(self, n: int, future: asyncio.Future) -> None:
        self.remaining, self.error, self.future = n, None, future


class NatsSink:
    def __init__(self, name: str, cfg: Destination, nc: Client) -> None:
        self.name = name
        self.cfg = cfg
        self._nc = nc
        self._inbox = ""
        self._sub = None
        self._pending: dict[str, _Pending] = {}
        self._ids = itertools.count()

    async def start(self) -> None:
        if self.cfg.jetstream:
            self._inbox = self._nc.new_inbox()
            self._sub = await self._nc.subscribe(f"{self._inbox}.*", cb=self._on_ack)

    async def close(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()

    async def _on_ack(self, msg: Msg) -> None:
        p = self._pending.get(msg.subject)
        if p is None:
            return  # a late ack for a batch that already timed out (and will be re-sent)
        status = msg.headers.get("Status") if msg.headers else None
        if status == "503":
            p.error = p.error or Transient(f"no stream answered on {self.cfg.subject} (is it captured by a stream?)")
        elif msg.data[:9] != b'{"stream"':
            err = orjson.loads(msg.data).get("error", {}) if msg.data else {}
            code = err.get("code", 0)
            text = f"JetStream {code}: {err.get('description', msg.data[:200])}"
            p.error = p.error or (Transient(text) if code >= 500 or code == 0 else Permanent(text, code, text, code == 413))
        p.remaining -= 1
        if p.remaining == 0 and not p.future.done():
            p.future.set_result(None)

    async def send(self, batch_id: str, keys: list[str], payloads: list[bytes]) -> Outcome:
        subject = self.cfg.subject
        assert subject is not None
        nc = self._nc
        try:
            if not self.cfg.jetstream:
                for p in payloads:
                    await nc.publish(subject, p, headers={"Idempotency-Key": batch_id})
                await nc.flush(timeout=self.cfg.timeout)
                return Delivered()
            reply = f"{self._inbox}.{next(self._ids)}"
            pending = self._pending[reply] = _Pending(len(payloads), asyncio.get_running_loop().create_future())
            try:
                for k, p in zip(keys, payloads):
                    await nc.publish(subject, p, reply=reply, headers={"Nats-Msg-Id": k})
                await asyncio.wait_for(pending.future, self.cfg.timeout)
            finally:
                del self._pending[reply]
            return pending.error or Delivered()
        except asyncio.TimeoutError:
            return Transient(f"no ack from the stream on {subject} within {self.cfg.timeout:g}s")
        except nats.errors.Error as exc:
            return Transient(f"NATS error on {subject}: {exc.__class__.__name__}: {exc}")
