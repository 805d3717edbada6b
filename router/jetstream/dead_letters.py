"""The dead-letter stream: what could not be routed or delivered, with the reason, never lost.

A dead letter keeps the original bytes (ingest failures) or the encoded record (destination
failures) as its payload; the why and the where travel in headers, so ``nats stream view`` and
``router dlq`` can show them without decoding the payload. A dead letter is published with a
JetStream ack before the source message is acked.

Header values are one line with control characters escaped (``printable``): a hostile key or
reason must not reach a terminal as escape sequences. A dead letter that would exceed the
server's ``max_payload`` (payload plus headers; the server drops the connection on such a
publish) keeps a prefix of its payload that fits, with headers giving the original size and its
SHA-256, so it is stored rather than retried forever.
"""

from __future__ import annotations

import asyncio
import hashlib
import time

from nats.js import JetStreamContext

from router.wire import ORDERING_KEY

__all__ = ["DeadLetter", "DeadLetterPublisher", "H", "printable"]

DEFAULT_MAX_PAYLOAD = 1024 * 1024  # nats-server's default, used until the connection says otherwise
_HEADER_MARGIN = 64  # bytes kept free under max_payload, beyond the computed size


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
    # on a dead letter whose payload was cut to fit the server's max_payload
    TRUNCATED = "Router-Truncated"  # bytes kept, e.g. "first 1047000 of 1048000 bytes"
    ORIGINAL_SIZE = "Router-Original-Size"  # bytes
    ORIGINAL_DIGEST = "Router-Original-Digest"  # "sha256:<hex>" of the whole original payload


def _escape(ch: str) -> str:
    o = ord(ch)
    return f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}" if o < 0x10000 else f"\\U{o:08x}"


def printable(text: str) -> str:
    """``text`` with every non-printable character (control characters, escape sequences, line
    and bidi controls, lone surrogates) written as a ``\\xNN`` / ``\\uNNNN`` escape: safe to
    print on a terminal. Use it for whatever is shown from a dead letter."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _escape(c) for c in text)


def _header_value(text: str, limit: int = 1024) -> str:
    # NATS header values are one line: runs of whitespace become one space, the rest is escaped.
    flat = " ".join(str(text)[: limit * 2].split())
    flat = printable(flat)
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _headers_size(headers: dict[str, str]) -> int:
    """Bytes the client sends for these headers: ``NATS/1.0\\r\\n``, ``key: value\\r\\n`` each, ``\\r\\n``."""
    return 12 + sum(len(k.encode()) + len(v.encode()) + 4 for k, v in headers.items())


class DeadLetter:
    __slots__ = ("subject", "payload", "headers")

    def __init__(self, subject: str, payload: bytes, headers: dict[str, str]) -> None:
        self.subject, self.payload, self.headers = subject, payload, headers


class DeadLetterPublisher:
    def __init__(self, js: JetStreamContext, stream: str, subject_prefix: str, *,
                 max_payload: int | None = None) -> None:
        self._js = js
        self.stream = stream
        self.prefix = subject_prefix
        self._max_payload = max_payload  # None: the connection's, read at each publish

    @property
    def max_payload(self) -> int:
        if self._max_payload is not None:
            return self._max_payload
        nc = getattr(self._js, "_nc", None)  # the JetStream context's connection (nats-py)
        return getattr(nc, "max_payload", None) or DEFAULT_MAX_PAYLOAD

    def fitted(self, letter: DeadLetter) -> DeadLetter:
        """``letter`` as is when it fits the server's max_payload; else its payload cut to fit."""
        limit = self.max_payload - _HEADER_MARGIN
        if len(letter.payload) + _headers_size(letter.headers) <= limit:
            return letter
        size = len(letter.payload)
        h = dict(letter.headers)
        h[H.ORIGINAL_SIZE] = str(size)
        h[H.ORIGINAL_DIGEST] = "sha256:" + hashlib.sha256(letter.payload).hexdigest()
        h[H.TRUNCATED] = f"first {size} of {size} bytes"  # at least as long as the final value
        keep = max(0, limit - _headers_size(h))
        h[H.TRUNCATED] = f"first {keep} of {size} bytes"
        return DeadLetter(letter.subject, letter.payload[:keep], h)

    def ingest_failure(self, source: str, payload: bytes, reason: str, *, subject: str, stream_seq: int,
                       headers: dict[str, str] | None = None) -> DeadLetter:
        h = {
            H.REASON: _header_value(reason),
            H.STAGE: "ingest",
            H.SOURCE: source,
            H.SUBJECT: _header_value(subject),
            H.STREAM_SEQ: str(stream_seq),
            H.FAILED_AT: f"{time.time():.3f}",
        }
        if headers:
            for k in (H.CONTENT_TYPE, H.KEY, "Nats-Msg-Id"):
                if k in headers:
                    h[k if k != "Nats-Msg-Id" else "Router-Original-Msg-Id"] = _header_value(headers[k], 512)
        return DeadLetter(f"{self.prefix}.ingest.{source}", payload, h)

    def destination_failure(self, destination: str, key: str, record: bytes, reason: str, *,
                            status: int | None = None, response: str = "", origin: str = "",
                            order_key: int = 0) -> DeadLetter:
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
        if order_key:  # a replay goes to the shard that holds the record's sequence
            h[ORDERING_KEY] = f"{order_key:016x}"
        return DeadLetter(f"{self.prefix}.{destination}", record, h)

    async def publish(self, letters: list[DeadLetter]) -> None:
        """Publish with JetStream acks, concurrently; raises if any was not stored."""
        for res in await self.publish_each(letters):
            if res is not None:
                raise res

    async def publish_each(self, letters: list[DeadLetter]) -> list[BaseException | None]:
        """Publish with JetStream acks, concurrently; per letter, None when stored or the error,
        so one letter that cannot be stored does not hold back the others."""
        if not letters:
            return []
        fitted = [self.fitted(d) for d in letters]
        results = await asyncio.gather(*(
            self._js.publish(d.subject, d.payload, stream=self.stream, headers=d.headers, timeout=10)
            for d in fitted
        ), return_exceptions=True)
        return [r if isinstance(r, BaseException) else None for r in results]
