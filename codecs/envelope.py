"""The input envelope contract and its decoder.

An envelope is JSON (no ``Content-Type`` header, ``application/json`` or ``application/*+json``),
or MessagePack when the NATS header ``Content-Type: application/msgpack`` is set; any other
content type is rejected with the type named. ``idempotency_key`` may come from the body or, when
absent there, from the ``Idempotency-Key`` or ``Nats-Msg-Id`` header; wherever it comes from it
is 1 to 256 characters with no control characters. ``correlation_id`` is derived from the
idempotency key when absent, so a redelivered event keeps the same correlation id.

``EventDecoder.decode`` raises ``InvalidEvent`` and nothing else, whatever the bytes: invalid
UTF-8, nesting deeper than the decoder allows, or anything unforeseen all become a reason.
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime
from typing import Annotated, Any

import msgspec

from .models import MODEL_BY_FAMILY

__all__ = ["Envelope", "Event", "EventDecoder", "InvalidEvent", "MAX_KEY_LENGTH", "MSGPACK_CONTENT_TYPE"]

MSGPACK_CONTENT_TYPE = "application/msgpack"
MAX_KEY_LENGTH = 256

# Media type (lower case, without parameters) -> format. `application/*+json` is JSON too.
_FORMATS = {
    "application/json": "json",
    MSGPACK_CONTENT_TYPE: "msgpack",
    "application/x-msgpack": "msgpack",
    "application/vnd.msgpack": "msgpack",
}
# Control characters (C0, DEL, C1), line separators and lone surrogates: a key holding one would
# reach logs, headers and terminals (`router dlq list`) as something other than what it looks like.
_KEY_FORBIDDEN = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")

EventType = Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)+$")]


class Envelope(msgspec.Struct):
    """The wire envelope; ``data`` stays raw until its family's model decodes it."""

    type: EventType
    source: Annotated[str, msgspec.Meta(min_length=1)]
    occurred_at: Annotated[datetime, msgspec.Meta(tz=True)]
    data: msgspec.Raw
    idempotency_key: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_KEY_LENGTH)] | None = None
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


def _format_of(content_type: str) -> str:
    media = content_type.split(";", 1)[0].strip().lower()
    if not media:
        return "json"
    fmt = _FORMATS.get(media) or ("json" if media.startswith("application/") and media.endswith("+json") else None)
    if fmt is None:
        shown = content_type if len(content_type) <= 80 else content_type[:77] + "..."
        raise InvalidEvent(f"unsupported Content-Type {shown!r}: the router reads application/json "
                           f"(or no Content-Type) and {MSGPACK_CONTENT_TYPE}")
    return fmt


def _checked_key(key: str, origin: str) -> str:
    """The same rules whether the key came from the body or a header."""
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidEvent(f"idempotency key from {origin} is {len(key)} characters long; "
                           f"the limit is {MAX_KEY_LENGTH}")
    if not key.isprintable():  # fast path: printable keys need no closer look
        bad = _KEY_FORBIDDEN.search(key)
        if bad:
            raise InvalidEvent(f"idempotency key from {origin} contains the control character "
                               f"U+{ord(bad.group()):04X} at position {bad.start()}")
    return key


def _no_extensions(code: int, data: memoryview) -> Any:
    # An extension type has no JSON form, so no destination could take the event.
    raise InvalidEvent(f"MessagePack extension type {code} is not supported")


def _derived_correlation_id(idempotency_key: str) -> str:
    """The UUID (version 4 form) made of the key's 128-bit hash: the same for every delivery of the
    event. Formatted by hand: ``str(uuid.UUID(...))`` cost twice as much, once per event without one."""
    d = bytearray(hashlib.blake2b(idempotency_key.encode(), digest_size=16).digest())
    d[6] = d[6] & 0x0F | 0x40  # version 4
    d[8] = d[8] & 0x3F | 0x80  # RFC 4122 variant
    h = d.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


class EventDecoder:
    """One reusable msgspec decoder per (format, model); ``decode`` is the hot path."""

    def __init__(self) -> None:
        self._envelope = {
            "json": msgspec.json.Decoder(Envelope),
            "msgpack": msgspec.msgpack.Decoder(Envelope, ext_hook=_no_extensions),
        }
        self._models = {
            "json": {f: msgspec.json.Decoder(m) for f, m in MODEL_BY_FAMILY.items()},
            "msgpack": {f: msgspec.msgpack.Decoder(m, ext_hook=_no_extensions) for f, m in MODEL_BY_FAMILY.items()},
        }
        self._generic = {
            "json": msgspec.json.Decoder(dict[str, Any]),
            "msgpack": msgspec.msgpack.Decoder(dict[str, Any], ext_hook=_no_extensions),
        }

    def decode(self, payload: bytes, headers: dict[str, str] | None = None, subject: str = "") -> Event:
        fmt = "json"
        content_type = headers.get("Content-Type") if headers else None
        if content_type:
            fmt = _format_of(content_type)
        try:
            env = self._envelope[fmt].decode(payload)
        except msgspec.ValidationError as exc:
            raise InvalidEvent(f"invalid envelope: {exc}") from None
        except msgspec.DecodeError as exc:
            raise InvalidEvent(f"undecodable {fmt}: {exc}") from None
        except InvalidEvent:
            raise
        except Exception as exc:
            raise InvalidEvent(f"undecodable {fmt}: {_unexpected(exc)}") from None

        key = env.idempotency_key
        if key is not None:
            if not key.isprintable():  # inline fast path; the length is checked by the Envelope type
                _checked_key(key, "the `idempotency_key` field")
        elif headers:
            key = headers.get("Idempotency-Key")
            if key:
                _checked_key(key, "the `Idempotency-Key` header")
            else:
                key = headers.get("Nats-Msg-Id")
                if key:
                    _checked_key(key, "the `Nats-Msg-Id` header")
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
        except InvalidEvent:
            raise
        except Exception as exc:
            raise InvalidEvent(f"undecodable {family} payload: {_unexpected(exc)}") from None

        return Event(
            idempotency_key=key,
            correlation_id=env.correlation_id or _derived_correlation_id(key),
            type=env.type,
            source=env.source,
            occurred_at=env.occurred_at,
            data=data,
            subject=subject,
        )


def _unexpected(exc: Exception) -> str:
    """A reason for what msgspec raises besides its own errors (seen: invalid UTF-8, deep nesting)."""
    if isinstance(exc, UnicodeDecodeError):
        return f"a string is not valid UTF-8 ({exc.reason})"
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    return f"{exc.__class__.__name__}: {exc}"
