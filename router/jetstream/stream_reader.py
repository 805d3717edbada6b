"""Reading a stream without disturbing its consumers: an ephemeral consumer that acks nothing.

No durable consumer moves, nothing is acked; the ephemeral consumer lives in memory and the
server removes it shortly after the read (``inactive_threshold``). Used by ``router routes diff``
(the latest messages) and ``router reconcile`` (a time window of every stream).
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone
from typing import Any, AsyncIterator

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext, api

__all__ = ["batches_until", "read_only_consumer", "read_tail"]

FETCH = 1000  # messages per pull request


async def read_only_consumer(js: JetStreamContext, stream: str, subject: str = ">", *, since: float | None = None,
                             start_seq: int | None = None) -> Any:
    """A pull subscription from the start of ``stream`` (or from ``since``, Unix seconds, or ``start_seq``)."""
    cc = api.ConsumerConfig(ack_policy=api.AckPolicy.NONE, inactive_threshold=30.0, mem_storage=True,
                            deliver_policy=api.DeliverPolicy.ALL, max_ack_pending=-1)
    if since is not None:
        cc.deliver_policy = api.DeliverPolicy.BY_START_TIME
        cc.opt_start_time = datetime.fromtimestamp(since, timezone.utc).isoformat().replace("+00:00", "Z")
    elif start_seq is not None:
        cc.deliver_policy = api.DeliverPolicy.BY_START_SEQUENCE
        cc.opt_start_seq = start_seq
    return await js.pull_subscribe(subject, stream=stream, config=cc)


async def batches_until(sub: Any, last_seq: int, fetch: int = FETCH) -> AsyncIterator[list[Any]]:
    """Batches of messages up to stream sequence ``last_seq`` (the stream's end when the read began)."""
    while True:
        try:
            msgs = await sub.fetch(fetch, timeout=1.0)
        except (asyncio.TimeoutError, nats.errors.TimeoutError):
            # A slow answer is not the end: stop only when the consumer says nothing is left.
            if (await sub.consumer_info()).num_pending == 0:
                return
            continue
        yield msgs
        if not msgs or msgs[-1].metadata.sequence.stream >= last_seq or msgs[-1].metadata.num_pending == 0:
            return


async def read_tail(js: JetStreamContext, stream: str, n: int) -> list[Any]:
    """The last ``n`` messages of ``stream`` (fewer if it holds fewer), oldest first."""
    try:
        info = await js.stream_info(stream)
    except nats.js.errors.NotFoundError:
        return []
    if not info.state.messages or n <= 0:
        return []
    last = info.state.last_seq
    sub = await read_only_consumer(js, stream, start_seq=max(info.state.first_seq, last - n + 1))
    out: list[Any] = []
    try:
        async for msgs in batches_until(sub, last):
            out.extend(m for m in msgs if m.metadata.sequence.stream <= last)
    finally:
        await sub.unsubscribe()
    return out
