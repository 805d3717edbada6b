"""The building blocks of the config: values written the way operators write them, and the
settings every destination kind shares.

A destination kind (``router/sinks/``) declares its own settings as a subclass of
``DestinationBase``; ``router/config.py`` assembles the whole config from these.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import msgspec

__all__ = [
    "AuthConfig", "Base", "BatchConfig", "BufferConfig", "ByteSize", "CircuitBreakerConfig", "DestinationBase",
    "Duration", "LaneShares", "Name", "RateLimitConfig", "RetryConfig", "Subject", "dec_hook", "enc_hook", "schema_hook",
]


# ---------------------------------------------------------------------------------------------
# Value types written the way operators write them: "250ms", "30s", "24h"; "1MiB".

class Duration(float):
    """Seconds; written as a number or a string like ``250ms``, ``30s``, ``5m``, ``24h``, ``7d``."""

    _UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
    _RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")

    @classmethod
    def parse(cls, value: Any) -> "Duration":
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
            return cls(value)
        if isinstance(value, str):
            m = cls._RE.match(value)
            if m:
                return cls(float(m.group(1)) * cls._UNITS[m.group(2)])
        raise ValueError(f"Expected a duration such as `250ms`, `30s`, `5m`, `24h` or seconds >= 0, got {value!r}")


class ByteSize(int):
    """Bytes; written as an integer or a string like ``512KiB``, ``1MiB``."""

    _UNITS = {"": 1, "b": 1, "kib": 1024, "kb": 1000, "mib": 1024**2, "mb": 1000**2, "gib": 1024**3, "gb": 1000**3}
    _RE = re.compile(r"^\s*(\d+)\s*([a-zA-Z]*)\s*$")

    @classmethod
    def parse(cls, value: Any) -> "ByteSize":
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return cls(value)
        if isinstance(value, str):
            m = cls._RE.match(value)
            if m and m.group(2).lower() in cls._UNITS and int(m.group(1)) > 0:
                return cls(int(m.group(1)) * cls._UNITS[m.group(2).lower()])
        raise ValueError(f"Expected a size such as `512KiB`, `1MiB` or bytes > 0, got {value!r}")


def dec_hook(tp: type, obj: Any) -> Any:
    if tp in (Duration, ByteSize):
        return tp.parse(obj)
    raise NotImplementedError(f"no decoder for {tp}")


def enc_hook(obj: Any) -> Any:
    """Config values back to plain JSON numbers (a stored live config revision)."""
    if isinstance(obj, Duration):
        return float(obj)
    if isinstance(obj, ByteSize):
        return int(obj)
    raise NotImplementedError(f"cannot encode {type(obj).__name__}")


def schema_hook(tp: type) -> dict[str, Any]:
    if tp is Duration:
        return {"anyOf": [{"type": "number", "minimum": 0}, {"type": "string", "pattern": Duration._RE.pattern}],
                "description": Duration.__doc__}
    if tp is ByteSize:
        return {"anyOf": [{"type": "integer", "minimum": 1}, {"type": "string"}], "description": ByteSize.__doc__}
    raise NotImplementedError


Name = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]+$", min_length=1, max_length=64)]
Subject = Annotated[str, msgspec.Meta(pattern=r"^[^\s]+$", min_length=1)]


class Base(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, kw_only=True, frozen=True):
    pass


# ---------------------------------------------------------------------------------------------
# what every destination kind has

class BatchConfig(Base):
    max_records: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 100  # records per request / publish burst
    max_bytes: ByteSize = 1024 * 1024  # body size cap per request
    linger: Duration = 0.02  # how long a partial batch may wait for more records while a batch is on its way (idle, it goes at once)


class RetryConfig(Base):
    max_attempts: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 6  # per batch, first try included
    initial_backoff: Duration = 0.2
    max_backoff: Duration = 30.0
    multiplier: Annotated[float, msgspec.Meta(ge=1.0, le=10.0)] = 2.0
    jitter: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] = 0.5  # fraction of each backoff drawn at random


class RateLimitConfig(Base):
    per_second: Annotated[float, msgspec.Meta(gt=0)]  # requests per second
    burst: Annotated[int, msgspec.Meta(ge=1)] = 1  # requests allowed at once after an idle spell
    # destination: the pool's shards together, on every node (a vendor quota is per API key);
    # shard: each pool actor on its own (the pool sends up to pool_size x per_second)
    scope: Literal["destination", "shard"] = "destination"


class BufferConfig(Base):
    """How much a destination may hold in memory before its records are parked in JetStream."""

    # Sized so that a healthy destination draining a backlog stays below both: parking is for a
    # destination that cannot keep up, and it costs a JetStream write and a read per record.
    max_records: Annotated[int, msgspec.Meta(ge=1)] = 50_000  # records queued, not yet sent
    max_wait: Duration = 5.0  # a record queued longer than this is parked, so the source moves on


class LaneShares(Base):
    """Each priority lane's share of the sends while lanes compete (see ``router/delivery/lanes.py``):
    relative weights; a lane with nothing waiting gives its share to the others."""

    high: Annotated[float, msgspec.Meta(gt=0)] = 70
    normal: Annotated[float, msgspec.Meta(gt=0)] = 20
    low: Annotated[float, msgspec.Meta(gt=0)] = 10

    def as_tuple(self) -> tuple[float, float, float]:
        return (self.high, self.normal, self.low)


class CircuitBreakerConfig(Base):
    """Opens on a failure rate, on consecutive failures or on slow calls; records are parked while open."""

    failure_rate: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.5  # share of failed calls in `window`
    slow_call_rate: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.8  # share of calls slower than `slow_call`
    slow_call: Duration = 5.0
    min_calls: Annotated[int, msgspec.Meta(ge=1)] = 10  # calls in `window` before the rates count
    consecutive_failures: Annotated[int, msgspec.Meta(ge=1)] = 5  # opens at once after this many in a row
    window: Duration = 10.0  # the sliding window the rates are measured over
    open_for: Duration = 5.0  # how long it stays open before probing
    half_open_probes: Annotated[int, msgspec.Meta(ge=1)] = 2  # successful probes that close it


class AuthConfig(Base):
    token_env: Annotated[str, msgspec.Meta(min_length=1)]  # environment variable holding the secret
    header: str = "Authorization"
    scheme: str = "Bearer"  # prefix before the token; empty for a raw API key header


class DestinationBase(Base, tag_field="kind"):
    """Settings every destination kind has; ``kind`` (the tag) picks the kind's own Struct."""

    batch: BatchConfig = BatchConfig()
    concurrency: Annotated[int, msgspec.Meta(ge=1, le=1024)] = 8  # most requests in flight per pool actor
    adaptive_concurrency: bool = True  # AIMD between 1 and `concurrency` on latency and push-back
    rate_limit: RateLimitConfig | None = None  # requests per second; its `scope` says for the pool or per actor
    # a Retry-After answered to one pool actor pauses: the whole pool (destination) or that actor (shard)
    retry_after_scope: Literal["destination", "shard"] = "destination"
    retry: RetryConfig = RetryConfig()
    buffer: BufferConfig = BufferConfig()
    circuit_breaker: CircuitBreakerConfig = CircuitBreakerConfig()
    park: bool = True  # breaker open, buffer full or retries exhausted: park durably (false: NAK the source)
    pool_size: Annotated[int, msgspec.Meta(ge=1, le=64)] = 1  # sink actors; each owns a key-hash shard of dedup
    timeout: Duration = 10.0  # per request
    # After a record with an ordering key is dead-lettered, its later records of that key: `continue` (deliver
    # them) or `hold` (dead-letter them too, as held, so `router dlq replay` can put the sequence back in order).
    after_dead_letter: Literal["continue", "hold"] = "continue"
    # Routes' `priority` lanes: each one's share of the sends while they compete.
    lanes: LaneShares = LaneShares()

    @property
    def kind(self) -> str:
        return self.__struct_config__.tag
