"""Plays a scenario's fault windows against the destination emulators, on the load's clock.

Each window is a ``POST /faults/<dest>`` with the fault at its start and a ``DELETE /faults/<dest>``
at its end (the emulator's API, ``loadtest/sink_emulator.py``). What was actually applied, and when
(Unix time), is kept for the report, which shades those windows. Every fault is cleared on the way
out, even when the rehearsal is interrupted, so the emulators are left healthy.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable

import aiohttp
import msgspec

from router.loadtest.scenario import FaultWindow

__all__ = ["AppliedFault", "FaultTimeline"]


class AppliedFault(msgspec.Struct):
    name: str
    destination: str
    fault: dict[str, Any]
    started_at: float  # Unix time the emulator took the fault
    ended_at: float = 0.0  # Unix time it was cleared (0 while open)


class FaultTimeline:
    def __init__(self, emulator_url: str, faults: list[FaultWindow],
                 say: Callable[[str], None] = lambda _msg: None) -> None:
        self.url = emulator_url.rstrip("/")
        self.faults = sorted(faults, key=lambda f: f.start_s)
        self.applied: list[AppliedFault] = []
        self.say = say

    def active(self) -> list[AppliedFault]:
        return [a for a in self.applied if not a.ended_at]

    async def play(self, t0: float) -> None:
        """Apply and clear each window at ``t0 + start_s`` / ``t0 + end_s`` (``t0`` a Unix time)."""
        steps: list[tuple[float, int, FaultWindow]] = []
        for f in self.faults:
            steps += [(t0 + f.start_s, 1, f), (t0 + f.end_s, 0, f)]
        steps.sort(key=lambda s: (s[0], s[1]))  # a window that ends clears before the next one starts
        async with aiohttp.ClientSession() as http:
            try:
                for at, is_start, f in steps:
                    await asyncio.sleep(max(0.0, at - time.time()))
                    if is_start:
                        await self._apply(http, f)
                    else:
                        await self._clear(http, f.destination)
            finally:
                for a in self.active():
                    await asyncio.shield(self._clear(http, a.destination))

    async def _apply(self, http: aiohttp.ClientSession, f: FaultWindow) -> None:
        body = msgspec.to_builtins(f.fault)
        async with http.post(f"{self.url}/faults/{f.destination}", json=body) as r:
            r.raise_for_status()
        self.applied.append(AppliedFault(f.name, f.destination, body, time.time()))
        self.say(f"fault on: {f.name} ({f.destination}: {body})")

    async def _clear(self, http: aiohttp.ClientSession, destination: str) -> None:
        async with http.delete(f"{self.url}/faults/{destination}") as r:
            r.raise_for_status()
        for a in self.applied:
            if a.destination == destination and not a.ended_at:
                a.ended_at = time.time()
                self.say(f"fault off: {a.name}")
