"""A fixed-bucket histogram an actor keeps in its stats and the supervisor merges across a pool.

Plain counts, no locks and no Prometheus objects: an actor observes into it on its own event
loop, the stats call ships it as part of a msgspec Struct, and ``merge`` adds two of them up.
Buckets follow Prometheus: ``counts[i]`` holds the values ``<= bounds[i]`` (and above the bound
before it); the last count is everything above the last bound (``+Inf``).
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Iterable

import msgspec

__all__ = ["BATCH_RECORDS_BUCKETS", "Histogram", "LATENCY_BUCKETS", "REQUEST_BUCKETS", "merge_into"]

# End-to-end latency (publish to the destination's ack), seconds: a healthy router sits in the
# first buckets; a parked outage or a slow ERP lands in the minutes.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
# One request to a destination, seconds.
REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Records per request.
BATCH_RECORDS_BUCKETS = (1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0)


class Histogram(msgspec.Struct):
    bounds: tuple[float, ...] = LATENCY_BUCKETS
    counts: list[int] = msgspec.field(default_factory=list)  # len(bounds) + 1, filled on first use
    sum: float = 0.0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)

    @property
    def count(self) -> int:
        return sum(self.counts)

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def observe_many(self, values: Iterable[float]) -> None:
        counts, bounds, total = self.counts, self.bounds, 0.0
        for v in values:
            counts[bisect_left(bounds, v)] += 1
            total += v
        self.sum += total

    def add(self, counts: list[int], total: float) -> None:
        """Observations already counted into these buckets (``counts``, one per bucket) summing to ``total``."""
        self.counts = [a + b for a, b in zip(self.counts, counts)]
        self.sum += total

    def merge(self, other: "Histogram") -> None:
        """Add ``other``'s observations to this one (same buckets, else ``ValueError``)."""
        if tuple(other.bounds) != tuple(self.bounds):
            raise ValueError(f"cannot merge histograms with different buckets: {other.bounds} into {self.bounds}")
        self.add(other.counts, other.sum)

    def copy(self) -> "Histogram":
        return Histogram(tuple(self.bounds), list(self.counts), self.sum)

    def cumulative(self) -> list[tuple[str, int]]:
        """Prometheus buckets: (``le``, observations at or below it), ending with ``+Inf``."""
        out, running = [], 0
        for bound, n in zip(self.bounds, self.counts):
            running += n
            out.append((_le(bound), running))
        out.append(("+Inf", running + self.counts[-1]))
        return out


def _le(bound: float) -> str:
    return str(int(bound)) + ".0" if float(bound).is_integer() else repr(float(bound))


def merge_into(into: dict[str, Histogram], other: dict[str, Histogram]) -> None:
    """Merge a dict of histograms (one per label value) into another, copying what is new."""
    for name, h in other.items():
        if name in into:
            into[name].merge(h)
        else:
            into[name] = h.copy()
