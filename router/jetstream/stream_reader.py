"""Reading a stream without disturbing its consumers: an ephemeral consumer that acks nothing.

No durable consumer moves, nothing is acked; the ephemeral consumer lives in memory and is
removed by the server shortly after the read (``inactive_threshold``).
"""

from __future__ import annotations

from typing import Any

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext, api

__all__ = ["read_tail"]


async def read_tail(js: JetStreamContext, stream: str, n: int, batch: int = 500) -> list[Any]:
    """The last ``n`` messages of ``stream`` (fewer if it holds fewer), oldest first."""
    try:
        info = await js.stream_info(stream)
    except nats.js.errors.NotFoundError:
        return []
    last, first = info.state.last_seq, info.state.first_seq
    if not info.state.messages or n <= 0:
        return []
    start = max(first, last - n + 1)
    sub = await js.pull_subscribe(">", stream=stream, config=api.ConsumerConfig(
        ack_policy=api.AckPolicy.NONE, deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start,
        inactive_threshold=30.0, mem_storage=True))
    out: list[Any] = []
    try:
        while True:
            try:
                msgs = await sub.fetch(batch, timeout=1.0)
            except nats.errors.TimeoutError:
                break
            out.extend(m for m in msgs if m.metadata.sequence.stream <= last)
            if not msgs or msgs[-1].metadata.sequence.stream >= last:
                break
    finally:
        await sub.unsubscribe()
    return out
