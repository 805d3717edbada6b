"""How many ingest actors a source runs: more while its consumer lags, fewer when it has caught up.

The ingest actors of a source share its durable consumer, so one more actor is one more fetch
loop on the same backlog. ``IngestScaler.decide`` is a pure function of what the supervisor
observes each poll (messages pending on the consumer, actors running, the time): it adds one
actor when the lag per actor has stayed above ``scale_up_pending`` for ``scale_hold`` seconds,
and removes one when it has stayed below ``scale_down_pending`` as long; always between
``ingest_actors`` and ``max_ingest_actors``. The two thresholds and the hold are the hysteresis:
a lag that crosses a threshold for a moment changes nothing, and after each change the hold
starts again, so the new count is measured before the next change.
"""

from __future__ import annotations

from typing import Any

__all__ = ["IngestScaler"]


class IngestScaler:
    def __init__(self, minimum: int, maximum: int, up_pending: int, down_pending: int, hold: float) -> None:
        self.minimum, self.maximum = minimum, maximum
        self.up_pending, self.down_pending, self.hold = up_pending, down_pending, hold
        self._high_since: float | None = None  # when the lag per actor went above up_pending
        self._low_since: float | None = None

    @classmethod
    def for_source(cls, src: Any) -> "IngestScaler | None":
        """The source's scaler; none when it has a fixed number of ingest actors."""
        if src.max_ingest_actors is None or src.max_ingest_actors == src.ingest_actors:
            return None
        return cls(src.ingest_actors, src.max_ingest_actors, src.scale_up_pending, src.scale_down_pending,
                   src.scale_hold)

    def decide(self, pending: int, actors: int, now: float) -> int:
        """+1 (add an actor), -1 (remove one) or 0."""
        per_actor = pending / max(actors, 1)
        self._high_since = (self._high_since if self._high_since is not None else now) \
            if per_actor > self.up_pending else None
        self._low_since = (self._low_since if self._low_since is not None else now) \
            if per_actor < self.down_pending else None
        step = 0
        if actors < self.minimum:
            step = 1  # below the floor (e.g. the config was raised): no need to wait
        elif actors > self.maximum:
            step = -1
        elif self._high_since is not None and now - self._high_since >= self.hold and actors < self.maximum:
            step = 1
        elif self._low_since is not None and now - self._low_since >= self.hold and actors > self.minimum:
            step = -1
        if step:  # the next change in the same direction needs a full hold of the new count
            self._high_since = now if step > 0 else None
            self._low_since = now if step < 0 else None
        return step
