"""Names on the wire, defined once: headers, subjects and consumer names the router reads or writes.

Streams are named by the config (``dedup.stream``, ``dead_letter.stream``, ``parking.stream``,
with their defaults there); the subjects inside them are built here.
"""

from __future__ import annotations

__all__ = [
    "CONTENT_TYPE", "CORRELATION_ID", "IDEMPOTENCY_KEY", "TRACEPARENT", "MSGPACK_CONTENT_TYPE", "NATS_MSG_ID", "JOURNAL_SHARD_HASHES", "ORDERING_KEY", "PRIORITY_LANE", "ORIGIN", "PARKED_REASON",
    "ROUTES_REVISION", "dlq_destination_subject", "dlq_ingest_subject", "journal_subject", "journal_subjects",
    "park_durable",
    "park_subject",
]

# -- headers ----------------------------------------------------------------------------------------
IDEMPOTENCY_KEY = "Idempotency-Key"  # on input (the key), on HTTP requests (the batch id), on parked records
NATS_MSG_ID = "Nats-Msg-Id"  # JetStream's publish-side dedup id: the record's key on NATS destinations
CONTENT_TYPE = "Content-Type"
MSGPACK_CONTENT_TYPE = "application/msgpack"
ROUTES_REVISION = "Router-Routes-Revision"  # the route table revision that routed a record
ORIGIN = "Router-Source"  # "<source>/<stream seq>" of the event a record came from
PARKED_REASON = "Router-Parked-Reason"
CORRELATION_ID = "Router-Correlation-Id"  # a record's correlation id, on each message to a NATS destination
TRACEPARENT = "traceparent"  # W3C trace context: read on source messages, passed on with each record
PRIORITY_LANE = "Router-Priority"  # a parked record's priority lane (`high`, `low`; none: normal)
ORDERING_KEY = "Router-Ordering-Key"  # the hash of a record's ordering key (hex), on parked records and dead letters
JOURNAL_SHARD_HASHES = "Router-Shard-Hashes"  # a dedup journal message that also lists each key's shard hash


# -- subjects and consumers ------------------------------------------------------------------------------
def journal_subject(stream: str, destination: str) -> str:
    """The dedup journal of one destination (stream ``dedup.stream``)."""
    return f"router.dedup.{stream.lower()}.{destination}"


def journal_subjects(stream: str) -> str:
    return f"router.dedup.{stream.lower()}.>"


def park_subject(prefix: str, destination: str, shard: int) -> str:
    """One shard's park (stream ``parking.stream``)."""
    return f"{prefix}.{destination}.{shard}"


def park_durable(destination: str, shard: int) -> str:
    return f"park-{destination}-{shard}"


def dlq_ingest_subject(prefix: str, source: str) -> str:
    """Input from ``source`` that could not be decoded or routed (stream ``dead_letter.stream``)."""
    return f"{prefix}.ingest.{source}"


def dlq_destination_subject(prefix: str, destination: str) -> str:
    """Records ``destination`` refused."""
    return f"{prefix}.{destination}"
