"""The router end to end: real nats-server, real local Ray, real HTTP destination servers."""

from __future__ import annotations

import asyncio
import re
import time

import nats
import orjson
from nats.js import api

from router.jetstream.dead_letters import H
from router.control.demo import expected_deliveries
from router.loadtest.retail_events import MALFORMED, GeneratedEvent, RetailEventFactory
from router.control.supervisor import Supervisor

from .harness import (config, consumer_state, dead_letters, publish, received, records, route_through, set_faults,
                      wait_final)

ORDER = {"currency": "EUR", "total": 10.0, "lines": [{"sku": "SKU-1", "quantity": 1, "unit_price": 10.0}]}


def ev(key, type_, subject, data):
    body = {"idempotency_key": key, "type": type_, "source": "test", "occurred_at": "2026-11-27T10:00:00Z", "data": data}
    return GeneratedEvent(subject, orjson.dumps(body), key, type_)


# Hand-written: each default route, and what each destination must get.
HAND = [
    (ev("o-web", "order.created", "retail.orders.web", {**ORDER, "order_id": "1", "channel": "web"}), {"erp"}),
    (ev("o-mkt", "order.cancelled", "retail.orders.marketplace", {**ORDER, "order_id": "2", "channel": "marketplace"}),
     {"erp", "marketplace"}),
    (ev("inv-1", "inventory.adjusted", "retail.inventory.dc", {"sku": "A", "location_id": "dc", "delta": -2,
                                                               "reason": "sale"}), {"erp", "marketplace"}),
    (ev("shp-req", "shipment.requested", "retail.shipments.ups", {"shipment_id": "S1", "order_id": "1", "carrier": "ups",
                                                                  "packages": [{"weight_kg": 1.5}]}), {"carrier"}),
    (ev("shp-out", "shipment.dispatched", "retail.shipments.ups", {"shipment_id": "S1", "order_id": "1", "carrier": "ups"}),
     {"erp", "marketplace"}),
    (ev("ret-label", "return.requested", "retail.returns.web", {"return_id": "R1", "order_id": "1", "needs_label": True,
                                                                "lines": [{"sku": "A", "quantity": 1}]}), {"carrier", "erp"}),
    (ev("ret-nolabel", "return.requested", "retail.returns.pos", {"return_id": "R2", "order_id": "1",
                                                                  "lines": [{"sku": "A", "quantity": 1}]}), {"erp"}),
    (ev("refund-1", "refund.issued", "retail.refunds.web", {"refund_id": "F1", "order_id": "1", "amount": 5.0,
                                                            "currency": "EUR"}), {"erp"}),
]


def test_each_route_delivers_exactly_what_it_should(clean, nats_server, emulator, ray_session):
    burst = list(RetailEventFactory(seed=11).burst(1500, duplicate_ratio=0.1))
    events = [e for e, _ in HAND] + burst

    async def scenario():
        cfg = config(nats_server.url, emulator.url)
        sup = Supervisor(cfg)
        await sup.start()
        try:
            await publish(nats_server.url, events)
            st = await wait_final(sup, len(events))
            got = {d: await received(emulator.url, d) for d in cfg.destinations}
            recs = {d: await records(emulator.url, d) for d in cfg.destinations}
        finally:
            await sup.stop()
        return cfg, st, got, recs

    cfg, st, got, recs = asyncio.run(scenario())
    for e, dests in HAND:
        for d in cfg.destinations:
            assert (got[d].get(e.key) == 1) == (d in dests), (e.key, d, got[d].get(e.key))
    expected = expected_deliveries(cfg, events)
    for d in cfg.destinations:
        assert set(got[d]) == expected[d], d
        assert all(n == 1 for n in got[d].values()), f"{d} got a key twice"
        assert st.destinations[d].delivered == len(expected[d])
    dup_count = len(events) - len({e.key for e in events})
    assert dup_count > 100
    assert sum(s.acked for s in st.sources.values()) == len(events)

    # The HTTP contract: every record has both ids; every batch a deterministic Idempotency-Key.
    for d, rs in recs.items():
        for r in rs:
            assert r["record"]["idempotency_key"] and r["record"]["correlation_id"]
            assert re.fullmatch(r"[0-9a-f]{32}", r["batch_idempotency_key"])
    erp_order = next(r["record"] for r in recs["erp"] if r["record"]["idempotency_key"] == "o-web")
    assert erp_order["document_type"] == "SALES_ORDER" and erp_order["action"] == "CREATED"
    label = next(r["record"] for r in recs["carrier"] if r["record"]["idempotency_key"] == "shp-req")
    assert label["label_kind"] == "OUTBOUND" and label["parcels"] == [{"weight_kg": 1.5}]


