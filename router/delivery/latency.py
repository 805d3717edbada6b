"""End-to-end latency of a shard's records: JetStream publish time to the destination's ack.

Observed once per ``submit``, when every record of it is final (that is when the source
messages can be acked), for the records delivered then, with no per-record objects: a submit
without duplicates or workflows (whatever its lanes) is bucketed as arrays, the others record by
record. Records that carry a workflow (an SLO in the config) are
also counted per workflow, with how many made it within the SLO; breaches are logged at most
once per ``log_every`` seconds per workflow, with the count since the last line.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

import numpy as np

from router.delivery.intake import DELIVERED
from router.delivery.lanes import LANES, NORMAL
from router.delivery.stats import DestinationStats
from router.histogram import LATENCY_BUCKETS, Histogram

__all__ = ["LatencyRecorder"]

log = logging.getLogger(__name__)


class LatencyRecorder:
    def __init__(self, destination: str, stats: DestinationStats, *, wall_ns: Callable[[], int] = time.time_ns,
                 clock: Callable[[], float] = time.monotonic, log_every: float = 30.0) -> None:
        self.destination = destination
        self.stats = stats
        self._wall_ns = wall_ns
        self._clock = clock
        self.log_every = log_every
        self._breaches: dict[str, tuple[int, float]] = {}  # workflow -> (not yet logged, worst seconds)
        self._logged_at: dict[str, float] = {}

    def observe(self, records: Any, items: list[Any]) -> None:
        """``records``: the submitted ``RecordBatch``; ``items``: its fresh records (``PendingRecord``, in order)."""
        published = getattr(records, "published", None)
        if not published or not items:
            return
        keys = records.keys
        n = len(keys)
        workflow = records.workflow if len(records.workflow) == n else None
        lanes = records.lanes if len(records.lanes) == n else None
        now = self._wall_ns()
        if len(items) == n == len(published) and workflow is None:
            self._observe_arrays(published, items, now, lanes)  # the usual submit, in a few array operations
            return
        if len(items) == n:  # no duplicates in this submit: the items line up with the records
            where: Any = range(n)
        else:
            pos = {k: i for i, k in enumerate(keys)}
            where = [pos[it.key] for it in items]
        seconds: list[float] = []
        per_workflow: dict[int, list[float]] = {}
        per_lane: dict[int, list[float]] = {}
        for it, i in zip(items, where):
            if it.outcome != DELIVERED or i >= len(published) or published[i] <= 0:
                continue
            s = max((now - published[i]) / 1e9, 0.0)  # clocks of two hosts may disagree a little
            seconds.append(s)
            if workflow is not None and workflow[i] >= 0:
                per_workflow.setdefault(workflow[i], []).append(s)
            if lanes is not None:
                per_lane.setdefault(lanes[i], []).append(s)
        self.stats.latency.observe_many(seconds)
        for lane, values in (per_lane.items() if lanes is not None else ((NORMAL, seconds),)):
            self._lane(lane).observe_many(values)
        for w, values in per_workflow.items():
            name, within = records.workflows[w]
            self._observe_workflow(name, within, values)

    def _observe_arrays(self, published: list[int], items: list[Any], now: int, lanes: list[int] | None) -> None:
        """``observe`` for records without workflows, one item per record; ``lanes``: each record's
        priority lane, None when all are normal."""
        hist = self.stats.latency
        at = np.fromiter(published, np.int64, len(published))
        seen = (at > 0) & np.fromiter((it.outcome == DELIVERED for it in items), bool, len(items))
        seconds = np.maximum((now - at) / 1e9, 0.0)  # clocks of two hosts may disagree a little
        # Bucket i holds the values <= bounds[i]: the first bound not below the value (``bisect_left``).
        buckets = np.searchsorted(hist.bounds, seconds, side="left")

        def add(into: Histogram, which: Any) -> None:
            into.add(np.bincount(buckets[which], minlength=len(hist.bounds) + 1).tolist(), float(seconds[which].sum()))

        add(hist, seen)
        if lanes is None:
            add(self._lane(NORMAL), seen)
            return
        lane_of = np.fromiter(lanes, np.int64, len(lanes))
        for lane in np.unique(lane_of[seen]).tolist():
            add(self._lane(lane), seen & (lane_of == lane))

    def _lane(self, lane: int) -> Histogram:
        hist = self.stats.lane_latency.get(LANES[lane])
        if hist is None:
            hist = self.stats.lane_latency[LANES[lane]] = Histogram(LATENCY_BUCKETS)
        return hist

    def _observe_workflow(self, name: str, within: float, values: list[float]) -> None:
        st = self.stats
        hist = st.workflow_latency.get(name)
        if hist is None:
            hist = st.workflow_latency[name] = Histogram(LATENCY_BUCKETS)
        hist.observe_many(values)
        inside = sum(1 for v in values if v <= within)
        st.workflow_within[name] = st.workflow_within.get(name, 0) + inside
        if inside < len(values):
            pending, worst = self._breaches.get(name, (0, 0.0))
            self._breaches[name] = (pending + len(values) - inside, max(worst, max(values)))
            now = self._clock()
            if now - self._logged_at.get(name, float("-inf")) >= self.log_every:
                count, worst = self._breaches.pop(name)
                self._logged_at[name] = now
                log.warning("SLO breach: %d records of workflow `%s` took longer than %gs (worst %.1fs)",
                            count, name, within, worst,
                            extra={"event": "slo_breach", "workflow": name, "destination": self.destination,
                                   "count": count, "slo_seconds": within, "worst_seconds": round(worst, 3)})
