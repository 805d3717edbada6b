"""Subscriptions whose messages go straight to a function, without nats-py's per-message machinery.

For every message nats-py builds a ``Msg`` object, puts it on the subscription's queue and has a
task take it off and await the callback: a few microseconds each, paid for every message pulled
from a source and every PubAck of every record published to a stream. The router's busiest
subscriptions (the pull consumers' inboxes, the publishers' ack inboxes) take their messages
here instead: one plain call per message with a small ``Delivery``, headers parsed by nats-py's
own parser only when there are any.

It reads the connection's MSG frames itself (``message_frames.py``) and hooks
``Client._process_msg`` (the method nats-py's protocol parser calls for each message, stable since
2.0) for the messages nats-py's parser still reads; messages of other subscriptions go the usual
way. A client without it gets an ordinary subscription with the same handler.
"""

from __future__ import annotations

from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg

from router.jetstream import message_frames
from router.jetstream.message_frames import BareHandler, Delivery, Handler

__all__ = ["Delivery", "subscribe_direct", "unsubscribe_direct"]

_DIRECT = hasattr(Client, "_process_msg") and hasattr(Client, "_process_headers")


def _table(nc: Client) -> dict[int, Handler]:
    """The connection's direct handlers by subscription id; installs the hook once per connection."""
    table = getattr(nc, "_router_direct", None)
    if table is not None:
        return table
    table = {}
    bare: dict[int, BareHandler] = {}
    usual = nc._process_msg  # noqa: SLF001 (see the module docstring)
    stats = nc.stats

    async def process_msg(sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes) -> None:
        if not headers and sid in bare:
            stats["in_msgs"] += 1
            stats["in_bytes"] += len(data)
            message_frames.hand_over_bare(bare[sid], subject, data)
            return
        handler = table.get(sid)
        if handler is None:
            await usual(sid, subject, reply, data, headers)
            return
        stats["in_msgs"] += 1
        stats["in_bytes"] += len(data)
        hdr = await nc._process_headers(headers) if headers else None  # noqa: SLF001
        message_frames.hand_over(handler, Delivery(subject.decode(), reply.decode(), data, hdr))

    nc._process_msg = process_msg  # type: ignore[method-assign]  # noqa: SLF001
    if message_frames.supported:
        message_frames.install(nc, table, bare)
    nc._router_direct = table  # type: ignore[attr-defined]
    nc._router_bare = bare  # type: ignore[attr-defined]
    return table


async def subscribe_direct(nc: Client, subject: str, handler: Handler, bare: BareHandler | None = None) -> Any:
    """Subscribe; every message on it goes to ``handler`` (synchronously, in arrival order), or,
    when ``bare`` is given, those without headers to ``bare`` (subject and payload as read).
    Returns the subscription, to end with ``unsubscribe_direct``."""
    async def cb(msg: Msg) -> None:  # with the hook, only for a message that came before it was in place
        if bare is not None and not msg.headers:
            bare(msg.subject.encode(), msg.data)
        else:
            handler(Delivery(msg.subject, msg.reply, msg.data, msg.headers))

    if not _DIRECT:
        return await nc.subscribe(subject, cb=cb)
    table = _table(nc)
    sub = await nc.subscribe(subject, cb=cb)
    table[sub._id] = handler  # noqa: SLF001
    if bare is not None:
        nc._router_bare[sub._id] = bare  # type: ignore[attr-defined]  # noqa: SLF001
    return sub


async def unsubscribe_direct(nc: Client, sub: Any) -> None:
    """Unsubscribe, and drop the handlers: nothing reaches them after this, and they are not kept alive."""
    getattr(nc, "_router_direct", {}).pop(sub._id, None)  # noqa: SLF001
    getattr(nc, "_router_bare", {}).pop(sub._id, None)  # noqa: SLF001
    await sub.unsubscribe()
