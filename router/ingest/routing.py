"""The route table compiler: which destinations (and encoders) an event goes to.

A route matches on NATS subject wildcards, event types (``order.*``) and field predicates. An
event may match several routes; it goes to the union of their destinations, once each. When two
routes send it to the same destination, the first route (file order) decides the encoder, the
ordering key and the priority.
Matching on (subject, type) is cached; only predicates are evaluated per event.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import msgspec

from router.codecs import Encoder, Event, get_encoder
from router.config import Predicate, Route
from router.delivery.key_hash import key_hash
from router.delivery.lanes import NORMAL, lane_index

__all__ = ["RouteTable", "RouteTarget", "ordering_hash", "wildcard_match"]

_MISSING = object()


def wildcard_match(pattern: str, value: str) -> bool:
    """NATS token wildcards: ``*`` is one token, ``>`` one or more trailing tokens."""
    if pattern == value or pattern == ">":
        return True
    p, v = pattern.split("."), value.split(".")
    for i, tok in enumerate(p):
        if tok == ">":
            return len(v) > i
        if i >= len(v) or (tok != "*" and tok != v[i]):
            return False
    return len(p) == len(v)


def _field(ev: Event, path: list[str]) -> Any:
    obj: Any = ev
    for part in path:
        if isinstance(obj, dict):
            obj = obj.get(part, _MISSING)
        else:
            obj = getattr(obj, part, _MISSING)
        if obj is _MISSING or obj is None:
            return _MISSING
    return obj


def _compare(value: Any, op: str, ref: Any) -> bool:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    return {"gt": value > ref, "gte": value >= ref, "lt": value < ref, "lte": value <= ref}[op]


class _CompiledPredicate:
    __slots__ = ("path", "pred")

    def __init__(self, field: str, pred: Predicate) -> None:
        self.path = field.split(".")
        self.pred = pred

    def __call__(self, ev: Event) -> bool:
        v = _field(ev, self.path)
        p = self.pred
        if p.exists is not msgspec.UNSET and (v is not _MISSING) != p.exists:
            return False
        if v is _MISSING:
            # Only negative tests (ne, not_in, exists: false) hold for a missing field.
            return all(getattr(p, f) is msgspec.UNSET for f in ("eq", "in_", "gt", "gte", "lt", "lte"))
        if p.eq is not msgspec.UNSET and v != p.eq:
            return False
        if p.ne is not msgspec.UNSET and v == p.ne:
            return False
        if p.in_ is not msgspec.UNSET and v not in p.in_:
            return False
        if p.not_in is not msgspec.UNSET and v in p.not_in:
            return False
        for op in ("gt", "gte", "lt", "lte"):
            ref = getattr(p, op)
            if ref is not msgspec.UNSET and not _compare(v, op, ref):
                return False
        return True


class RouteTarget(NamedTuple):
    destination: str
    encoder: Encoder
    route: str
    ordering: tuple[list[str], ...] = ()  # field paths of the route's ordering key, split at dots
    lane: int = NORMAL  # the route's priority lane (router/delivery/lanes.py)


def ordering_hash(ev: Event, paths: tuple[list[str], ...]) -> int:
    """The hash of an event's ordering key (0 when the route has none or the event lacks a field:
    such a record is delivered without an order promise)."""
    values = []
    for path in paths:
        v = _field(ev, path)
        if v is _MISSING:
            return 0
        values.append(str(v))
    return key_hash("\x1f".join(values)) if values else 0


class _CompiledRoute:
    __slots__ = ("route", "predicates", "targets")

    def __init__(self, route: Route) -> None:
        self.route = route
        self.predicates = [_CompiledPredicate(f, p) for f, p in route.match.where.items()]
        enc = get_encoder(route.encoder)
        ordering = tuple(p.split(".") for p in route.ordering_key)
        lane = lane_index(route.priority)
        self.targets = [RouteTarget(d, enc, route.name, ordering, lane) for d in route.destinations]

    def static_match(self, subject: str, type_: str) -> bool:
        m = self.route.match
        return (not m.subjects or any(wildcard_match(s, subject) for s in m.subjects)) and (
            not m.types or any(wildcard_match(t, type_) for t in m.types)
        )


class RouteTable:
    """Compiled once per config (and per live reload); ``targets`` is the per-event hot path."""

    _CACHE_LIMIT = 50_000

    def __init__(self, routes: list[Route]) -> None:
        self._routes = [_CompiledRoute(r) for r in routes]
        # (subject, type) -> the routes that may match (by position in the table), and their targets
        # when none has predicates
        self._cache: dict[tuple[str, str], tuple[list[tuple[int, _CompiledRoute]], list[RouteTarget] | None]] = {}
        self._unions: dict[tuple[int, ...], list[RouteTarget]] = {}  # positions of matched routes -> targets
        self.destinations = sorted({d for r in routes for d in r.destinations})

    def _candidates(self, subject: str, type_: str) -> tuple[list[tuple[int, _CompiledRoute]], list[RouteTarget] | None]:
        key = (subject, type_)
        hit = self._cache.get(key)
        if hit is None:
            if len(self._cache) >= self._CACHE_LIMIT:
                self._cache.clear()
            routes = [(i, r) for i, r in enumerate(self._routes) if r.static_match(subject, type_)]
            fixed = None if any(r.predicates for _, r in routes) else _union([r for _, r in routes])
            hit = self._cache[key] = (routes, fixed)
        return hit

    def targets(self, ev: Event) -> list[RouteTarget]:
        """The event's destinations, once each. Events that match the same routes get the same list
        (the planner prepares and counts per list): do not change it."""
        routes, fixed = self._candidates(ev.subject, ev.type)
        if fixed is not None:
            return fixed
        matched = tuple(i for i, r in routes if all(p(ev) for p in r.predicates))
        out = self._unions.get(matched)
        if out is None:
            if len(self._unions) >= self._CACHE_LIMIT:
                self._unions.clear()
            out = self._unions[matched] = _union([self._routes[i] for i in matched])
        return out


def _union(routes: list[_CompiledRoute]) -> list[RouteTarget]:
    """The targets of these routes, each destination once: the first route (file order) decides."""
    out: list[RouteTarget] = []
    seen: set[str] = set()
    for r in routes:
        for t in r.targets:
            if t.destination not in seen:
                seen.add(t.destination)
                out.append(t)
    return out
