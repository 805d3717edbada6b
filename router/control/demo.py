"""``router demo``: the whole pipeline on this machine, with nothing running beforehand.

Starts an embedded nats-server (JetStream, temporary store), the ERP / marketplace / carrier
emulators (real HTTP servers on loopback, from ``loadtest/``) and a local Ray; publishes a burst
of retail events with duplicates and a few malformed ones; routes them with
``routes/default.yaml``; prints what each destination got and what was dead-lettered, and checks
it against what the emulators counted. Every process it started is stopped on the way out,
Ctrl-C included.
"""

from __future__ import annotations

import asyncio
import copy
import os
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from typing import Any

import aiohttp
import nats
from nats.js import api

from router.codecs import EventDecoder, InvalidEvent
from router.loadtest.retail_events import RetailEventFactory
from router.loadtest.sink_emulator import EmulatorProcess
from router.routes import DEFAULT_ROUTES

from router.config import Config, parse_config
from router.jetstream.dead_letters import H
from router.jetstream.embedded_server import EmbeddedNats
from router.ingest.routing import RouteTable
from router.control.signals import on_stop_signals
from router.control.supervisor import Supervisor

__all__ = ["demo_config", "demo_config_dict", "expected_deliveries", "read_dead_letters", "run_demo"]

SOURCES = [
    {"name": "orders", "stream": "RETAIL_ORDERS", "subjects": ["retail.orders.>"], "durable": "router-orders"},
    {"name": "inventory", "stream": "RETAIL_INVENTORY", "subjects": ["retail.inventory.>"], "durable": "router-inventory"},
    {"name": "shipments", "stream": "RETAIL_SHIPMENTS", "subjects": ["retail.shipments.>"], "durable": "router-shipments"},
    {"name": "returns", "stream": "RETAIL_RETURNS", "subjects": ["retail.returns.>", "retail.refunds.>"],
     "durable": "router-returns"},
]


def demo_config_dict(nats_url: str, emulator_url: str, routes: str = DEFAULT_ROUTES) -> dict[str, Any]:
    """The demo's config as plain data (tests start from it and change what they test)."""
    return {
        "nats": {"url": nats_url},
        "sources": copy.deepcopy(SOURCES),  # a copy: callers change what they test
        "destinations": {
            "erp": {"kind": "http", "url": f"{emulator_url}/erp", "batch": {"max_records": 200}, "pool_size": 2},
            "marketplace": {"kind": "http", "url": f"{emulator_url}/marketplace", "batch": {"max_records": 100}},
            "carrier": {"kind": "http", "url": f"{emulator_url}/carrier", "batch": {"max_records": 50}},
        },
        "routes": routes,
        "metrics": {"port": 0},
    }


def demo_config(nats_url: str, emulator_url: str) -> Config:
    return parse_config(demo_config_dict(nats_url, emulator_url), "<demo>")


def _say(msg: str = "") -> None:
    print(msg, flush=True)


def expected_deliveries(cfg: Config, events: list[Any]) -> dict[str, set[str]]:
    """What each destination must end up with: every routed key once, by the same route table."""
    table, decoder = RouteTable(cfg.route_list), EventDecoder()
    out: dict[str, set[str]] = defaultdict(set)
    for e in events:
        try:
            ev = decoder.decode(e.payload, e.headers, e.subject)
        except InvalidEvent:
            continue
        for t in table.targets(ev):
            out[t.destination].add(ev.idempotency_key)
    return out


async def read_dead_letters(js: Any, stream: str) -> list[dict[str, str]]:
    out = []
    try:
        info = await js.stream_info(stream)
    except Exception:
        return out
    if not info.state.messages:
        return out
    sub = await js.pull_subscribe(">", stream=stream, config=api.ConsumerConfig(
        ack_policy=api.AckPolicy.NONE, deliver_policy=api.DeliverPolicy.ALL, inactive_threshold=30.0))
    while len(out) < info.state.messages:
        for m in await sub.fetch(500, timeout=2):
            out.append({"subject": m.subject, **(m.headers or {}), "payload": m.data[:60].decode(errors="replace")})
    await sub.unsubscribe()
    return out


