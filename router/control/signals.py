"""SIGINT / SIGTERM handlers that survive Ray.

``loop.add_signal_handler`` depends on the loop's wakeup fd, and ``ray.init`` installs handlers
of its own in the driver; a plain ``signal.signal`` handler that hands the callback to the loop
works either way. Install it after ``ray.init``.
"""

from __future__ import annotations

import asyncio
import signal
from typing import Callable

__all__ = ["on_signals", "on_stop_signals"]


def on_stop_signals(callback: Callable[[], None]) -> None:
    on_signals((signal.SIGINT, signal.SIGTERM), callback)


def on_signals(signals: tuple[signal.Signals, ...], callback: Callable[[], None]) -> None:
    """Run ``callback`` on the running loop whenever one of ``signals`` arrives."""
    loop = asyncio.get_running_loop()

    def handler(*_: object) -> None:
        try:
            loop.call_soon_threadsafe(callback)
        except RuntimeError:
            pass  # the loop has closed: shutting down is already under way

    for sig in signals:
        signal.signal(sig, handler)
