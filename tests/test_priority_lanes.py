"""Orders go before a backlog of stock updates at the peak (real NATS, Ray and HTTP destination).

The ERP takes a fixed rate (the router's rate limit for it); 100,000 inventory events are waiting,
most of them parked because they overflow the buffer; then 5,000 orders arrive. The orders route
is `priority: high`, the inventory route `low`: the orders reach the ERP within a small fraction
of the time the inventory backlog takes to drain, and the inventory drains all the same.
"""

from __future__ import annotations

import asyncio
import time

import nats
import yaml

from router.config import parse_config
from router.control.supervisor import Supervisor
from router.loadtest.fast_publisher import publish_pipelined
from router.loadtest.retail_events import RetailEventFactory
from router.routes import DEFAULT_ROUTES

from .harness import config_dict, poll_until, received

INVENTORY, ORDERS = 100_000, 5_000
BATCH, REQUESTS_PER_SECOND = 100, 40  # the ERP takes 4,000 records a second


def lanes_config(raw: dict) -> None:
    routes = {r["name"]: r for r in yaml.safe_load(open(DEFAULT_ROUTES))["routes"]}
    orders, inventory = routes["orders-to-erp"], routes["inventory-to-erp"]
    orders["priority"], inventory["priority"] = "high", "low"
    raw["routes"] = [orders, inventory]
    raw["destinations"] = {"erp": {**raw["destinations"]["erp"], "pool_size": 1, "concurrency": 8,
                                   "batch": {"max_records": BATCH, "linger": "20ms"},
                                   "rate_limit": {"per_second": REQUESTS_PER_SECOND, "burst": 4},
                                   "buffer": {"max_records": 5_000, "max_wait": "30s"}}}
    for src in raw["sources"]:  # the inventory ingest may hold 20,000 records: more than the buffer takes
        if src["name"] == "inventory":
            src.update(fetch_batch=500, max_inflight_batches=40)


async def receipts(emulator_url: str) -> dict[str, float]:
    import aiohttp

    async with aiohttp.ClientSession() as s:
        async with s.get(f"{emulator_url}/receipts/erp") as r:
            return await r.json()


def test_orders_overtake_an_inventory_backlog_and_the_backlog_still_drains(clean, nats_server, emulator, ray_session):
    factory = RetailEventFactory(seed=91)
    inventory = [factory.inventory() for _ in range(INVENTORY)]
    orders = [factory.order() for _ in range(ORDERS)]
    cfg = parse_config(config_dict(nats_server.url, emulator.url, lanes_config), "<test>")

    async def scenario():
        sup = Supervisor(cfg)
        await sup.start()
        nc = await nats.connect(nats_server.url)
        try:
            started = time.time()
            await publish_pipelined(nc, ((e.subject, e.payload) for e in inventory))

            async def backlog_under_way():  # the ERP busy with it, the buffer full, the rest parked
                st = await sup.stats()
                return st.destinations["erp"].parked >= 10_000
            await poll_until(backlog_under_way, 120, "the inventory backlog overflowing into the park")
            st = await sup.stats()
            parked_before_orders = st.destinations["erp"].parked
            behind = INVENTORY - len(await received(emulator.url, "erp"))  # inventory not at the ERP yet

            sent_at: dict[str, float] = {}
            for i in range(0, ORDERS, 100):  # 1,000 orders a second
                tick = time.time()
                chunk = orders[i:i + 100]
                await publish_pipelined(nc, ((e.subject, e.payload) for e in chunk))
                sent_at.update((e.key, tick) for e in chunk)
                await asyncio.sleep(max(0.0, tick + 0.1 - time.time()))

            async def all_in():
                got = await received(emulator.url, "erp")
                return len(got) >= INVENTORY + ORDERS
            await poll_until(all_in, 240, "every order and inventory event at the ERP", interval=1.0)
            drained = time.time() - started
            got = await received(emulator.url, "erp")
            at = await receipts(emulator.url)
            st = await sup.stats()
        finally:
            await nc.close()
            await sup.stop()
        return sent_at, got, at, drained, parked_before_orders, behind, st

    sent_at, got, at, drained, parked_before_orders, behind, st = asyncio.run(scenario())
    assert set(got) == {e.key for e in inventory} | {e.key for e in orders}, "every event reached the ERP"
    assert max(got.values()) == 1, "none twice"
    latencies = sorted(at[k] - sent_at[k] for k in sent_at)
    p50, p99 = latencies[len(latencies) // 2], latencies[int(len(latencies) * 0.99)]
    first_order, last_order = min(sent_at.values()), max(at[k] for k in sent_at)
    inventory_meanwhile = sum(1 for e in inventory if first_order <= at[e.key] <= last_order)
    erp = st.destinations["erp"]
    print(f"\nlanes: {INVENTORY:,} inventory (low) drained in {drained:.1f}s at the ERP's "
          f"{BATCH * REQUESTS_PER_SECOND:,} records/s ({behind:,} not delivered and {parked_before_orders:,} parked "
          f"when the orders came); {ORDERS:,} orders (high): p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, "
          f"{inventory_meanwhile:,} inventory delivered meanwhile; "
          f"lane delivered {erp.lane_delivered}, parked {erp.lane_parked}")
    assert behind >= INVENTORY // 2, f"a real backlog when the orders came: {behind:,} inventory events"
    assert erp.lane_parked.get("high", 0) == 0, "no order was parked"
    assert p99 < 0.05 * drained, f"orders p99 {p99:.1f}s is not a small fraction of the {drained:.1f}s drain"
    assert inventory_meanwhile > 0, "the inventory kept a share of the ERP while the orders went"
