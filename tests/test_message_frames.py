"""The router's reading of MSG / HMSG frames (``jetstream/message_frames.py``) against nats-py's own
parser: for any mix of messages (direct subscriptions and others, with and without reply and
headers, status messages) and other operations (PING, PONG, +OK, INFO), cut into reads at any
points, both give the same calls in the same order. A real ``Client`` object, not connected: its
parser and header parsing are nats-py's; only what it would do with each operation is recorded.
Unit level, no I/O: a few seconds."""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nats.aio.client import Client
from nats.protocol.parser import Parser

from router.jetstream import direct_subscription, message_frames

FAST = settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
DIRECT_SIDS = (1, 2)


def _client(fast: bool) -> tuple[Client, list[Any]]:
    nc, seen = Client(), []

    async def other_msg(sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        seen.append(("msg", sid, bytes(subject), bytes(reply), bytes(data), bytes(headers) if headers else None))

    async def op(name: str, *args: Any) -> None:
        seen.append((name, *args))

    nc._process_msg = other_msg  # what nats-py does with a message of an ordinary subscription
    nc._process_ping = lambda: op("ping")
    nc._process_pong = lambda: op("pong")
    nc._process_info = lambda info: op("info", info)
    nc._process_err = lambda err: op("err", err)
    supported, message_frames.supported = message_frames.supported, fast
    try:
        table = direct_subscription._table(nc)
    finally:
        message_frames.supported = supported
    for sid in DIRECT_SIDS:
        table[sid] = lambda d, sid=sid: seen.append(("direct", sid, d.subject, d.reply, d.data, d.headers))
    # Sid 2 takes its messages without headers as read, like a publisher's PubAcks.
    nc._router_bare[2] = lambda subject, data: seen.append(("bare", 2, bytes(subject), bytes(data)))
    return nc, seen


tokens = st.text("abcXYZ019_-.$>", min_size=1, max_size=12)
payloads = st.binary(max_size=60) | st.sampled_from(
    [b"", b"MSG x 1 3\r\n", b"\r\n\r\n", b'{"stream":"S","seq":7}', b"\r\n" * 40_000])  # the last: left to nats-py while it arrives
header_blocks = st.sampled_from([
    b"NATS/1.0\r\nNats-Msg-Id: k-1\r\n\r\n",
    b"NATS/1.0\r\nA: 1\r\nB: two words\r\n\r\n",
    b"NATS/1.0 404 No Messages\r\n\r\n",
    b"NATS/1.0 408 Request Timeout\r\nNats-Pending-Messages: 5\r\n\r\n",
    b"NATS/1.0 503\r\n\r\n",
])


@st.composite
def frames(draw: Any) -> bytes:
    kind = draw(st.sampled_from(["msg", "msg", "hmsg", "hmsg", "ping", "pong", "ok", "info"]))
    if kind in ("ping", "pong", "ok"):
        return {"ping": b"PING\r\n", "pong": b"PONG\r\n", "ok": b"+OK\r\n"}[kind]
    if kind == "info":
        return b'INFO {"server_id":"x","max_payload":1048576}\r\n'
    subject, sid = draw(tokens).encode(), draw(st.sampled_from([1, 2, 3, 17]))
    reply = draw(st.none() | tokens)
    args = b"%s %d" % (subject, sid) + (b" " + reply.encode() if reply else b"")
    data = draw(payloads)
    if kind == "msg":
        return b"MSG %s %d\r\n%s\r\n" % (args, len(data), data)
    hdr = draw(header_blocks)
    return b"HMSG %s %d %d\r\n%s%s\r\n" % (args, len(hdr), len(hdr) + len(data), hdr, data)


async def _feed(nc: Client, wire: bytes, cuts: list[int]) -> None:
    at = 0
    for cut in sorted(set(cuts)) + [len(wire)]:
        await nc._ps.parse(wire[at:cut])
        at = cut


@FAST
@given(st.lists(frames(), min_size=1, max_size=25), st.lists(st.integers(0, 1_000_000), max_size=12))
def test_same_calls_in_the_same_order_as_nats_py_for_any_reads(parts: list[bytes], cuts: list[int]) -> None:
    wire = b"".join(parts)
    cuts = [c % (len(wire) + 1) for c in cuts]
    usual, expected = _client(fast=False)
    fast, got = _client(fast=True)
    asyncio.run(_feed(usual, wire, cuts))
    asyncio.run(_feed(fast, wire, cuts))
    assert got == expected
    assert len(got) == len([p for p in parts if p != b"+OK\r\n"])  # (+OK: nothing to do)
    assert fast.stats["in_msgs"] == usual.stats["in_msgs"] and fast.stats["in_bytes"] == usual.stats["in_bytes"]
    assert not fast._ps.buf


def test_a_malformed_message_line_is_refused_as_nats_py_refuses_it() -> None:
    import pytest
    from nats.errors import ProtocolError

    for bad in (b"MSG b x 3\r\nabc\r\n", b"MSG b 1 -3\r\nabc\r\n", b"MSG b\r\n"):
        for fast in (False, True):
            nc, seen = _client(fast)
            with pytest.raises(ProtocolError):
                asyncio.run(nc._ps.parse(b"MSG a 1 5\r\nhello\r\n" + bad))
            assert seen == [("direct", 1, "a", "", b"hello", None)], (bad, fast)


def test_the_fast_reader_is_the_one_installed() -> None:
    """Guards the other two tests: with the reader in place, a direct message does not go through
    nats-py's parser (else the comparison would be of nats-py's parser with itself)."""
    calls = []
    usual = Parser.parse

    async def spy(self: Any, data: bytes = b"") -> None:
        calls.append(data)
        await usual(self, data)

    Parser.parse = spy  # before the reader is installed: it keeps the parse it finds then
    try:
        nc, seen = _client(fast=True)
        asyncio.run(nc._ps.parse(b"MSG a 1 2\r\nhi\r\n"))
    finally:
        Parser.parse = usual
    assert seen == [("direct", 1, "a", "", b"hi", None)] and calls == []


def test_a_handler_that_raises_does_not_stop_the_reading() -> None:
    """Handlers run inside the connection's read loop: an exception escaping one would end the
    loop, and every subscription of the connection would go quiet."""
    for fast in (False, True):
        nc, seen = _client(fast)
        table = nc._router_direct

        def boom(d: Any) -> None:
            raise ValueError("a bug in a handler")

        table[2] = boom
        nc._router_bare[2] = boom
        asyncio.run(nc._ps.parse(b"MSG a 2 1\r\nx\r\nHMSG a 2 12 13\r\nNATS/1.0\r\n\r\nx\r\nMSG b 1 1\r\ny\r\n"))
        assert seen == [("direct", 1, "b", "", b"y", None)], fast
