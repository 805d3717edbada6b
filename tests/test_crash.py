"""No loss and no duplicate per destination, shown by breaking things mid-stream and counting
what every destination received by idempotency key."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

import yaml

from router.config import load_config
from router.control.demo import demo_config_dict, expected_deliveries
from router.jetstream.embedded_server import EmbeddedNats
from router.loadtest.retail_events import RetailEventFactory
from router.control.supervisor import Supervisor

from .conftest import wait_until
from .harness import (all_received, assert_exactly, config, in_flight_bound, kill_process_tree, publish, received,
                      wait_complete)

def crash_config(raw):
    # Short ack_wait: after a crash, JetStream redelivers what was unacked within seconds.
    for s in raw["sources"]:
        s.update(ack_wait="4s", redelivery_delay="500ms", fetch_batch=200, max_inflight_batches=4)
    for d in raw["destinations"].values():
        d.setdefault("batch", {})["linger"] = "5ms"


def test_20k_events_with_10pct_resent_minutes_later_arrive_once_each(clean, nats_server, emulator, ray_session):
    factory = RetailEventFactory(seed=41)
    events = list(factory.burst(20_000, duplicate_ratio=0.10, resend_after_minutes=12))
    resent = len(events) - len({e.key for e in events})
    assert resent > 1500

    async def scenario():
        cfg = config(nats_server.url, emulator.url, crash_config)
        sup = Supervisor(cfg)
        await sup.start()
        try:
            await publish(nats_server.url, events)
            expected = expected_deliveries(cfg, events)
            got = await wait_complete(nats_server.url, emulator.url, expected)
            st = await sup.stats()
        finally:
            await sup.stop()
        return expected, got, st

    expected, got, st = asyncio.run(scenario())
    assert_exactly(expected, got)
    assert sum(d.duplicates for d in st.destinations.values()) >= resent  # each resend suppressed somewhere


def test_kill_9_of_the_whole_router_then_restart(clean, nats_server, emulator, tmp_path):
    raw = demo_config_dict(nats_server.url, emulator.url)
    crash_config(raw)
    path = tmp_path / "router.yaml"
    path.write_text(yaml.safe_dump(raw))
    cfg = load_config(path)
    factory = RetailEventFactory(seed=42)
    events = list(factory.burst(20_000, duplicate_ratio=0.05))
    log = tmp_path / "router.log"

    def start():
        return subprocess.Popen([sys.executable, "-m", "router.control.cli", "run", "-c", str(path)],
                                stdout=log.open("a"), stderr=subprocess.STDOUT, start_new_session=True)

    proc = start()
    try:
        wait_until(lambda: "router running" in log.read_text() or proc.poll() is not None, 120, "the router")
        asyncio.run(publish(nats_server.url, events))
        wait_until(lambda: len(asyncio.run(received(emulator.url, "erp"))) > 3000 or proc.poll() is not None,
                   180, "the router to be mid-stream")
        assert proc.poll() is None, log.read_text()[-3000:]
        kill_process_tree(proc.pid)  # the driver, Ray's head processes, every actor: no drain, no acks
        before = asyncio.run(all_received(emulator.url, list(cfg.destinations)))
        assert sum(len(v) for v in before.values()) < sum(len(v) for v in expected_deliveries(cfg, events).values())
        # Producers re-send some events that were delivered before the crash: new messages, same keys.
        again = [e for e in events if e.key in before["erp"]][:300]
        asyncio.run(publish(nats_server.url, again))
        proc = start()  # a new Ray cluster: dedup state comes back from JetStream
        expected = expected_deliveries(cfg, events)
        got = asyncio.run(wait_complete(nats_server.url, emulator.url, expected))
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            kill_process_tree(proc.pid)
    bounds = {d: in_flight_bound(cfg, d) for d in cfg.destinations}
    assert_exactly(expected, got, bounds, "kill -9 of the router")


def test_kill_9_of_one_destination_actor(clean, nats_server, emulator, ray_session):
    events = list(RetailEventFactory(seed=43).burst(20_000, duplicate_ratio=0.05))

    async def scenario():
        cfg = config(nats_server.url, emulator.url, crash_config)
        sup = Supervisor(cfg)
        await sup.start()
        victim = sup.workers["erp"][0]
        try:
            pid = await victim.pid.remote()
            await publish(nats_server.url, events)
            while len(await received(emulator.url, "erp")) < 3000:
                await asyncio.sleep(0.05)
            os.kill(pid, signal.SIGKILL)
            expected = expected_deliveries(cfg, events)
            got = await wait_complete(nats_server.url, emulator.url, expected)
            new_pid = await victim.pid.remote()
        finally:
            await sup.stop()
        return cfg, expected, got, pid, new_pid

    cfg, expected, got, pid, new_pid = asyncio.run(scenario())
    assert new_pid != pid, "Ray restarted the actor in a new process"
    assert_exactly(expected, got, {"erp": in_flight_bound(cfg, "erp", shards=1), "marketplace": 0, "carrier": 0},
                   "kill -9 of one erp sink actor")


def test_nats_server_restart_mid_stream(emulator, ray_session, tmp_path):
    server = EmbeddedNats(store_dir=str(tmp_path / "js")).start()
    try:
        asyncio.run(_nats_restart(server, emulator))
    finally:
        server.cleanup()


async def _nats_restart(server, emulator):
    from .conftest import _post

    await _post(f"{emulator.url}/reset")
    events = list(RetailEventFactory(seed=44).burst(15_000, duplicate_ratio=0.05))
    cfg = config(server.url, emulator.url, crash_config)
    sup = Supervisor(cfg)
    await sup.start()
    try:
        await publish(server.url, events)
        while len(await received(emulator.url, "erp")) < 2000:
            await asyncio.sleep(0.05)
        await asyncio.to_thread(server.stop)
        await asyncio.sleep(2.0)
        await asyncio.to_thread(server.start)
        expected = expected_deliveries(cfg, events)
        got = await wait_complete(server.url, emulator.url, expected)
    finally:
        await sup.stop()
    assert_exactly(expected, got, {d: in_flight_bound(cfg, d) for d in cfg.destinations}, "nats-server restart")
