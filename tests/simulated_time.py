"""Simulated time for asyncio: the clock jumps to the next timer whenever every task is waiting.

Delivery logic takes the loop's clock (``loop.time``) and waits with ``asyncio.sleep`` /
``wait_for``; on this loop a 30-second outage or a 2-second ``Retry-After`` costs microseconds,
and the order of events is exactly what the timers say. Only for code that does no real I/O
(the in-memory ports): with nothing scheduled and a task waiting on a socket it would block.
"""

from __future__ import annotations

import asyncio
from typing import Any, Coroutine, TypeVar

T = TypeVar("T")


class SimulatedTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        super().__init__()
        self._now = 0.0

    def time(self) -> float:
        return self._now

    def _run_once(self) -> None:
        # Nothing ready to run: move the clock to the earliest timer instead of sleeping until it.
        if not self._ready and self._scheduled:
            self._now = max(self._now, self._scheduled[0]._when)
        super()._run_once()


def run_simulated(coro: Coroutine[Any, Any, T], timeout: float = 3600.0) -> T:
    """Run ``coro`` on a fresh simulated-time loop; ``timeout`` is in simulated seconds."""
    loop = SimulatedTimeLoop()
    try:
        return loop.run_until_complete(asyncio.wait_for(coro, timeout))
    finally:
        loop.close()
