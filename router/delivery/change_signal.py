"""Wake every task waiting for a change, without losing a wake-up.

The usual ``event.clear(); await event.wait()`` loses one when several tasks wait: a task woken by
an older change clears the event after a newer ``set()`` and before another task, which checked its
condition before that newer change, has begun to wait (Python 3.11's ``wait_for`` begins the wait a
step later). That task then sleeps out its whole timeout with its condition met. Here each change
sets the event the waiters hold and hands out a new one, and nobody clears: a task takes
``watch()`` in the same step as it checks its condition, so any change after the check wakes it.
"""

from __future__ import annotations

import asyncio

__all__ = ["ChangeSignal"]


class ChangeSignal:
    def __init__(self) -> None:
        self._event = asyncio.Event()

    def watch(self) -> asyncio.Event:
        """The event the next change sets: take it when checking the condition, then wait on it."""
        return self._event

    def notify(self) -> None:
        self._event.set()
        self._event = asyncio.Event()
