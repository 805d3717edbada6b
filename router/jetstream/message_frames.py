"""Reading the server's MSG / HMSG frames in one pass over what a socket read brought.

nats-py's protocol parser works one message at a time on a shrinking buffer: two regular
expressions tried, the arguments kept in a dict, the payload copied out, and an ``await`` of the
client's ``_process_msg`` for every message (about 2 us each, paid for every message pulled from
a source and every PubAck of every record published). ``parse_frames`` walks the read's bytes
by offset instead and hands the messages of the router's direct subscriptions to their handler
with a plain call; what it does not know (PING, INFO, -ERR, a malformed line) goes to nats-py's
parser, which also finishes a message it had begun.

It is installed as the ``parse`` of a connection's own parser object (``install``), so the state
nats-py keeps there (buffer, a message half read) stays the one both read from.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from nats.protocol import parser as nats_parser

__all__ = ["BareHandler", "Delivery", "Handler", "hand_over", "hand_over_bare", "install", "supported"]

log = logging.getLogger(__name__)


BIG_PAYLOAD = 64 * 1024  # a message this large, not all here yet, is left to nats-py's parser

supported = all(hasattr(nats_parser, n) for n in ("Parser", "AWAITING_CONTROL_LINE", "MAX_CONTROL_LINE_SIZE"))


class Delivery:
    """One message: what the router reads of a ``Msg``."""

    __slots__ = ("subject", "reply", "data", "headers")

    def __init__(self, subject: str, reply: str, data: bytes, headers: dict[str, str] | None) -> None:
        self.subject, self.reply, self.data, self.headers = subject, reply, data, headers


Handler = Callable[[Delivery], None]
# For the messages without headers of a subscription that wants only their subject and payload, as
# read (the publishers' PubAcks: three per event on the NATS path): no ``Delivery``, nothing decoded.
BareHandler = Callable[[bytes, bytes], None]


def hand_over(handler: Handler, msg: Delivery) -> None:
    """Call a handler from inside the connection's read loop: an exception must not escape, or
    nats-py's read loop stops and every subscription of the connection goes quiet."""
    try:
        handler(msg)
    except Exception:  # noqa: BLE001 - logged; the message is the handler's to lose (JetStream redelivers)
        log.exception("nats: a direct subscription's handler failed on a message to %s", msg.subject)


def hand_over_bare(handler: BareHandler, subject: bytes, payload: bytes) -> None:
    """``hand_over`` for a ``BareHandler``."""
    try:
        handler(subject, payload)
    except Exception:  # noqa: BLE001 - as in hand_over
        log.exception("nats: a direct subscription's handler failed on a message to %r", subject)


def install(nc: Any, table: dict[int, Handler], bare: dict[int, BareHandler] | None = None) -> None:
    """Messages for a subscription id in ``table`` go to its function (called synchronously, in
    arrival order), or, without headers, to its function in ``bare`` if it has one there; every
    other message goes through the client's ``_process_msg`` as before."""
    bare = {} if bare is None else bare
    ps = getattr(nc, "_ps", None)  # nats-py's parser of this connection
    if not isinstance(ps, nats_parser.Parser):
        return
    usual = type(ps).parse
    stats = nc.stats
    control = nats_parser.AWAITING_CONTROL_LINE
    max_line = nats_parser.MAX_CONTROL_LINE_SIZE

    async def parse(data: bytes = b"") -> None:
        ps.buf.extend(data)
        if ps.state != control:  # a message nats-py's parser began: it finishes it first
            await usual(ps)
            if ps.state != control:
                return
        held = ps.buf
        if not held:
            return
        buf = bytes(held)
        end, pos, count, size = len(buf), 0, 0, 0
        process_msg, find, get, get_bare = nc._process_msg, buf.find, table.get, bare.get  # noqa: SLF001
        try:
            while pos < end:
                line_end = find(b"\r\n", pos, pos + max_line)
                if line_end < 0:
                    if end - pos < max_line:
                        break  # the rest of the control line is on its way
                    args = ()  # too long: nats-py's parser says what is wrong
                else:
                    args = buf[pos:line_end].split()
                n = len(args)
                op = args[0] if n else b""
                try:
                    if op == b"MSG" and n in (4, 5):
                        header_len, total, reply = 0, int(args[-1]), args[3] if n == 5 else b""
                    elif op == b"HMSG" and n in (5, 6):
                        header_len, total, reply = int(args[-2]), int(args[-1]), args[3] if n == 6 else b""
                    else:
                        raise ValueError(op)
                    sid = int(args[2])
                    if not 0 <= header_len <= total:
                        raise ValueError(total)
                except ValueError:  # another operation (PING, INFO, -ERR, ...) or a malformed line
                    del held[:pos]
                    pos = 0
                    await usual(ps)  # nats-py's parser takes it from here (and says what is wrong)
                    return
                start = line_end + 2
                if start + total + 2 > end:  # its payload is on its way
                    if total > BIG_PAYLOAD:  # nats-py's parser waits for it without copying the buffer each read
                        del held[:pos]
                        pos = 0
                        await usual(ps)
                        return
                    break
                payload = buf[start + header_len:start + total]
                pos = start + total + 2
                if not header_len:
                    plain = get_bare(sid)
                    if plain is not None:
                        count += 1
                        size += len(payload)
                        try:
                            plain(args[1], payload)
                        except Exception:  # noqa: BLE001 - as in hand_over (inline: this is per PubAck)
                            log.exception("nats: a direct subscription's handler failed on a message to %r", args[1])
                        continue
                handler = get(sid)
                if handler is None:
                    await process_msg(sid, args[1], reply, payload, buf[start:start + header_len] if header_len else None)
                    if ps.buf is not held:  # the connection was reset while we waited: this read is void
                        pos = 0
                        return
                    continue
                count += 1
                size += len(payload)
                hdr = await nc._process_headers(buf[start:start + header_len]) if header_len else None  # noqa: SLF001
                hand_over(handler, Delivery(args[1].decode(), reply.decode(), payload, hdr))
        finally:
            stats["in_msgs"] += count
            stats["in_bytes"] += size
            if pos:
                del held[:pos]

    ps.parse = parse
