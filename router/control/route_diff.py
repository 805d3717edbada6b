"""What a new route table would change, shown on real traffic: a dry run over the latest events.

Both tables route the same sample (the last N messages of each source stream, read without
consuming them); per destination, how many would go there now and after, with a few example
events whose destinations change.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import msgspec

from router.codecs import EventDecoder, InvalidEvent
from router.config import Route
from router.ingest.routing import RouteTable

__all__ = ["DryRun", "RouteChanges", "dry_run", "route_changes"]


class RouteChanges(msgspec.Struct):
    added: list[str]
    removed: list[str]
    changed: list[str]


def route_changes(old: list[Route], new: list[Route]) -> RouteChanges:
    before, after = {r.name: r for r in old}, {r.name: r for r in new}
    return RouteChanges(added=[n for n in after if n not in before], removed=[n for n in before if n not in after],
                        changed=[n for n in after if n in before and after[n] != before[n]])


class Example(msgspec.Struct):
    subject: str
    type: str
    key: str
    now: list[str]
    after: list[str]


class DryRun(msgspec.Struct):
    sampled: int = 0
    invalid: int = 0  # would be dead-lettered either way
    now: dict[str, int] = msgspec.field(default_factory=dict)  # destination -> events
    after: dict[str, int] = msgspec.field(default_factory=dict)
    changed: int = 0  # events whose destinations differ
    examples: list[Example] = msgspec.field(default_factory=list)


def dry_run(messages: list[Any], old: list[Route], new: list[Route], examples: int = 5) -> DryRun:
    decoder, before, after = EventDecoder(), RouteTable(old), RouteTable(new)
    out = DryRun()
    now_counts, after_counts = Counter(), Counter()
    for m in messages:
        out.sampled += 1
        try:
            ev = decoder.decode(m.data, m.headers, m.subject)
        except InvalidEvent:
            out.invalid += 1
            continue
        a = sorted(t.destination for t in before.targets(ev))
        b = sorted(t.destination for t in after.targets(ev))
        now_counts.update(a)
        after_counts.update(b)
        if a != b:
            out.changed += 1
            if len(out.examples) < examples:
                out.examples.append(Example(m.subject, ev.type, ev.idempotency_key, a, b))
    out.now, out.after = dict(now_counts), dict(after_counts)
    return out
