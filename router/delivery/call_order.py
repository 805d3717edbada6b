"""Calls from one sender, taken in the order it made them.

Ray does not keep the order of calls to an async actor. An ingest actor numbers its calls to each
sink actor (``seq``), and the sink actor lets each call take its place in the queue in that order:
records with an ordering key depend on it. A call whose predecessor has not come waits at most
``gap_wait`` seconds (the predecessor may have been lost with a restarted actor), and longer only
while that predecessor is here, waiting for its own place.
"""

from __future__ import annotations

import asyncio
import logging

from router.delivery.change_signal import ChangeSignal

__all__ = ["CallOrder"]

log = logging.getLogger(__name__)


class CallOrder:
    def __init__(self, name: str, gap_wait: float = 5.0) -> None:
        self.name = name  # for log lines
        self.gap_wait = gap_wait
        self._turns: dict[str, int] = {}  # sender -> its next call to take its place
        self._arrived: dict[str, set[int]] = {}  # sender -> its calls here, waiting for their turn
        # A shared Event that each waiter cleared lost wake-ups (see ChangeSignal): calls sat out the
        # whole ``gap_wait`` with their turn come, about one run of 150,000 events in ten.
        self._changed = ChangeSignal()

    async def wait_turn(self, sender: str, seq: int, floor: int) -> None:
        """Return when every earlier call of ``sender`` has taken its place (``done``). ``floor``:
        the sender's oldest call still open, where a sender not seen here yet starts."""
        turns = self._turns
        if sender not in turns:
            turns[sender] = floor  # a new or restarted sender, or this actor was restarted
        arrived = self._arrived.setdefault(sender, set())
        arrived.add(seq)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.gap_wait
        try:
            while turns[sender] < seq:
                changed = self._changed.watch()
                remaining = deadline - loop.time()
                if remaining <= 0 and turns[sender] in arrived:
                    deadline += self.gap_wait  # the call before is here and waits for its place: wait for it
                    continue
                if remaining <= 0:
                    log.warning("%s: call %d of %s waited %.0fs for call %d; going on", self.name, seq, sender,
                                self.gap_wait, turns[sender])
                    return
                try:
                    await asyncio.wait_for(changed.wait(), remaining)
                except asyncio.TimeoutError:
                    pass
        finally:
            arrived.discard(seq)

    def done(self, sender: str, seq: int) -> None:
        """``seq`` has taken its place: the next call of ``sender`` may take its own."""
        self._turns[sender] = max(self._turns.get(sender, 0), seq + 1)
        self._changed.notify()
