"""Circuit breaker: closed, open, half-open with limited probes; the clock is injected.

Opens when, over a sliding ``window``, enough calls were made (``min_calls``) and the share
that failed reaches ``failure_rate`` or the share slower than ``slow_call`` reaches
``slow_call_rate``; or straight away after ``consecutive_failures`` in a row. Stays open for
``open_for``, then lets ``half_open_probes`` probe calls through: all succeed, it closes; one
fails, it opens again. While it is not closed, the destination's records are parked, not
dead-lettered (Knative's lesson).

Own code: pybreaker and aiobreaker count consecutive failures only, with no failure-rate or
slow-call window and no injected clock.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Callable

from router.config import CircuitBreakerConfig

__all__ = ["CLOSED", "CircuitBreaker", "HALF_OPEN", "OPEN"]

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


class CircuitBreaker:
    def __init__(self, cfg: CircuitBreakerConfig, clock: Callable[[], float] = time.monotonic,
                 on_change: Callable[[str, str, str], None] | None = None) -> None:
        self.cfg = cfg
        self.on_change = on_change  # (from, to, reason) on every transition, e.g. to log it
        self._clock = clock
        self._state = CLOSED
        self._calls: deque[tuple[float, bool, bool]] = deque()  # (at, failed, slow)
        self._failed = self._slow = 0  # of the calls in the window, kept as they come and go
        self._consecutive = 0
        self._opened_at = 0.0
        self._probes_out = 0
        self._probes_ok = 0
        self.opened_count = 0
        self.last_reason = ""

    @property
    def state(self) -> str:
        if self._state == OPEN and self._clock() >= self._opened_at + self.cfg.open_for:
            self._state, self._probes_out, self._probes_ok = HALF_OPEN, 0, 0
            self._changed(OPEN, HALF_OPEN, f"open for {self.cfg.open_for:g}s: probing")
        return self._state

    def _changed(self, old: str, new: str, reason: str) -> None:
        if self.on_change is not None:
            self.on_change(old, new, reason)

    def allows_traffic(self) -> bool:
        """Closed: ordinary traffic may flow."""
        return self.state == CLOSED

    def try_probe(self) -> bool:
        """Half-open: take one of the probe slots (give it back with ``on_success`` / ``on_failure``)."""
        if self.state == HALF_OPEN and self._probes_out < self.cfg.half_open_probes:
            self._probes_out += 1
            return True
        return False

    def release_probe(self) -> None:
        """A probe slot taken but not used (nothing to send)."""
        self._probes_out = max(0, self._probes_out - 1)

    def _trim(self, now: float) -> None:
        horizon = now - self.cfg.window
        calls = self._calls
        while calls and calls[0][0] < horizon:
            _, failed, slow = calls.popleft()
            self._failed -= failed
            self._slow -= slow

    def _open(self, reason: str) -> None:
        old = self._state
        self._state, self._opened_at = OPEN, self._clock()
        self._calls.clear()
        self._failed = self._slow = 0
        self._consecutive = 0
        self.opened_count += 1
        self.last_reason = reason
        self._changed(old, OPEN, reason)

    def on_success(self, duration: float) -> None:
        self._record(False, duration)

    def on_failure(self, duration: float, reason: str = "") -> None:
        self._record(True, duration, reason)

    def _record(self, failed: bool, duration: float, reason: str = "") -> None:
        state = self.state
        if state == OPEN:
            return  # a late answer from before it opened
        if state == HALF_OPEN:
            self._probes_out = max(0, self._probes_out - 1)
            if failed:
                self._open(f"probe failed: {reason}")
            else:
                self._probes_ok += 1
                if self._probes_ok >= self.cfg.half_open_probes:
                    self._state = CLOSED
                    self._consecutive = 0
                    self._changed(HALF_OPEN, CLOSED, f"{self._probes_ok} probes succeeded")
            return
        now = self._clock()
        slow = duration >= self.cfg.slow_call
        self._calls.append((now, failed, slow))
        self._failed += failed
        self._slow += slow
        self._trim(now)
        self._consecutive = self._consecutive + 1 if failed else 0
        if failed and self._consecutive >= self.cfg.consecutive_failures:
            self._open(f"{self._consecutive} failures in a row: {reason}")
            return
        n = len(self._calls)
        if n >= self.cfg.min_calls:
            failures, slows = self._failed, self._slow  # not a count over the window per call: 800 calls at 80 a second
            if failures / n >= self.cfg.failure_rate:
                self._open(f"{failures} of {n} calls failed in {self.cfg.window:g}s: {reason}")
            elif slows / n >= self.cfg.slow_call_rate:
                self._open(f"{slows} of {n} calls slower than {self.cfg.slow_call:g}s")