def test_malformed_input_is_dead_lettered_and_the_stream_keeps_flowing(clean, nats_server, emulator, ray_session):
    good = list(RetailEventFactory(seed=12).burst(300))
    bad = [GeneratedEvent("retail.orders.web", p, "", "", None, why) for p, why in MALFORMED]
    unrouted = ev("promo-1", "promo.started", "retail.orders.web", {"code": "BF"})
    events = good[:150] + bad + [unrouted] + good[150:]

    async def scenario():
        cfg = config(nats_server.url, emulator.url)
        st = await route_through(cfg, nats_server.url, events)
        letters = await dead_letters(nats_server.url, cfg)
        nc = await nats.connect(nats_server.url)
        sub = await nc.jetstream().pull_subscribe("router.dlq.>", stream=cfg.dead_letter.stream,
                                                  config=api.ConsumerConfig(ack_policy=api.AckPolicy.NONE))
        raw = await sub.fetch(len(letters), timeout=5)
        await nc.close()
        pending = await consumer_state(nats_server.url, "RETAIL_ORDERS", "router-orders")
        got = {d: await received(emulator.url, d) for d in cfg.destinations}
        return cfg, st, letters, raw, pending, got

    cfg, st, letters, raw, pending, got = asyncio.run(scenario())
    assert pending == (0, 0), "every source message acked"
    reasons = [x[H.REASON] for x in letters]
    for _, why in MALFORMED:
        assert any(why in r for r in reasons), (why, reasons)
    assert "no route matches this event" in reasons
    assert len(letters) == len(bad) + 1
    # The dead letter keeps the original bytes, byte for byte.
    assert sorted(m.data for m in raw) == sorted([p for p, _ in MALFORMED] + [unrouted.payload])
    assert all(m.headers[H.STAGE] == "ingest" and m.headers[H.STREAM_SEQ].isdigit() for m in raw)
    expected = expected_deliveries(cfg, good)
    for d in cfg.destinations:
        assert set(got[d]) == expected[d]


def test_nats_destination_gets_each_record_once(clean, nats_server, emulator, ray_session):
    def change(raw):
        raw["destinations"]["partner"] = {"kind": "nats", "subject": "partner.orders"}
        raw["routes"] = [{"name": "orders-to-partner", "match": {"types": ["order.*"]}, "destinations": ["partner"]}]

    events = [e for e in RetailEventFactory(seed=13).burst(800, duplicate_ratio=0.1) if e.type.startswith("order.")]

    async def scenario():
        nc = await nats.connect(nats_server.url)
        js = nc.jetstream()
        await js.add_stream(name="PARTNER", subjects=["partner.>"])
        cfg = config(nats_server.url, emulator.url, change)
        sup = Supervisor(cfg)
        await sup.start()
        try:
            await publish(nats_server.url, events)
            await wait_final(sup, len(events))
        finally:
            await sup.stop()
        sub = await js.pull_subscribe("partner.orders", stream="PARTNER",
                                      config=api.ConsumerConfig(ack_policy=api.AckPolicy.NONE))
        info = await js.stream_info("PARTNER")
        msgs = await sub.fetch(info.state.messages, timeout=5) if info.state.messages else []
        await nc.close()
        return msgs

    msgs = asyncio.run(scenario())
    keys = [orjson.loads(m.data)["idempotency_key"] for m in msgs]
    assert len(keys) == len(set(keys)) == len({e.key for e in events})
    assert all(m.headers["Nats-Msg-Id"] == orjson.loads(m.data)["idempotency_key"] for m in msgs)


