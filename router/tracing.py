"""W3C trace context passed through: a ``traceparent`` header on a source message reaches the
destinations with each record made from it.

Every record gets it as a field ``traceparent`` (an HTTP batch holds records of many source
messages, so one header per request could not say which trace a record belongs to); NATS
destinations also get it as the ``traceparent`` header of the record's message. A value that is
not a well-formed ``traceparent`` (version-traceid-parentid-flags, lower-case hex) is ignored.
"""

from __future__ import annotations

import re
from typing import Mapping

import msgspec

from router.wire import TRACEPARENT

__all__ = ["RecordTrace", "record_trace", "traceparent_of", "with_traceparent"]

_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")


def traceparent_of(headers: Mapping[str, str] | None) -> str | None:
    if not headers:
        return None
    tp = headers.get(TRACEPARENT) or headers.get("Traceparent")
    if tp and _TRACEPARENT.match(tp.strip()) and tp.strip()[:2] != "ff":  # version ff is invalid
        return tp.strip()
    return None


class RecordTrace(msgspec.Struct):
    correlation_id: str = ""  # every encoded record carries one
    traceparent: str = ""  # when its source message had one


# Reads only these fields of an encoded record (msgspec skips the rest without building it).
_trace_decoder = msgspec.json.Decoder(RecordTrace)


def record_trace(record: bytes) -> RecordTrace:
    """A record's correlation id and traceparent, for headers and log lines (empty if unreadable)."""
    try:
        return _trace_decoder.decode(record)
    except msgspec.DecodeError:
        return RecordTrace()


def with_traceparent(record: bytes, tp: str) -> bytes:
    """``record`` (an encoded JSON object) with ``"traceparent": tp`` added as its last field.
    ``tp`` has passed ``traceparent_of``: hex and dashes only, nothing to escape."""
    end = record.rstrip()
    if not end.endswith(b"}"):
        return record  # not a JSON object: leave it as the encoder made it
    body = end[:-1].rstrip()
    sep = b"" if body.endswith(b"{") else b","
    return body + sep + b'"traceparent":"' + tp.encode() + b'"}'
