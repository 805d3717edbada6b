"""The live part of the config: what changes without a restart, and what a change costs.

The route table and the destinations' settings reload live; sources, NATS, dedup, parking and
Ray settings need a restart. A revision is the live part as JSON, stored in the KV bucket
(``router/jetstream/revisions.py``); ``compare`` says what a new revision changes, and the
supervisor applies it:

- routes only: each ingest actor swaps its table between two batches (no pause);
- a destination's limits (batch, concurrency, rate limit, retry, timeout, breaker, buffer,
  url / subject, headers, auth): in place in its running sink actors, no restart, no journal replay;
- a destination added, removed, or its `pool_size` or `park` changed: ingest pauses (open batches
  finish), new sink actors start and load their dedup shard from the journal, removed ones
  drain and stop, then ingest resumes with the new table. The pause lasts as long as the open
  batches take to finish plus the journal replay of the new actors.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from router.config import Config, ConfigError, Route, check_references, parse_section
from router.config_base import Base, Name, enc_hook
from router.sinks import DestinationConfig

__all__ = ["Change", "LiveConfig", "compare", "decode_live", "encode_live", "live_part", "with_live"]


class LiveConfig(Base):
    routes: Annotated[list[Route], msgspec.Meta(min_length=1)]
    destinations: Annotated[dict[Name, DestinationConfig], msgspec.Meta(min_length=1)]


def live_part(cfg: Config) -> LiveConfig:
    return LiveConfig(routes=list(cfg.route_list), destinations=dict(cfg.destinations))


def encode_live(live: LiveConfig) -> bytes:
    return msgspec.json.encode(live, enc_hook=enc_hook)


def decode_live(value: bytes, where: str) -> LiveConfig:
    """A stored revision; ``ConfigError`` (naming ``where``) if it is not a valid live config."""
    try:
        raw = msgspec.json.decode(value)
    except msgspec.DecodeError as exc:
        raise ConfigError(where, "", f"not valid JSON: {exc}") from None
    return parse_section(raw, LiveConfig, where)


def with_live(cfg: Config, live: LiveConfig, where: str) -> Config:
    """The running config with a new live part, checked as a whole (every route's destinations exist,
    encoders fit, ...); raises ``ConfigError`` and changes nothing otherwise."""
    new = msgspec.structs.replace(cfg, routes=list(live.routes), destinations=dict(live.destinations))
    check_references(new, where, where)
    return new


class Change(msgspec.Struct):
    routes: bool = False  # the route table differs
    added: list[str] = msgspec.field(default_factory=list)  # destinations
    removed: list[str] = msgspec.field(default_factory=list)
    rebuilt: list[str] = msgspec.field(default_factory=list)  # pool_size or park changed: new sink actors
    retuned: list[str] = msgspec.field(default_factory=list)  # limits changed in place

    @property
    def needs_pause(self) -> bool:
        return bool(self.added or self.removed or self.rebuilt)

    @property
    def empty(self) -> bool:
        return not (self.routes or self.added or self.removed or self.rebuilt or self.retuned)

    def describe(self) -> str:
        parts = []
        if self.routes:
            parts.append("route table")
        for what, names in (("added", self.added), ("removed", self.removed),
                            ("rebuilt (pool size or parking)", self.rebuilt), ("retuned in place", self.retuned)):
            if names:
                parts.append(f"{what}: {', '.join(names)}")
        return "; ".join(parts) or "nothing"


def _rebuild_fields(d: Any) -> tuple[Any, ...]:
    return (d.kind, d.pool_size, d.park)


def compare(old: Config, new: Config) -> Change:
    ch = Change(routes=list(old.route_list) != list(new.route_list))
    for name in sorted(set(old.destinations) | set(new.destinations)):
        a, b = old.destinations.get(name), new.destinations.get(name)
        if a is None:
            ch.added.append(name)
        elif b is None:
            ch.removed.append(name)
        elif _rebuild_fields(a) != _rebuild_fields(b):
            ch.rebuilt.append(name)
        elif a != b:
            ch.retuned.append(name)
    return ch
