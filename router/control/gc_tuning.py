"""The garbage collector's settings in the actor processes.

An actor allocates a few Python objects per record (a queued record, its outcome, tuples) at tens
of thousands of records a second, and CPython's cyclic collector runs every 700 net allocations,
each run walking the young objects, and every so often the whole heap: Ray and the router's
modules alone are a few hundred thousand objects. What an actor process holds after start-up
lives as long as the process, so it is frozen out of the collector's walks (``gc.freeze``), and
young collections run 20 times less often. Nothing the router allocates per record forms a
cycle that only the collector could free; the collector still runs.
"""

from __future__ import annotations

import gc

__all__ = ["tune_gc"]

YOUNG_THRESHOLD = 14_000  # net allocations between young collections (CPython default: 700)


def tune_gc() -> None:
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, older, oldest)
