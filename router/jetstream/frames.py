"""Many NATS protocol messages written at once: the acks of a fetched batch, a batch of publishes.

nats-py's ``publish`` checks and frames one message per call in Python (a regex per header key, a
bytearray per header block, an ``await``): at tens of thousands of messages a second that costs
more than the work the messages stand for. Here the frames of a whole batch are built in one pass
and go to the client's write buffer in one piece, so they still go out in order with everything
else the client sends, and reconnects buffer them like any publish. What goes in is trusted: reply
subjects come from the server, subjects from the validated config, header names are the router's
own; header values have line breaks taken out, as nats-py does.

This uses internals of nats-py (``_send_command``, ``_flush_pending``, the reconnect buffer's size
and limit, stable since 2.0); a client without them gets the messages one ``publish`` at a time,
the same on the wire.
"""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import nats.errors
from nats.aio.client import Client

__all__ = ["header_block", "header_value", "publish_frames", "send", "write_frames"]

_NEWLINES = str.maketrans("", "", "\r\n")
_FAST = all(hasattr(Client, a) for a in ("_send_command", "_flush_pending", "is_draining_pubs"))


def header_value(v: str) -> str:
    """``v`` without line breaks, which would end the header. Looked for before ``str.translate``
    (a Python-level lookup per character): once per record on the NATS delivery path."""
    return v.translate(_NEWLINES) if "\r" in v or "\n" in v else v


def header_block(headers: Mapping[str, str]) -> bytes:
    """``NATS/1.0`` and the headers, as a message carries them."""
    return ("NATS/1.0\r\n" + "".join(f"{k}: {header_value(v)}\r\n" for k, v in headers.items())
            + "\r\n").encode()


def publish_frames(subjects: Iterable[str], reply: str, payloads: Sequence[bytes],
                   headers: Iterable[Mapping[str, str] | bytes | None], max_payload: int) -> bytes:
    """PUB / HPUB frames for each (subject, payload, headers), all with ``reply`` ('' for none);
    headers as a mapping or as a ``header_block`` already built. Raises ``MaxPayloadError`` before
    anything is sent if one is larger than the server takes (it would close the connection)."""
    out = []
    tail = f" {reply} " if reply else " "
    for subject, payload, hdrs in zip(subjects, payloads, headers):
        if hdrs:
            block = hdrs if isinstance(hdrs, bytes) else header_block(hdrs)
            size = len(block) + len(payload)
            out.append(f"HPUB {subject}{tail}{len(block)} {size}\r\n".encode())
            out.append(block)
        else:
            size = len(payload)
            out.append(f"PUB {subject}{tail}{size}\r\n".encode())
        if size > max_payload:
            raise nats.errors.MaxPayloadError
        out.append(payload)
        out.append(b"\r\n")
    return b"".join(out)


async def write_frames(nc: Client, frames: bytes, count: int) -> None:
    """Hand ``count`` framed messages to the client's write buffer and have it flushed."""
    # The checks nats-py's ``publish`` makes: closed, draining, and while reconnecting no more
    # than the client's reconnect buffer (``pending_size``) may wait to be sent.
    if nc.is_closed:
        raise nats.errors.ConnectionClosedError
    if nc.is_draining_pubs:
        raise nats.errors.ConnectionDrainingError
    if not nc.is_connected and (nc._max_pending_size <= 0  # noqa: SLF001
                                or len(frames) + nc._pending_data_size > nc._max_pending_size):  # noqa: SLF001
        raise nats.errors.OutboundBufferLimitError
    await nc._send_command(frames)  # noqa: SLF001 (see the module docstring)
    nc.stats["out_msgs"] += count
    nc.stats["out_bytes"] += len(frames)
    if nc._flush_queue is not None and nc._flush_queue.empty():  # noqa: SLF001
        await nc._flush_pending()  # noqa: SLF001


async def send(nc: Client, subjects: Iterable[str], reply: str, payloads: Sequence[bytes],
               headers: Sequence[Mapping[str, str] | bytes | None]) -> None:
    """Publish each message, framed at once when the client allows it."""
    if _FAST:
        await write_frames(nc, publish_frames(subjects, reply, payloads, headers, nc.max_payload), len(payloads))
        return
    for subject, payload, hdrs in zip(subjects, payloads, headers):
        await nc.publish(subject, payload, reply=reply, headers=_as_dict(hdrs) if hdrs else None)


def _as_dict(hdrs: Mapping[str, str] | bytes) -> dict[str, str]:
    if not isinstance(hdrs, bytes):
        return dict(hdrs)
    lines = hdrs.decode().split("\r\n")[1:]
    return dict(line.split(": ", 1) for line in lines if line)
