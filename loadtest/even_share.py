"""The share of a rehearsal's events sent malformed or re-sent, spread evenly."""

from __future__ import annotations


class EvenShare:
    """Picks a given share of calls, spread evenly rather than by dice: a short run (the CI
    rehearsal sends ~300 events at 1% malformed) still gets its share, where random picks
    leave it with none about one run in twenty. One per process, shared by its users."""

    def __init__(self) -> None:
        self._credit = 0.5  # the first pick comes half a period in

    def pick(self, share: float, allowed: bool = True) -> bool:
        self._credit += share
        if self._credit >= 1.0 and allowed:
            self._credit -= 1.0
            return True
        return False  # a pick not allowed yet stays owed (its credit is kept)
