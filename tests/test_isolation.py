"""One destination in trouble never stalls the others, and nothing is lost: slow ERP, ERP outage,
429 with Retry-After, a record the destination refuses, and its replay."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import nats
import yaml

from router.config import parse_config
from router.jetstream.dead_letters import H
from router.control.demo import expected_deliveries, read_dead_letters
from router.loadtest.retail_events import RetailEventFactory
from router.control.supervisor import Supervisor

from .harness import (assert_exactly, config_dict, emulator_stats, publish, publish_paced, received, set_faults,
                      wait_complete, wait_final)


def paced_source(raw):
    for s in raw["sources"]:
        s.update(fetch_batch=100, max_inflight_batches=4)
    for d in raw["destinations"].values():
        d["buffer"] = {"max_wait": "1s"}
        d["circuit_breaker"] = {"open_for": "2s"}


async def carrier_rate(emulator_url, start_count, expect, started, timeout=60.0):
    """Carrier records per second from ``started`` until all ``expect`` records of this phase arrived."""
    deadline = time.monotonic() + timeout
    while True:
        n = (await emulator_stats(emulator_url))["carrier"]["records"] - start_count
        if n >= expect:
            return expect / (time.monotonic() - started)
        if time.monotonic() > deadline:
            raise AssertionError(f"carrier got {n}/{expect} in {timeout:g}s")
        await asyncio.sleep(0.05)


def test_slow_erp_does_not_slow_the_carrier(clean, nats_server, emulator, ray_session):
    def change(raw):
        paced_source(raw)
        raw["destinations"]["erp"].update(concurrency=2, pool_size=1, batch={"max_records": 100, "linger": "5ms"})

    raw = config_dict(nats_server.url, emulator.url, change)
    cfg = parse_config(raw)
    factory = RetailEventFactory(seed=51)
    phase_a = list(factory.burst(6000))
    phase_b = list(factory.burst(6000))

    async def phase(events, erp_latency_ms):
        await set_faults(emulator.url, "carrier", {"latency_ms": 100})
        await set_faults(emulator.url, "erp", {"latency_ms": erp_latency_ms})
        before = (await emulator_stats(emulator.url))["carrier"]["records"]
        expect = len(expected_deliveries(cfg, events)["carrier"])
        started = time.monotonic()
        pub = asyncio.create_task(publish_paced(nats_server.url, events, per_second=1000))
        rate = await carrier_rate(emulator.url, before, expect, started)
        await pub
        return rate

    async def scenario():
        sup = Supervisor(cfg)
        await sup.start()
        try:
            healthy = await phase(phase_a, 100)  # ERP as fast as the carrier
            await wait_complete(nats_server.url, emulator.url, expected_deliveries(cfg, phase_a))
            slow = await phase(phase_b, 1000)  # ERP ten times slower than the carrier
            st_slow = await sup.stats()
            await set_faults(emulator.url, "erp", None)
            await set_faults(emulator.url, "carrier", None)
            got = await wait_complete(nats_server.url, emulator.url, expected_deliveries(cfg, phase_a + phase_b))
        finally:
            await sup.stop()
        return healthy, slow, st_slow, got

    healthy, slow, st_slow, got = asyncio.run(scenario())
    print(f"\ncarrier delivered rate: ERP healthy {healthy:.1f}/s, ERP 10x slower {slow:.1f}/s "
          f"({slow / healthy:.0%}); ERP records parked meanwhile: {st_slow.destinations['erp'].parked}")
    assert slow >= 0.8 * healthy
    assert st_slow.destinations["erp"].parked > 0
    assert_exactly(expected_deliveries(cfg, phase_a + phase_b), got)


def test_erp_outage_opens_the_breaker_parks_and_recovers_exactly_once(clean, nats_server, emulator, ray_session):
    raw = config_dict(nats_server.url, emulator.url, paced_source)
    cfg = parse_config(raw)
    events = list(RetailEventFactory(seed=52).burst(32_000, duplicate_ratio=0.03))  # 40 s at 800/s

    async def scenario():
        sup = Supervisor(cfg)
        await sup.start()
        try:
            pub = asyncio.create_task(publish_paced(nats_server.url, events, per_second=800))
            await asyncio.sleep(5)
            await set_faults(emulator.url, "erp", {"outage_s": 30})
            outage_start = time.monotonic()
            await asyncio.sleep(10)
            mid = await sup.stats()
            others_mid = {d: len(await received(emulator.url, d)) for d in ("marketplace", "carrier")}
            await asyncio.sleep(max(0.0, outage_start + 29 - time.monotonic()))
            end = await sup.stats()
            others_end = {d: len(await received(emulator.url, d)) for d in ("marketplace", "carrier")}
            erp_during = len(await received(emulator.url, "erp"))
            await pub
            got = await wait_complete(nats_server.url, emulator.url, expected_deliveries(cfg, events), timeout=120)
            final = await sup.stats()
        finally:
            await sup.stop()
            await set_faults(emulator.url, "erp", None)
        return mid, end, others_mid, others_end, erp_during, got, final

    mid, end, others_mid, others_end, erp_during, got, final = asyncio.run(scenario())
    erp_mid = mid.destinations["erp"]
    print(f"\nduring the ERP outage: breaker {erp_mid.breaker_state}, parked {end.destinations['erp'].parked}; "
          f"marketplace {others_mid['marketplace']} -> {others_end['marketplace']}, "
          f"carrier {others_mid['carrier']} -> {others_end['carrier']} records")
    assert erp_mid.breaker_state in ("open", "half_open") and erp_mid.breaker_opened >= 1
    assert end.destinations["erp"].parked > 1000
    # The others kept flowing through the outage (at 800 events/s, thousands of records in 19 s).
    assert others_end["marketplace"] - others_mid["marketplace"] > 2000
    assert others_end["carrier"] - others_mid["carrier"] > 200
    assert final.destinations["erp"].breaker_state == "closed" and final.destinations["erp"].replayed > 1000
    assert_exactly(expected_deliveries(cfg, events), got)


def test_429_with_retry_after_pauses_the_destination(clean, nats_server, emulator, ray_session):
    # One request at a time, so no request was already on the wire when the 429 came back
    # (a request in flight cannot be recalled; every one sent after the 429 waits).
    def change(raw):
        raw["destinations"]["carrier"].update(concurrency=1, batch={"max_records": 20, "linger": "5ms"})

    cfg = parse_config(config_dict(nats_server.url, emulator.url, change))
    events = [e for e in RetailEventFactory(seed=53).burst(3000) if e.type == "shipment.requested"]

    async def scenario():
        sup = Supervisor(cfg)
        await sup.start()
        await set_faults(emulator.url, "carrier", {"fail_requests": 1, "status": 429, "retry_after": 2})
        try:
            await publish(nats_server.url, events)
            await wait_final(sup, len(events))
            stats = (await emulator_stats(emulator.url))["carrier"]
            got = await received(emulator.url, "carrier")
        finally:
            await sup.stop()
            await set_faults(emulator.url, "carrier", None)
        return stats, got

    stats, got = asyncio.run(scenario())
    [throttled_at] = stats["failed_at"]
    after = [t for t in stats["request_times"] if t > throttled_at]
    assert after, "the carrier was asked again"
    print(f"\nfirst request after the 429: {min(after) - throttled_at:.2f}s later")
    assert min(after) - throttled_at >= 2.0
    assert set(got) == {e.key for e in events} and all(n == 1 for n in got.values())


def test_refused_records_are_dead_lettered_then_replayed_once(clean, nats_server, emulator, ray_session, tmp_path):
    raw = config_dict(nats_server.url, emulator.url)
    path = tmp_path / "router.yaml"
    path.write_text(yaml.safe_dump(raw))
    cfg = parse_config(raw)
    events = [e for e in RetailEventFactory(seed=54).burst(2000)
              if e.type in ("shipment.dispatched", "shipment.delivered", "inventory.adjusted")]
    refused = {e.key for e in events if e.type.startswith("shipment.")}  # they carry `tracking_number`

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "router.control.cli", "dlq", *args, "-c", str(path)],
                              capture_output=True, text=True, timeout=120)

    async def scenario():
        sup = Supervisor(cfg)
        await sup.start()
        await set_faults(emulator.url, "marketplace", {"reject_field": "tracking_number"})
        try:
            await publish(nats_server.url, events)
            st = await wait_final(sup, len(events))
            nc = await nats.connect(nats_server.url)
            letters = await read_dead_letters(nc.jetstream(), cfg.dead_letter.stream)
            await nc.close()
            before = await received(emulator.url, "marketplace")
            listed = await asyncio.to_thread(cli, "list", "--destination", "marketplace", "--limit", "10000")
            await set_faults(emulator.url, "marketplace", None)  # the destination is fixed
            replayed = await asyncio.to_thread(cli, "replay", "--destination", "marketplace", "--since", "1h")
            expected = expected_deliveries(cfg, events)
            got = await wait_complete(nats_server.url, emulator.url, expected)
            again = await asyncio.to_thread(cli, "replay", "--destination", "marketplace")
            after = await sup.stats()
        finally:
            await sup.stop()
            await set_faults(emulator.url, "marketplace", None)
        return st, letters, before, listed, replayed, got, again, after

    st, letters, before, listed, replayed, got, again, after = asyncio.run(scenario())
    assert st.destinations["marketplace"].dead_lettered == len(refused)
    assert {x[H.KEY] for x in letters} == refused
    sample = letters[0]
    assert sample[H.STATUS] == "400" and "tracking_number" in sample[H.RESPONSE]
    assert sample[H.REASON] == "HTTP 400 from marketplace" and sample[H.DESTINATION] == "marketplace"
    assert not refused & set(before)  # the others were delivered meanwhile
    assert listed.returncode == 0 and f"{len(refused)} dead letter(s)" in listed.stdout
    assert replayed.returncode == 0, replayed.stderr
    assert f"replayed {len(refused)} dead letter(s)" in replayed.stdout
    assert f"replayed {len(refused)}/{len(refused)}" in replayed.stderr  # progress
    assert "replayed 0 dead letter(s)" in again.stdout  # replayed ones left the dead-letter stream
    assert_exactly(expected_deliveries(cfg, events), got)
    assert after.destinations["marketplace"].replayed == len(refused)
