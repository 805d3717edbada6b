"""No loss and no duplicate per destination, shown by breaking things mid-stream and counting
what every destination received by idempotency key."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys

import pytest
import ray
import yaml

from router.config import load_config
from router.control.demo import demo_config_dict, expected_deliveries
from router.jetstream.embedded_server import EmbeddedNats
from router.loadtest.retail_events import RetailEventFactory
from router.control.supervisor import Supervisor

from .conftest import wait_until
from .harness import (all_received, assert_exactly, config, in_flight_bound, kill_process_tree, poll_until, publish,
                      publish_paced, received, set_faults, times_received, wait_complete, wait_final)

def crash_config(raw):
    # Short ack_wait: after a crash, JetStream redelivers what was unacked within seconds.
    for s in raw["sources"]:
        s.update(ack_wait="4s", redelivery_delay="500ms", fetch_batch=200, max_inflight_batches=4)
    for d in raw["destinations"].values():
        d.setdefault("batch", {})["linger"] = "5ms"


def crash_config_acking(ack: str):
    """``crash_config`` with the sources' ``ack`` mode (message or watermark)."""
    def settings(raw):
        crash_config(raw)
        for src in raw["sources"]:
            src["ack"] = ack
    return settings


def test_20k_events_with_10pct_resent_minutes_later_arrive_once_each(clean, nats_server, emulator, ray_session):
    factory = RetailEventFactory(seed=41)
    first = list(factory.burst(18_000))
    # 10% of the keys again, 12 minutes later in event time, published only once the first copies arrived.
    resends = [factory.resent(e, minutes_later=12) for e in random.Random(41).sample(first, 2_000)]

    async def scenario():
        cfg = config(nats_server.url, emulator.url, crash_config)
        expected = expected_deliveries(cfg, first)
        sup = Supervisor(cfg)
        await sup.start()
        try:
            await publish(nats_server.url, first)
            await wait_complete(nats_server.url, emulator.url, expected)
            before = await sup.stats()
            await publish(nats_server.url, resends)
            await wait_final(sup, len(first) + len(resends))
            got = await wait_complete(nats_server.url, emulator.url, expected)  # drained: every re-send acked
            after = await sup.stats()
        finally:
            await sup.stop()
        return expected, got, before, after

    expected, got, before, after = asyncio.run(scenario())
    assert_exactly(expected, got)
    resent_keys = {e.key for e in resends}
    assert expected_deliveries(config(nats_server.url, emulator.url), resends) == {
        d: keys & resent_keys for d, keys in expected.items() if keys & resent_keys}, "re-sends route like the first copies"
    suppressed = {d: after.destinations[d].duplicates - before.destinations[d].duplicates for d in expected}
    resent_per_dest = {d: len(keys & resent_keys) for d, keys in expected.items()}
    print(f"\nre-sent {len(resends)} keys after their first copies arrived; re-sends per destination {resent_per_dest}, "
          f"counted as duplicates by the router {suppressed}; received per destination "
          f"{ {d: sum(got[d].values()) for d in got} } for { {d: len(k) for d, k in expected.items()} } keys")
    for d in expected:
        assert suppressed[d] >= resent_per_dest[d], f"{d}: {suppressed[d]} duplicates counted, {resent_per_dest[d]} re-sent"


@pytest.mark.parametrize("ack", ["message", "watermark"])
def test_kill_9_of_the_whole_router_then_restart(clean, nats_server, emulator, tmp_path, ack):
    raw = demo_config_dict(nats_server.url, emulator.url)
    crash_config(raw)
    for src in raw["sources"]:
        src["ack"] = ack
        if ack == "watermark":  # an ack_wait longer than the restart: what the dead reader held is still out
            src["ack_wait"] = "30s"  # when the new one acks its first batch, and must not be acked with it
    path = tmp_path / "router.yaml"
    path.write_text(yaml.safe_dump(raw))
    cfg = load_config(path)
    factory = RetailEventFactory(seed=42)
    events = list(factory.burst(20_000, duplicate_ratio=0.05))
    # The first 5,000 are delivered and acknowledged before the kill; an ack follows the dedup journal
    # commit, so these keys are durably known: their re-sends must never arrive again.
    acked, later = events[:5_000], events[5_000:]
    expected_acked, expected = expected_deliveries(cfg, acked), expected_deliveries(cfg, events)
    log = tmp_path / "router.log"

    def start():
        return subprocess.Popen([sys.executable, "-m", "router.control.cli", "run", "-c", str(path)],
                                stdout=log.open("a"), stderr=subprocess.STDOUT, start_new_session=True)

    async def kill_mid_stream(pid: int) -> None:
        # Producers publish at a steady rate and keep publishing while the router is down.
        producing = asyncio.create_task(publish_paced(nats_server.url, later, per_second=4000))
        mid = len(expected_acked["erp"]) + 3000
        await poll_until(lambda: _at_least(emulator.url, "erp", mid), 120, f"erp to receive {mid} records (mid-stream)",
                         interval=0.05)
        # A slow ERP for the last half second: batches fetched by then are still on their way there.
        await set_faults(emulator.url, "erp", {"latency_ms": 1500})
        await asyncio.sleep(0.5)
        # The driver, Ray's head processes, every actor: no drain, no acks.
        await asyncio.to_thread(kill_process_tree, pid)
        await set_faults(emulator.url, "erp", None)
        await producing

    proc = start()
    try:
        wait_until(lambda: "router running" in log.read_text() or proc.poll() is not None, 120, "the router to start")
        asyncio.run(publish(nats_server.url, acked))
        asyncio.run(wait_complete(nats_server.url, emulator.url, expected_acked, timeout=120))
        assert proc.poll() is None, log.read_text()[-3000:]
        asyncio.run(kill_mid_stream(proc.pid))
        before = asyncio.run(all_received(emulator.url, list(cfg.destinations)))
        assert sum(len(v) for v in before.values()) < sum(len(v) for v in expected.values()), "killed mid-stream"
        # Producers re-send events delivered before the crash: new messages, same keys. Some were
        # acknowledged (durable), some only just delivered (maybe not yet in the journal).
        once_keys = {k for keys in expected_acked.values() for k in keys}
        again_acked = _unique_by_key(e for e in acked if e.key in once_keys)
        again_acked = random.Random(42).sample(again_acked, 400)
        again_recent = _unique_by_key(e for e in later if e.key in before["erp"])[-300:]
        asyncio.run(publish(nats_server.url, again_acked + again_recent))
        proc = start()  # a new Ray cluster: dedup state comes back from JetStream
        got = asyncio.run(wait_complete(nats_server.url, emulator.url, expected))
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            kill_process_tree(proc.pid)
    durable = times_received(got, expected, {e.key for e in again_acked})
    recent = times_received(got, expected, {e.key for e in again_recent})
    bounds = {d: in_flight_bound(cfg, d) for d in cfg.destinations}
    print(f"\nkill -9 after {sum(len(v) for v in before.values())} records delivered; re-sent during the outage: "
          f"{len(again_acked)} acknowledged keys, received per destination {{times: keys}} {durable}; "
          f"{len(again_recent)} keys delivered just before the kill: {recent}")
    for d, tally in durable.items():
        assert set(tally) <= {1}, f"{d}: keys acknowledged before the kill and re-sent arrived {{times: keys}} {tally}"
    assert sum(sum(t.values()) for t in durable.values()) >= len(again_acked)
    assert_exactly(expected, got, bounds, "kill -9 of the router")


