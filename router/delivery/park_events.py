"""Log lines for parking and replay, which come in floods during an outage: written when the
shard's stats are read (every couple of seconds, by the supervisor's poll), one line per kind
with the count since the last line, never one per record or per batch."""

from __future__ import annotations

import logging
from typing import Any

from router.delivery.stats import DestinationStats

__all__ = ["ParkEventLog"]

log = logging.getLogger("router.delivery.park")


class ParkEventLog:
    def __init__(self, destination: str) -> None:
        self.destination = destination
        self._parked = 0
        self._replayed = 0

    def report(self, st: DestinationStats, breaker: Any) -> None:
        parked, replayed = st.parked - self._parked, st.replayed - self._replayed
        self._parked, self._replayed = st.parked, st.replayed
        if parked > 0:
            log.warning("%s: %d records parked (backlog %d; breaker %s%s)", self.destination, parked, st.park_backlog,
                        st.breaker_state, f": {breaker.last_reason}" if breaker.last_reason else "",
                        extra={"event": "park", "destination": self.destination, "count": parked,
                               "backlog": st.park_backlog, "breaker": st.breaker_state,
                               "reason": breaker.last_reason})
        if replayed > 0:
            log.info("%s: %d parked records replayed (backlog %d)", self.destination, replayed, st.park_backlog,
                     extra={"event": "replay", "destination": self.destination, "count": replayed,
                            "backlog": st.park_backlog})
