"""The input envelope contract and its decoder.

An envelope is JSON, or MessagePack when the NATS header ``Content-Type: application/msgpack``
is set. ``idempotency_key`` may come from the body or, when absent there, from the
``Idempotency-Key`` or ``Nats-Msg-Id`` header. ``correlation_id`` is derived from the
idempotency key when absent, so a redelivered event keeps the same correlation id.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import datetime
from typing import Annotated, Any

import msgspec

from .models import MODEL_BY_FAMILY

__all__ = ["Envelope", "Event", "EventDecoder", "InvalidEvent", "MSGPACK_CONTENT_TYPE"]

MSGPACK_CONTENT_TYPE = "application/msgpack"

EventType = Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)+$")]


class Envelope(msgspec.Struct):
    """The wire envelope; ``data`` stays raw until its family's model decodes it."""

    type: EventType
    source: Annotated[str, msgspec.Meta(min_length=1)]
    occurred_at: Annotated[datetime, msgspec.Meta(tz=True)]
    data: msgspec.Raw
    idempotency_key: Annotated[str, msgspec.Meta(min_length=1, max_length=256)] | None = None
    correlation_id: str | None = None


class Event(msgspec.Struct):
    """A decoded, validated event as the routing table and the encoders see it."""

    idempotency_key: str
    correlation_id: str
    type: str
    source: str
    occurred_at: datetime
    data: Any  # the family's model (see models.py), or a dict for families the router does not model
    subject: str = ""


class InvalidEvent(ValueError):
    """Raised with a reason an operator can act on; the message is dead-lettered with it."""


def _derived_correlation_id(idempotency_key: str) -> str:
    digest = hashlib.blake2b(idempotency_key.encode(), digest_size=16).digest()
    return str(uuid.UUID(bytes=digest, version=4))


class EventDecoder:
    """One reusable msgspec decoder per (format, model); ``decode`` is the hot path."""

    def __init__(self) -> None:
        self._envelope = {
            "json": msgspec.json.Decoder(Envelope),
            "msgpack": msgspec.msgpack.Decoder(Envelope),
        }
        self._models = {
            "json": {f: msgspec.json.Decoder(m) for f, m in MODEL_BY_FAMILY.items()},
            "msgpack": {f: msgspec.msgpack.Decoder(m) for f, m in MODEL_BY_FAMILY.items()},
        }
        self._generic = {
            "json": msgspec.json.Decoder(dict[str, Any]),
            "msgpack": msgspec.msgpack.Decoder(dict[str, Any]),
        }

    def decode(self, payload: bytes, headers: dict[str, str] | None = None, subject: str = "") -> Event:
        fmt = "json"
        if headers and headers.get("Content-Type", "").startswith(MSGPACK_CONTENT_TYPE):
            fmt = "msgpack"
        try:
            env = self._envelope[fmt].decode(payload)
        except msgspec.ValidationError as exc:
            raise InvalidEvent(f"invalid envelope: {exc}") from None
        except msgspec.DecodeError as exc:
            raise InvalidEvent(f"undecodable {fmt}: {exc}") from None

        key = env.idempotency_key
        if key is None and headers:
            key = headers.get("Idempotency-Key") or headers.get("Nats-Msg-Id")
        if not key:
            raise InvalidEvent(
                "missing idempotency key: set the `idempotency_key` field or the "
                "`Idempotency-Key` / `Nats-Msg-Id` header"
            )

        family = env.type.split(".", 1)[0]
        decoder = self._models[fmt].get(family) or self._generic[fmt]
        try:
            data = decoder.decode(env.data)
        except msgspec.ValidationError as exc:
            # msgspec reports paths from the payload's root; say where that is in the envelope.
            raise InvalidEvent(f"invalid {family} payload: {str(exc).replace('`$', '`$.data')}") from None
        except msgspec.DecodeError as exc:
            raise InvalidEvent(f"undecodable {family} payload: {exc}") from None

        return Event(
            idempotency_key=key,
            correlation_id=env.correlation_id or _derived_correlation_id(key),
            type=env.type,
            source=env.source,
            occurred_at=env.occurred_at,
            data=data,
            subject=subject,
        )
