"""Hostile messages mixed into a flow of good events, on the real router (nats-server, Ray, HTTP
destinations): every good event reaches each of its destinations exactly once, every hostile one
is in the dead-letter stream once with a reason naming its problem, and the source consumers are
drained (nothing left unacked or coming back) within seconds."""

from __future__ import annotations

import asyncio
import hashlib
import time
from pathlib import Path

import msgspec
import nats
import orjson
import yaml

from router.control.demo import expected_deliveries
from router.control.supervisor import Supervisor
from router.jetstream.dead_letters import H
from router.loadtest.retail_events import GeneratedEvent, RetailEventFactory
from router.routes import DEFAULT_ROUTES

from .harness import assert_exactly, config, dead_letters, wait_complete

DEADLINE = 30.0  # seconds from the first publish to: all good delivered, all hostile dead-lettered, drained

ORDER = {"order_id": "H-1", "channel": "web", "currency": "EUR", "total": 10.0,
         "lines": [{"sku": "SKU-1", "quantity": 1, "unit_price": 10.0}]}


def body(key: str | None, type_: str = "order.created", data: object = ORDER, source: str = "web") -> dict:
    b = {"type": type_, "source": source, "occurred_at": "2026-11-27T10:00:00Z", "data": data}
    if key is not None:
        b["idempotency_key"] = key
    return b


def hostile_messages(max_payload: int) -> dict[str, tuple[GeneratedEvent, str]]:
    """name -> (message, a fragment its dead-letter reason must contain). Each has its own subject
    (retail.orders.hostile.<name>) so its dead letter can be found by the subject it came on."""
    def msg(name: str, payload: bytes, headers: dict[str, str] | None = None) -> GeneratedEvent:
        return GeneratedEvent(f"retail.orders.hostile.{name}", payload, "", "", headers)

    deep = orjson.dumps(body("deep-1", data={"order_id": None})).replace(b"null", b"[" * 10_000 + b"]" * 10_000)
    # Invalid as an order (fields missing), and so large that payload plus the dead-letter headers
    # exceed max_payload: the dead letter must be truncated, not refused.
    padding = b"x" * (max_payload - 200)
    huge = b'{"idempotency_key":"huge-1","type":"order.created","source":"web","occurred_at":' \
           b'"2026-11-27T10:00:00Z","data":{"order_id":"' + padding + b'"}}'
    assert max_payload - 256 < len(huge) <= max_payload
    msgpack = {"Content-Type": "application/msgpack"}
    return {
        "bad_utf8": (msg("bad_utf8", orjson.dumps(body("utf8-1", source="SOURCE")).replace(b"SOURCE", b"\xff\xfe")),
                     "not valid UTF-8"),
        "deep": (msg("deep", deep), "nested too deeply"),
        "huge": (msg("huge", huge), "invalid order payload"),
        "long_header_key": (msg("long_header_key", orjson.dumps(body(None)), {"Idempotency-Key": "k" * 300}),
                            "from the `Idempotency-Key` header is 300 characters long"),
        "control_key": (msg("control_key", orjson.dumps(body("evil\x1b[2J\x07"))), "control character U+001B"),
        "content_type": (msg("content_type", orjson.dumps(body("ctype-1")), {"Content-Type": "text/plain"}),
                         "unsupported Content-Type 'text/plain'"),
        # Decodes (free-form `data`), but a map keyed by an array has no JSON form: the encoder refuses it.
        "unencodable": (msg("unencodable", msgspec.msgpack.encode(body("enc-1", "audit.note", {"m": {(1, 2): 1}})),
                            msgpack), "encoder `canonical` cannot encode this event"),
        "msgpack_ext": (msg("msgpack_ext", msgspec.msgpack.encode(body("ext-1", "audit.note",
                                                                       {"m": msgspec.msgpack.Ext(7, b"x")})), msgpack),
                        "extension type 7"),
    }


