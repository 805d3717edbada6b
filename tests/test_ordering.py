"""Events of one order reach the ERP in order (real NATS, Ray and HTTP destination): through a pool of
4 shards with 8 requests each in flight, random 503s, and an outage that opens the breaker and parks."""

from __future__ import annotations

import asyncio
import random

import orjson
import yaml

from router.config import parse_config
from router.control.supervisor import Supervisor
from router.loadtest.retail_events import GeneratedEvent
from router.routes import DEFAULT_ROUTES

from .harness import config_dict, publish_paced, received, set_faults, wait_complete, wait_final

STEPS = ("created", "updated", "cancelled")


def order_events(orders: int, seed: int, steps: tuple[str, ...] = STEPS) -> list[GeneratedEvent]:
    """Each order's ``steps`` in sequence (keys ``o<n>-<step>``; a step named ``u<k>`` is an
    ``order.updated``), the orders interleaved at random."""
    rng = random.Random(seed)
    step = {o: 0 for o in range(orders)}
    out = []
    while step:
        o = rng.choice(list(step))
        name = steps[step[o]]
        kind = "updated" if name.startswith("u") and name[1:].isdigit() else name
        key = f"o{o}-{name}"
        body = {"idempotency_key": key, "type": f"order.{kind}", "source": "web-storefront",
                "occurred_at": "2026-11-27T10:00:00Z",
                "data": {"order_id": f"O-{o}", "channel": "web", "currency": "EUR", "total": 10.0 + step[o],
                         "lines": [{"sku": "SKU-1", "quantity": 1, "unit_price": 10.0 + step[o]}]}}
        out.append(GeneratedEvent("retail.orders.web", orjson.dumps(body), key, f"order.{kind}"))
        step[o] += 1
        if step[o] == len(steps):
            del step[o]
    return out


def ordered_config(raw: dict) -> None:
    routes = yaml.safe_load(open(DEFAULT_ROUTES))["routes"]
    for r in routes:
        if r["name"] == "orders-to-erp":
            r["ordering_key"] = ["data.order_id"]
    raw["routes"] = routes
    raw["destinations"]["erp"].update(pool_size=4, concurrency=8, adaptive_concurrency=False,
                                      batch={"max_records": 20, "linger": "5ms"},
                                      retry={"max_attempts": 3, "initial_backoff": "50ms"},
                                      circuit_breaker={"consecutive_failures": 4, "open_for": "1s"})


def test_each_orders_events_reach_the_erp_in_order_through_errors_and_an_outage(
        clean, nats_server, emulator, ray_session):
    events = order_events(2000, seed=71)
    cfg = parse_config(config_dict(nats_server.url, emulator.url, ordered_config), "<test>")

    async def scenario():
        sup = Supervisor(cfg)
        await sup.start()
        try:
            await set_faults(emulator.url, "erp", {"error_rate": 0.1, "status": 503})
            publishing = asyncio.get_running_loop().create_task(publish_paced(nats_server.url, events, 1500))
            await asyncio.sleep(1.5)
            await set_faults(emulator.url, "erp", {"outage_s": 3, "status": 503})  # the breaker opens: parking
            await asyncio.sleep(3.5)
            await set_faults(emulator.url, "erp", {"error_rate": 0.1, "status": 503})
            await publishing
            await wait_final(sup, len(events), timeout=120)
            await set_faults(emulator.url, "erp", None)
            # Parked records are final for the source; wait until the park is replayed too.
            await wait_complete(nats_server.url, emulator.url, {"erp": {e.key for e in events}}, timeout=120)
            got = await received(emulator.url, "erp")  # key -> times received, in order of first receipt
            st = await sup.stats()
        finally:
            await set_faults(emulator.url, "erp", None)
            await sup.stop()
        return st, got

    st, got = asyncio.run(scenario())
    assert set(got) == {e.key for e in events}, "every event reached the ERP"
    assert max(got.values()) == 1, "none twice"
    seen: dict[str, list[str]] = {}
    for key in got:  # dicts keep insertion order: the emulator's order of first receipt
        order, kind = key.split("-")
        seen.setdefault(order, []).append(kind)
    out_of_order = {o: s for o, s in seen.items() if s != list(STEPS)}
    assert not out_of_order, f"{len(out_of_order)} orders out of order, e.g. {list(out_of_order.items())[:3]}"
    erp = st.destinations["erp"]
    assert erp.retries > 0 and erp.parked > 0, f"the faults did happen: {erp.retries} retries, {erp.parked} parked"
    print(f"\nordering: 2,000 orders in order at the ERP; {erp.retries} retries, {erp.parked} parked and replayed")