async def _demo(events: int, duplicate_ratio: float, malformed: int, workdir: str, nats_url: str,
                emulator_url: str, timeout: float) -> int:
    task = asyncio.current_task()
    assert task is not None
    on_stop_signals(task.cancel)  # Ctrl-C and SIGTERM cancel the demo; its finally blocks clean up
    cfg = demo_config(nats_url, emulator_url)
    factory = RetailEventFactory(seed=int(time.time()))
    burst = list(factory.burst(events, duplicate_ratio=duplicate_ratio, malformed=malformed))
    expected = expected_deliveries(cfg, burst)

    _say("starting Ray and the router actors ...")
    sup = Supervisor(cfg)
    t0 = time.monotonic()
    await sup.start()
    on_stop_signals(task.cancel)  # again: ray.init replaced the handlers
    _say(f"router up in {time.monotonic() - t0:.1f}s: {len(cfg.sources)} sources, "
         f"{sum(d.pool_size for d in cfg.destinations.values())} sink actors, routes from {DEFAULT_ROUTES}")
    try:
        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        t0 = time.monotonic()
        for i in range(0, len(burst), 1000):
            await asyncio.gather(*(js.publish(e.subject, e.payload, headers=e.headers) for e in burst[i:i + 1000]))
        dups = len(burst) - malformed - len({e.key for e in burst if e.key})
        _say(f"published {len(burst):,} events ({dups} duplicates by idempotency key, {malformed} malformed) "
             f"in {time.monotonic() - t0:.1f}s")

        deadline = time.monotonic() + timeout
        tty = sys.stdout.isatty()
        last = -1.0
        while True:
            st = await sup.stats()
            acked = sum(s.acked for s in st.sources.values())
            delivered = sum(d.delivered for d in st.destinations.values())
            line = (f"  progress: {acked:,}/{len(burst):,} source messages final, "
                    f"{delivered:,}/{sum(len(v) for v in expected.values()):,} records delivered")
            if tty:
                print("\r" + line, end="", flush=True)
            elif time.monotonic() - last >= 1.0:
                _say(line)
                last = time.monotonic()
            if acked >= len(burst):
                break
            if time.monotonic() > deadline:
                _say(f"\nnot done after {timeout:.0f}s: {len(burst) - acked} source messages still open. "
                     "Check the router log above for destination errors; rerun with --timeout for a slow machine.")
                return 1
            await asyncio.sleep(0.25)
        if tty:
            print()
        elapsed = time.monotonic() - t0
        _say(f"all {len(burst):,} events final in {elapsed:.1f}s ({len(burst) / elapsed:,.0f} events/s, "
             "demo-sized burst; see `router bench` for throughput)")

        async with aiohttp.ClientSession() as http:
            async with http.get(f"{emulator_url}/stats") as r:
                seen = await r.json()
            received = {}
            for d in cfg.destinations:
                async with http.get(f"{emulator_url}/received/{d}") as r:
                    received[d] = await r.json()
        letters = await read_dead_letters(js, cfg.dead_letter.stream)
        await nc.close()
    finally:
        await sup.stop()

    ok = True
    _say("")
    _say(f"{'destination':<12} {'delivered':>10} {'duplicates':>11} {'dead-lettered':>14} "
         f"{'expected':>9} {'emulator got':>13}  check")
    for d in sorted(cfg.destinations):
        s = st.destinations[d]
        got = received[d]
        exact = set(got) == expected.get(d, set()) and all(c == 1 for c in got.values())
        ok &= exact and s.delivered == len(expected.get(d, ()))
        _say(f"{d:<12} {s.delivered:>10,} {s.duplicates:>11,} {s.dead_lettered:>14,} "
             f"{len(expected.get(d, ())):>9,} {seen[d]['records']:>13,}  "
             f"{'ok: each key exactly once' if exact else 'MISMATCH'}")
    ingest_dlq = [x for x in letters if x.get(H.STAGE) == "ingest"]
    _say("")
    _say(f"dead-lettered at ingest ({len(ingest_dlq)}), stream {cfg.dead_letter.stream}:")
    for x in ingest_dlq:
        _say(f"  seq {x.get(H.STREAM_SEQ, '?'):>6}  {x.get(H.SUBJECT, '')}: {x.get(H.REASON)}")
    if len(ingest_dlq) != malformed:
        ok = False
        _say(f"expected {malformed} malformed events in the dead-letter stream, found {len(ingest_dlq)}")
    _say("")
    _say("demo OK" if ok else "demo FAILED: see the mismatches above")
    return 0 if ok else 1


def run_demo(events: int = 5000, duplicate_ratio: float = 0.05, malformed: int = 6, timeout: float = 180.0) -> int:
    import ray

    workdir = tempfile.mkdtemp(prefix="router-demo-")
    server = EmbeddedNats(store_dir=os.path.join(workdir, "jetstream"))
    emulator = EmulatorProcess(workdir)
    try:
        server.start()
        _say(f"embedded nats-server with JetStream on {server.url} (store in {workdir})")
        emulator.start()
        _say(f"ERP, marketplace and carrier emulators on {emulator.url}")
        return asyncio.run(_demo(events, duplicate_ratio, malformed, workdir, server.url, emulator.url, timeout))
    except (KeyboardInterrupt, asyncio.CancelledError):
        _say("\ninterrupted: stopping everything the demo started")
        return 130
    finally:
        if ray.is_initialized():
            ray.shutdown()
        emulator.stop()
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
