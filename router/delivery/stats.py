"""What a destination shard reports: per submit, and as running totals for metrics and status."""

from __future__ import annotations

import msgspec

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
