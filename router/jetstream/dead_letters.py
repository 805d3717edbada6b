"""The dead-letter stream: what could not be routed or delivered, with the reason, never lost.

A dead letter keeps the original bytes (ingest failures) or the encoded record (destination
failures) as its payload; the why and the where travel in headers, so ``nats stream view`` and
``router dlq`` can show them without decoding the payload. A dead letter is published with a
JetStream ack before the source message is acked.
"""

from __future__ import annotations

import asyncio
import time

from nats.js import JetStreamContext

__all__ = ["DeadLetter", "DeadLetterPublisher", "H"]


class H:
    """Header names on dead letters."""

    REASON = "Router-Reason"
    STAGE = "Router-Stage"  # ingest | destination
    SOURCE = "Router-Source"  # source name (config)
    SUBJECT = "Router-Subject"  # the subject the original was published on
    STREAM_SEQ = "Router-Stream-Seq"
    DESTINATION = "Router-Destination"
    STATUS = "Router-Status"  # destination's HTTP status, when there was one
    RESPONSE = "Router-Response"  # excerpt of the destination's response
    FAILED_AT = "Router-Failed-At"
    KEY = "Idempotency-Key"
    CONTENT_TYPE = "Content-Type"


def _header_value(text: str, limit: int = 1024) -> str:
    # NATS header values are one line.
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


class DeadLetter:
    __slots__ = ("subject", "payload", "headers")

    def __init__(self, subject: str, payload: bytes, headers: dict[str, str]) -> None:
        self.subject, self.payload, self.headers = subject, payload, headers


class DeadLetterPublisher:
    def __init__(self, js: JetStreamContext, stream: str, subject_prefix: str) -> None:
        self._js = js
        self.stream = stream
        self.prefix = subject_prefix

    def ingest_failure(self, source: str, payload: bytes, reason: str, *, subject: str, stream_seq: int,
                       headers: dict[str, str] | None = None) -> DeadLetter:
        h = {
            H.REASON: _header_value(reason),
            H.STAGE: "ingest",
            H.SOURCE: source,
            H.SUBJECT: subject,
            H.STREAM_SEQ: str(stream_seq),
            H.FAILED_AT: f"{time.time():.3f}",
        }
        if headers:
            for k in (H.CONTENT_TYPE, H.KEY, "Nats-Msg-Id"):
                if k in headers:
                    h[k if k != "Nats-Msg-Id" else "Router-Original-Msg-Id"] = _header_value(headers[k])
        return DeadLetter(f"{self.prefix}.ingest.{source}", payload, h)

    def destination_failure(self, destination: str, key: str, record: bytes, reason: str, *,
                            status: int | None = None, response: str = "", origin: str = "") -> DeadLetter:
        h = {
            H.REASON: _header_value(reason),
            H.STAGE: "destination",
            H.DESTINATION: destination,
            H.KEY: _header_value(key, 256),
            H.FAILED_AT: f"{time.time():.3f}",
            H.CONTENT_TYPE: "application/json",
        }
        if status is not None:
            h[H.STATUS] = str(status)
        if response:
            h[H.RESPONSE] = _header_value(response, 512)
        if origin:
            h[H.SOURCE] = origin
        return DeadLetter(f"{self.prefix}.{destination}", record, h)

    async def publish(self, letters: list[DeadLetter]) -> None:
        """Publish with JetStream acks, concurrently; raises if any was not stored."""
        if letters:
            await asyncio.gather(*(
                self._js.publish(d.subject, d.payload, stream=self.stream, headers=d.headers, timeout=10)
                for d in letters
            ))