def with_audit_route(raw: dict) -> None:
    """The default routes plus one for a free-form family, so a decoded event can reach `canonical`."""
    routes = yaml.safe_load(Path(DEFAULT_ROUTES).read_text())["routes"]
    routes.append({"name": "audit-to-erp", "match": {"subjects": ["retail.orders.>"], "types": ["audit.*"]},
                   "destinations": ["erp"]})
    raw["routes"] = routes


async def publish_mixed(url: str, events: list[GeneratedEvent]) -> None:
    nc = await nats.connect(url)
    js = nc.jetstream()
    for i in range(0, len(events), 200):
        await asyncio.gather(*(js.publish(e.subject, e.payload, headers=e.headers, timeout=10)
                               for e in events[i:i + 200]))
    await nc.close()


async def server_max_payload(url: str) -> int:
    nc = await nats.connect(url)
    try:
        return nc.max_payload
    finally:
        await nc.close()


def test_hostile_messages_are_dead_lettered_and_the_good_ones_delivered_once(clean, nats_server, emulator, ray_session):
    max_payload = asyncio.run(server_max_payload(nats_server.url))
    hostile = hostile_messages(max_payload)
    good = list(RetailEventFactory(seed=23).burst(600))
    good.append(GeneratedEvent("retail.orders.web", msgspec.msgpack.encode(body("audit-ok", "audit.note", {"n": 1})),
                               "audit-ok", "audit.note", {"Content-Type": "application/msgpack"}))
    # Hostile ones spread through the flow, so they share fetched batches with good ones.
    events = list(good)
    for n, (e, _) in enumerate(hostile.values()):
        events.insert((n + 1) * len(good) // (len(hostile) + 1), e)
    cfg = config(nats_server.url, emulator.url, with_audit_route)
    expected = expected_deliveries(cfg, good)
    assert "audit-ok" in expected["erp"]

    async def scenario():
        sup = Supervisor(cfg)
        await sup.start()
        try:
            t0 = time.monotonic()
            await publish_mixed(nats_server.url, events)
            got = await wait_complete(nats_server.url, emulator.url, expected, timeout=DEADLINE)
            took = time.monotonic() - t0
            st = await sup.stats()
        finally:
            await sup.stop()
        return got, took, st, await dead_letters(nats_server.url, cfg)

    got, took, st, letters = asyncio.run(scenario())
    print(f"\n{len(events)} messages ({len(hostile)} hostile) final and drained in {took:.1f}s")

    assert_exactly(expected, got)
    by_subject: dict[str, list[dict[str, str]]] = {}
    for d in letters:
        by_subject.setdefault(d.get(H.SUBJECT, ""), []).append(d)
    for name, (e, fragment) in hostile.items():
        found = by_subject.get(e.subject, [])
        assert len(found) == 1, f"{name}: {len(found)} dead letters (expected exactly one)"
        reason = found[0][H.REASON]
        assert fragment in reason, f"{name}: reason {reason!r} does not name the problem ({fragment!r})"
        assert all(v.isprintable() for k, v in found[0].items() if k != "payload"), f"{name}: {found[0]}"
    hostile_keys = {"utf8-1", "deep-1", "huge-1", "ctype-1", "enc-1", "ext-1"}
    assert not any(hostile_keys & set(got[d]) for d in got), "a hostile message reached a destination"
    assert sum(s.dead_lettered for s in st.sources.values()) == len(hostile)

    huge = by_subject[hostile["huge"][0].subject][0]
    original = hostile["huge"][0].payload
    assert huge[H.ORIGINAL_SIZE] == str(len(original))
    assert huge[H.ORIGINAL_DIGEST] == "sha256:" + hashlib.sha256(original).hexdigest()
    assert huge[H.TRUNCATED].startswith("first ") and huge[H.TRUNCATED].endswith(f" of {len(original)} bytes")
    assert original.decode().startswith(huge["payload"])
    assert took < DEADLINE