def _unique_by_key(events) -> list:
    seen: set[str] = set()
    out = []
    for e in events:
        if e.key and e.key not in seen:
            seen.add(e.key)
            out.append(e)
    return out


async def _pid_once_up(actor):
    """The actor's pid, or None while Ray is still restarting it (it refuses calls until it is up)."""
    try:
        return await actor.pid.remote()
    except ray.exceptions.ActorUnavailableError:
        return None


@pytest.mark.parametrize("ack", ["message", "watermark"])
def test_kill_9_of_one_destination_actor(clean, nats_server, emulator, ray_session, ack):
    """The calls to the dead actor fail: their messages are NAKed (with watermark acks, no ack may
    pass them until they come back)."""
    events = list(RetailEventFactory(seed=43).burst(20_000, duplicate_ratio=0.05))

    async def scenario():
        cfg = config(nats_server.url, emulator.url, crash_config_acking(ack))
        sup = Supervisor(cfg)
        await sup.start()
        victim = sup.workers["erp"][0]
        try:
            pid = await victim.pid.remote()
            await publish(nats_server.url, events)
            await poll_until(lambda: _at_least(emulator.url, "erp", 3000), 120, "erp to receive 3000 records",
                             interval=0.05)
            os.kill(pid, signal.SIGKILL)
            expected = expected_deliveries(cfg, events)
            got = await wait_complete(nats_server.url, emulator.url, expected)
            new_pid = await poll_until(lambda: _pid_once_up(victim), 60, "the restarted erp actor to answer")
        finally:
            await sup.stop()
        return cfg, expected, got, pid, new_pid

    cfg, expected, got, pid, new_pid = asyncio.run(scenario())
    assert new_pid != pid, "Ray restarted the actor in a new process"
    assert_exactly(expected, got, {"erp": in_flight_bound(cfg, "erp", shards=1), "marketplace": 0, "carrier": 0},
                   "kill -9 of one erp sink actor")


@pytest.mark.parametrize("ack", ["message", "watermark"])
def test_nats_server_restart_mid_stream(emulator, ray_session, tmp_path, ack):
    server = EmbeddedNats(store_dir=str(tmp_path / "js")).start()
    try:
        asyncio.run(_nats_restart(server, emulator, ack))
    finally:
        server.cleanup()


async def _nats_restart(server, emulator, ack):
    from .conftest import _post

    await _post(f"{emulator.url}/reset")
    events = list(RetailEventFactory(seed=44).burst(15_000, duplicate_ratio=0.05))
    cfg = config(server.url, emulator.url, crash_config_acking(ack))
    sup = Supervisor(cfg)
    await sup.start()
    try:
        await publish(server.url, events)
        await poll_until(lambda: _at_least(emulator.url, "erp", 2000), 120, "erp to receive 2000 records",
                         interval=0.05)
        await asyncio.to_thread(server.stop)
        await asyncio.sleep(2.0)
        await asyncio.to_thread(server.start)
        expected = expected_deliveries(cfg, events)
        got = await wait_complete(server.url, emulator.url, expected)
    finally:
        await sup.stop()
    assert_exactly(expected, got, {d: in_flight_bound(cfg, d) for d in cfg.destinations}, "nats-server restart")


async def _at_least(emulator_url: str, dest: str, n: int) -> bool:
    return len(await received(emulator_url, dest)) >= n
