"""NATS destinations: each record is one message on ``subject``.

With ``jetstream: true`` (default) the batch is published pipelined (``PipelinedPublisher``) and
is delivered when the stream has acked every record. ``Nats-Msg-Id`` carries the
record's idempotency key, so the stream drops a re-sent record within its own duplicate window
too. With ``jetstream: false`` it is a core publish followed by a flush.
"""

from __future__ import annotations

import asyncio
import itertools

import nats.errors
from nats.aio.client import Client

from router.config_base import DestinationBase, Subject
from router.jetstream.frames import header_value
from router.jetstream.pipelined_publisher import PipelinedPublisher, PublishError

from router.sinks.kind import SinkKind
from router.tracing import record_trace
from router.wire import CORRELATION_ID, IDEMPOTENCY_KEY, NATS_MSG_ID, ROUTES_REVISION, TRACEPARENT
from router.sinks.outcome import Delivered, Outcome, Permanent, Transient

__all__ = ["NATS", "NatsDestination", "NatsSink"]


class NatsDestination(DestinationBase, tag="nats", kw_only=True):
    """`kind: nats`: each record is one message on `subject`."""

    subject: Subject  # the subject each record is published to
    jetstream: bool = True  # publish with JetStream acks (the subject must be in a stream)


def trace_headers(payload: bytes) -> dict[str, str]:
    """The headers a record's message carries for tracing: its ``correlation_id`` (every encoded
    record has one) and, when the source message had one, its ``traceparent``."""
    rec = record_trace(payload)
    if not rec.correlation_id:
        return {}
    if rec.traceparent:
        return {CORRELATION_ID: rec.correlation_id, TRACEPARENT: rec.traceparent}
    return {CORRELATION_ID: rec.correlation_id}


def record_headers(keys: list[str], payloads: list[bytes], revision: int,
                   correlation_ids: list[str] | None = None) -> list[bytes]:
    """Each record's header block: ``Nats-Msg-Id`` = its key (the stream drops re-sends), its trace
    headers and the route table revision; built as bytes in one go (the hot path of NATS delivery).
    ``correlation_ids``: each record's as the ingest sent it; "" (or none): read from the record,
    with its traceparent if it has one. Keys and traceparents have no control characters (the
    decoder's rule); correlation ids may."""
    rev = f"{ROUTES_REVISION}: {revision}\r\n" if revision else ""
    out = []
    for k, p, cid in zip(keys, payloads, correlation_ids or itertools.repeat("")):
        if cid:
            trace = f"{CORRELATION_ID}: {header_value(cid)}\r\n"
        else:
            rec = record_trace(p)
            trace = ""
            if rec.correlation_id:
                trace = f"{CORRELATION_ID}: {header_value(rec.correlation_id)}\r\n"
                if rec.traceparent:
                    trace += f"{TRACEPARENT}: {rec.traceparent}\r\n"
        out.append(f"NATS/1.0\r\n{NATS_MSG_ID}: {k}\r\n{trace}{rev}\r\n".encode())
    return out


class NatsSink:
    def __init__(self, name: str, cfg: NatsDestination, nc: Client) -> None:
        self.name = name
        self.cfg = cfg
        self._nc = nc
        self._publisher = PipelinedPublisher(nc)

    async def start(self) -> None:
        await self._publisher.start()  # also when `jetstream: false`: a live reload may turn it on

    def reconfigure(self, cfg: NatsDestination) -> None:
        self.cfg = cfg

    async def close(self) -> None:
        await self._publisher.close()

    async def send(self, batch_id: str, keys: list[str], payloads: list[bytes], revision: int = 0,
                   correlation_ids: list[str] | None = None) -> Outcome:
        subject = self.cfg.subject
        assert subject is not None
        try:
            if self.cfg.jetstream:
                await self._publisher.publish(subject, payloads,
                                              record_headers(keys, payloads, revision, correlation_ids),
                                              self.cfg.timeout)
            else:
                rev = {ROUTES_REVISION: str(revision)} if revision else {}
                for p in payloads:
                    await self._nc.publish(subject, p, headers={IDEMPOTENCY_KEY: batch_id, **trace_headers(p), **rev})
                await self._nc.flush(timeout=self.cfg.timeout)
            return Delivered()
        except PublishError as exc:
            if exc.transient:
                return Transient(f"{exc} on {subject}")
            return Permanent(f"{exc} on {subject}", exc.code, str(exc), exc.code == 413)
        except asyncio.TimeoutError:
            return Transient(f"no ack from the stream on {subject} within {self.cfg.timeout:g}s")
        except nats.errors.Error as exc:
            return Transient(f"NATS error on {subject}: {exc.__class__.__name__}: {exc}")


NATS = SinkKind("nats", NatsDestination, lambda name, cfg, nc: NatsSink(name, cfg, nc))