def test_a_quiet_stream_is_not_held_back_to_fill_batches(clean, nats_server, emulator, ray_session):
    """With nothing in hand, the ingest actor does not wait ``fetch_wait`` for a fuller batch and
    the sink does not wait ``linger`` (Nagle's rule at both): both set to 3 s here, a lone event
    still arrives in well under 3 s."""
    def change(raw):
        raw["sources"][0]["fetch_wait"] = "3s"
        raw["destinations"]["partner"] = {"kind": "nats", "subject": "quiet.orders",
                                          "batch": {"max_records": 1000, "linger": "3s"}}
        raw["routes"] = [{"name": "orders-to-partner", "match": {"types": ["order.*"]}, "destinations": ["partner"]}]

    events = [e for e in RetailEventFactory(seed=17).burst(200) if e.type.startswith("order.")][:6]

    async def scenario():
        nc = await nats.connect(nats_server.url)
        js = nc.jetstream()
        await js.add_stream(name="QUIET", subjects=["quiet.>"])
        sup = Supervisor(config(nats_server.url, emulator.url, change))
        await sup.start()
        took = []
        try:
            for n, e in enumerate(events):  # the first warms the actors up
                await asyncio.sleep(0.3)
                t0 = time.monotonic()
                await publish(nats_server.url, [e])
                while (await js.stream_info("QUIET")).state.messages < n + 1:
                    assert time.monotonic() - t0 < 20, f"event {n} not delivered"
                    await asyncio.sleep(0.02)
                took.append(time.monotonic() - t0)
        finally:
            await sup.stop()
            await nc.close()
        return took

    took = asyncio.run(scenario())
    assert max(took[1:]) < 1.5, took


def test_rejected_record_is_dead_lettered_alone_with_the_response(clean, nats_server, emulator, ray_session):
    events = [e for e in RetailEventFactory(seed=14).burst(400) if e.type.startswith("order.")]
    bad_key = events[len(events) // 2].key

    async def scenario():
        await set_faults(emulator.url, "erp", {"reject_keys": [bad_key]})
        cfg = config(nats_server.url, emulator.url)
        try:
            st = await route_through(cfg, nats_server.url, events)
        finally:
            await set_faults(emulator.url, "erp", None)
        return st, await dead_letters(nats_server.url, cfg), await received(emulator.url, "erp")

    st, letters, got = asyncio.run(scenario())
    assert st.destinations["erp"].dead_lettered == 1
    [letter] = letters
    assert letter[H.KEY] == bad_key and letter[H.STATUS] == "400" and letter[H.DESTINATION] == "erp"
    assert f"{bad_key} fails validation" in letter[H.RESPONSE]
    assert bad_key not in got and len(got) == len(events) - 1


def test_transient_failures_are_retried_and_delivered_once(clean, nats_server, emulator, ray_session):
    events = [e for e in RetailEventFactory(seed=15).burst(600) if e.type.startswith("inventory.")]

    def change(raw):
        raw["destinations"]["marketplace"]["retry"] = {"max_attempts": 30, "initial_backoff": "100ms",
                                                       "max_backoff": "500ms"}

    async def scenario():
        cfg = config(nats_server.url, emulator.url, change)
        sup = Supervisor(cfg)
        await sup.start()
        await set_faults(emulator.url, "marketplace", {"fail_requests": 3, "status": 503})
        try:
            await publish(nats_server.url, events)
            st = await wait_final(sup, len(events))
        finally:
            await sup.stop()
            await set_faults(emulator.url, "marketplace", None)
        return st, await received(emulator.url, "marketplace")

    st, got = asyncio.run(scenario())
    assert st.destinations["marketplace"].retries >= 3
    assert set(got) == {e.key for e in events} and all(n == 1 for n in got.values())
