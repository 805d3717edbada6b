"""Priority lanes: which lane of a shard sends next when more than one has records waiting.

A route says ``priority: high | normal | low``; its records wait in that lane of each shard.
When lanes compete (the destination cannot take everything at once), each gets sends in
proportion to its share (``lanes`` in the destination's settings, 70 / 20 / 10 by default), so
high goes first but normal and low never starve. A lane with nothing waiting gives its share to
the others and banks only a little of it: coming back, it may lead the lanes that kept sending by
``BURST`` turns' worth (high's next 70 records, say), then settles at its share.
"""

from __future__ import annotations

from typing import Iterable

__all__ = ["HIGH", "LANES", "LOW", "NORMAL", "LaneScheduler", "lane_index"]

LANES = ("high", "normal", "low")
HIGH, NORMAL, LOW = 0, 1, 2


def lane_index(name: str) -> int:
    return LANES.index(name)


class LaneScheduler:
    BURST = 1.0  # the most a lane may lag the others (records over share): its catch-up after a pause

    def __init__(self, shares: tuple[float, float, float]) -> None:
        self.shares = shares
        self.served = [0.0, 0.0, 0.0]  # records sent, over the lane's share: its virtual time

    def pick(self, waiting: Iterable[int]) -> int | None:
        """The lane that sends next among those with records ``waiting`` (None: none waits): the one
        furthest behind its share; on a tie the higher priority."""
        waiting = list(waiting)
        if not waiting:
            return None
        served = self.served
        floor = max(served[lane] for lane in waiting) - self.BURST
        for lane in waiting:
            if served[lane] < floor:
                served[lane] = floor
        return min(waiting, key=lambda lane: (served[lane], lane))

    def charge(self, lane: int, records: int) -> None:
        served = self.served
        served[lane] += records / self.shares[lane]
        low = min(served)
        if low > 1e6:  # keep the numbers small; only differences count
            self.served = [s - low for s in served]
