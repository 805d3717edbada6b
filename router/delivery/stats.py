"""What a destination shard reports: per submit, and as running totals for metrics and status."""

from __future__ import annotations

import msgspec

from router.histogram import BATCH_RECORDS_BUCKETS, LATENCY_BUCKETS, REQUEST_BUCKETS, Histogram
from router.policies.circuit_breaker import CLOSED

__all__ = ["DestinationStats", "SubmitResult"]


class SubmitResult(msgspec.Struct):
    delivered: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    parked: int = 0


class DestinationStats(msgspec.Struct):
    delivered: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    parked: int = 0
    replayed: int = 0
    requests: int = 0
    retries: int = 0
    exhausted_batches: int = 0
    breaker_opened: int = 0
    queued: int = 0
    in_flight_keys: int = 0
    known_keys: int = 0
    park_backlog: int = 0
    concurrency_limit: int = 0
    breaker_state: str = CLOSED
    config_revision: int = 0  # the live config revision whose settings this shard runs with
    # JetStream publish time of a source message to the destination's ack of its record, seconds
    # (records delivered while their source message was held; a replayed record is not in it).
    latency: Histogram = msgspec.field(default_factory=lambda: Histogram(LATENCY_BUCKETS))
    request_seconds: Histogram = msgspec.field(default_factory=lambda: Histogram(REQUEST_BUCKETS))
    batch_records: Histogram = msgspec.field(default_factory=lambda: Histogram(BATCH_RECORDS_BUCKETS))
    # Per workflow with an SLO (``slo:`` in the config, e.g. ``order.* -> erp``): end-to-end
    # latency, and how many of those records made it within the SLO.
    workflow_latency: dict[str, Histogram] = msgspec.field(default_factory=dict)
    workflow_within: dict[str, int] = msgspec.field(default_factory=dict)
    # Per priority lane (`high`, `normal`, `low`): records queued now, delivered, parked, and their latency.
    lane_queued: dict[str, int] = msgspec.field(default_factory=dict)
    lane_delivered: dict[str, int] = msgspec.field(default_factory=dict)
    lane_parked: dict[str, int] = msgspec.field(default_factory=dict)
    lane_latency: dict[str, Histogram] = msgspec.field(default_factory=dict)
