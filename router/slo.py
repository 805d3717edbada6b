"""Per-workflow latency SLOs: ``slo:`` in the config, e.g.

    slo:
      "inventory.* -> marketplace": 60s
      "order.created -> erp": 5m

A workflow is the events whose type matches the pattern (``*`` and ``?`` as in shell globs)
on their way to one destination. The ingest planner tags each record with its workflow (the
first SLO that matches, in the file's order), the destination shard measures publish-to-ack
latency per workflow, and ``/metrics`` exports the histogram and the share within the SLO.
"""

from __future__ import annotations

import re
from fnmatch import translate
from typing import Callable

import msgspec

__all__ = ["Slo", "WorkflowTagger", "parse_slos"]

_KEY = re.compile(r"^\s*(?P<types>[A-Za-z0-9_.*?-]+)\s*->\s*(?P<destination>[A-Za-z0-9_-]+)\s*$")


class Slo(msgspec.Struct, frozen=True):
    name: str  # the key as written, normalised: "<types> -> <destination>"; the metrics label
    types: str
    destination: str
    within: float  # seconds


def parse_slos(raw: dict[str, float], destinations: list[str] | None,
               error: Callable[[str, str], Exception]) -> list[Slo]:
    """``raw``: the config's ``slo`` mapping (durations already in seconds). ``error(path, message)``
    builds the exception to raise (a ``ConfigError`` naming the file). ``destinations``: the ones
    an SLO may name; None: not checked (the ingest actor, whose live revision may have removed a
    destination an SLO names, drops such SLOs itself rather than stop routing)."""
    out = []
    for key, within in raw.items():
        m = _KEY.match(key)
        if m is None:
            raise error(f"slo.{key}", "expected `<event type pattern> -> <destination>`, "
                                      "e.g. `order.created -> erp` or `inventory.* -> marketplace`")
        dest = m["destination"]
        if destinations is not None and dest not in destinations:
            raise error(f"slo.{key}", f"unknown destination `{dest}`; expected one of: {', '.join(sorted(destinations))}")
        if within <= 0:
            raise error(f"slo.{key}", "the SLO must be a positive duration, e.g. `60s` or `5m`")
        out.append(Slo(f"{m['types']} -> {dest}", m["types"], dest, float(within)))
    return out


class WorkflowTagger:
    """Which SLO a record (event type, destination) belongs to: an index into ``table``, or -1.
    Cached per (type, destination): event types are few, so this is one dict lookup per record."""

    def __init__(self, slos: list[Slo]) -> None:
        self.slos = slos
        self.table = [(s.name, s.within) for s in slos]
        self._patterns = [(re.compile(translate(s.types)).match, s.destination) for s in slos]
        self._cache: dict[tuple[str, str], int] = {}

    def __bool__(self) -> bool:
        return bool(self.slos)

    def index(self, event_type: str, destination: str) -> int:
        k = (event_type, destination)
        i = self._cache.get(k)
        if i is None:
            i = next((n for n, (match, dest) in enumerate(self._patterns)
                      if dest == destination and match(event_type)), -1)
            if len(self._cache) < 10_000:  # types come from input: bound the cache
                self._cache[k] = i
        return i
