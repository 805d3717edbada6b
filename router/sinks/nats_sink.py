"""NATS destinations: each record is one message on ``subject``.

With ``jetstream: true`` (default) every publish waits for the stream's ack, and ``Nats-Msg-Id``
carries the record's idempotency key so the stream drops a re-sent record within its own
duplicate window too. With ``jetstream: false`` it is a core publish followed by a flush.
"""

from __future__ import annotations

import asyncio

import nats.errors
import nats.js.errors
from nats.aio.client import Client

from router.config import Destination

from .outcome import Delivered, Outcome, Permanent, Transient

__all__ = ["NatsSink"]


class NatsSink:
    def __init__(self, name: str, cfg: Destination, nc: Client) -> None:
        self.name = name
        self.cfg = cfg
        self._nc = nc
        self._js = nc.jetstream()

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def send(self, batch_id: str, keys: list[str], payloads: list[bytes]) -> Outcome:
        subject = self.cfg.subject
        assert subject is not None
        try:
            if self.cfg.jetstream:
                await asyncio.gather(*(
                    self._js.publish(subject, p, headers={"Nats-Msg-Id": k}, timeout=self.cfg.timeout)
                    for k, p in zip(keys, payloads)
                ))
            else:
                for p in payloads:
                    await self._nc.publish(subject, p, headers={"Idempotency-Key": batch_id})
                await self._nc.flush(timeout=self.cfg.timeout)
            return Delivered()
        except nats.js.errors.NoStreamResponseError:
            return Transient(f"no stream answered on {subject} (is it captured by a stream?)")
        except nats.js.errors.APIError as exc:
            if exc.code in (503,) or (exc.code or 0) >= 500:
                return Transient(f"JetStream {exc.code}: {exc.description}")
            return Permanent(f"JetStream {exc.code}: {exc.description}", exc.code, str(exc), exc.code == 413)
        except (nats.errors.Error, asyncio.TimeoutError) as exc:
            return Transient(f"NATS error on {subject}: {exc.__class__.__name__}: {exc}")
