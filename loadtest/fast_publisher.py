"""A pipelined JetStream publisher for filling streams quickly (benchmarks, backlog tests).

Publishes with a reply subject on one ack inbox and keeps up to ``window`` acks outstanding,
instead of awaiting each ``js.publish`` in turn.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Callable, Iterable

from nats.aio.client import Client
from nats.aio.msg import Msg

__all__ = ["publish_pipelined"]


async def publish_pipelined(nc: Client, messages: Iterable[tuple[str, bytes]], *, window: int = 4000,
                            progress: Callable[[int], None] | None = None,
                            on_sent: Callable[[int, float], None] | None = None) -> int:
    """Publish (subject, payload) pairs; returns how many the streams acked. ``on_sent(i, t)`` is
    called with each message's index and send time (for latency measurements)."""
    inbox = nc.new_inbox()
    acked = 0
    failed: list[bytes] = []
    room = asyncio.Semaphore(window)

    async def on_ack(msg: Msg) -> None:
        nonlocal acked
        if msg.data[:9] == b'{"stream"':
            acked += 1
        else:
            failed.append(msg.data or (msg.headers or {}).get("Status", "").encode())
        room.release()

    sub = await nc.subscribe(inbox, cb=on_ack)
    sent = 0
    last = time.monotonic()
    try:
        for i, (subject, payload) in zip(itertools.count(), messages):
            await room.acquire()
            if on_sent:
                on_sent(i, time.time())
            await nc.publish(subject, payload, reply=inbox)
            sent += 1
            if progress and time.monotonic() - last >= 1.0:
                last = time.monotonic()
                progress(sent)
        deadline = time.monotonic() + 30
        while acked + len(failed) < sent and time.monotonic() < deadline:
            await nc.flush()
            await asyncio.sleep(0.01)
    finally:
        await sub.unsubscribe()
    if failed:
        raise RuntimeError(f"{len(failed)} publishes were refused, e.g. {failed[0][:200]!r}")
    return acked
