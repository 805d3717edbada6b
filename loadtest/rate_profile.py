"""Offered event rate over time for the peak rehearsal: plain arithmetic, no locust.

A profile says how many events per second to publish at second ``t`` of a run; the locust shape
(``shapes.py``) follows it, the report draws it, and the unit tests check it without locust (whose
import monkey-patches the process with gevent, which the router's own processes must not get).

``holiday-peak`` compresses a Black Friday into the run: baseline, a ramp to 3x normal orders, the
3x plateau (two hours in real life), a 10x flash-sale spike, back to 3x, decay to baseline.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["HOLIDAY_PEAK", "PROFILES", "Phase", "RateProfile", "STEADY", "make_profile"]


class Phase(NamedTuple):
    label: str
    end: float  # fraction of the run at which the phase ends
    start_x: float  # rate multiplier (x base rate) at the phase's start ...
    end_x: float  # ... and at its end (linear in between)


HOLIDAY_PEAK = (
    Phase("baseline", 0.10, 1, 1),
    Phase("ramp to 3x", 0.25, 1, 3),
    Phase("3x peak", 0.50, 3, 3),
    Phase("flash sale ramp", 0.53, 3, 10),
    Phase("flash sale 10x", 0.60, 10, 10),
    Phase("flash sale ends", 0.63, 10, 3),
    Phase("3x peak", 0.75, 3, 3),
    Phase("decay", 0.90, 3, 1),
    Phase("baseline", 1.00, 1, 1),
)
STEADY = (Phase("steady", 1.0, 1, 1),)
PROFILES = {"holiday-peak": HOLIDAY_PEAK, "steady": STEADY}


class RateProfile:
    """Events per second at second ``t`` of a run of ``duration`` seconds."""

    def __init__(self, phases: tuple[Phase, ...], base_rate: float, duration: float) -> None:
        if base_rate <= 0 or duration <= 0:
            raise ValueError("base rate and duration must be > 0")
        self.phases, self.base_rate, self.duration = phases, base_rate, duration

    def multiplier(self, t: float) -> float:
        x = t / self.duration
        start = 0.0
        for ph in self.phases:
            if x <= ph.end:
                span = ph.end - start
                f = (x - start) / span if span > 0 else 1.0
                return ph.start_x + (ph.end_x - ph.start_x) * max(0.0, f)
            start = ph.end
        return 0.0  # after the run

    def rate(self, t: float) -> float:
        return self.base_rate * self.multiplier(t) if 0 <= t <= self.duration else 0.0

    def phase_at(self, t: float) -> str:
        x = t / self.duration
        return next((ph.label for ph in self.phases if x <= ph.end), "done")

    def total_events(self, step: float = 0.1) -> float:
        """Expected events over the run (numerical integral of the rate)."""
        n = int(self.duration / step)
        return sum(self.rate((i + 0.5) * step) for i in range(n)) * step


def make_profile(name: str, base_rate: float, duration: float) -> RateProfile:
    try:
        phases = PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown load shape {name!r}; expected one of: {', '.join(PROFILES)}") from None
    return RateProfile(phases, base_rate, duration)
