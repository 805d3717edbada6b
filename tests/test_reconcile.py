"""``router reconcile`` finds exactly what a destination never got, and disturbs nothing.

A real run (duplicates, malformed events, a short ERP outage that parks and replays), then
records removed on purpose: a few dedup-journal messages deleted (each holds a batch of keys),
one of the keys they held parked again and one dead-lettered; reconcile must list exactly the
rest as unaccounted. Then keys removed from the destination's own record (a key export minus a
few) must be listed as delivered but missing there.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

import nats
import numpy as np
import pytest
import yaml
from nats.js import api

from router.config import parse_config
from router.control.demo import expected_deliveries
from router.control.reconcile import KeySet, UniqueCounter
from router.delivery.key_hash import key_hash
from router.ingest.plan import shard_of
from router.jetstream.dead_letters import H
from router.loadtest.retail_events import RetailEventFactory
from router.control.supervisor import Supervisor
from router.wire import IDEMPOTENCY_KEY, journal_subject

from .harness import config_dict, poll_until, publish, received, set_faults, wait_complete


def test_key_set_and_unique_counter():
    ks = KeySet(np.array([5, 1, 5, 2**64 - 1], np.uint64))
    assert len(ks) == 3
    assert ks.contains(np.array([1, 2, 5, 2**64 - 1, 2**63], np.uint64)).tolist() == [True, False, True, True, False]
    assert KeySet().contains(np.array([1], np.uint64)).tolist() == [False]
    c = UniqueCounter(compact_at=3)
    for chunk in ([1, 2], [2, 3], [3, 4, 1], [9]):
        c.add(np.array(chunk, np.uint64))
    assert c.count() == 5


async def _journal(js, stream: str, subject: str) -> dict[int, list[int]]:
    """Journal message sequence -> the key hashes it holds."""
    sub = await js.pull_subscribe(subject, stream=stream, config=api.ConsumerConfig(
        ack_policy=api.AckPolicy.NONE, deliver_policy=api.DeliverPolicy.ALL, inactive_threshold=10.0))
    out: dict[int, list[int]] = {}
    while True:
        msgs = await sub.fetch(1000, timeout=2)
        for m in msgs:
            out[m.metadata.sequence.stream] = [int(h) for h in np.frombuffer(m.data, ">u8")]
        if msgs[-1].metadata.num_pending == 0:
            break
    await sub.unsubscribe()
    return out


async def _durables(js, cfg) -> dict[str, tuple]:
    out = {}
    for s in cfg.sources:
        i = await js.consumer_info(s.stream, s.durable)
        out[s.durable] = (i.num_pending, i.num_ack_pending, i.delivered.stream_seq, i.ack_floor.stream_seq)
    return out


@pytest.mark.timeout(120)
def test_reconcile_finds_exactly_what_was_removed(clean, nats_server, emulator, ray_session, tmp_path):
    def fast_outage(raw):
        erp = raw["destinations"]["erp"]
        erp.update(buffer={"max_wait": "1s"}, circuit_breaker={"open_for": "1s"},
                   retry={"max_attempts": 2, "initial_backoff": "50ms"})

    raw = config_dict(nats_server.url, emulator.url, fast_outage)
    cfg = parse_config(raw)
    path = tmp_path / "router.yaml"
    path.write_text(yaml.safe_dump(raw))
    events = list(RetailEventFactory(seed=71).burst(3000, duplicate_ratio=0.05, malformed=6))
    expected = expected_deliveries(cfg, events)

    def reconcile(*args, as_json=True):
        return subprocess.run([sys.executable, "-m", "router.control.cli", "reconcile", "-c", str(path),
                               "--since", "10m", *(["--json"] if as_json else []), *args],
                              capture_output=True, text=True, timeout=60)

    async def scenario():
        sup = Supervisor(cfg)
        await sup.start()
        try:
            await set_faults(emulator.url, "erp", {"error_rate": 1.0, "status": 503})  # ERP down
            await publish(nats_server.url, events)

            async def parked():
                return (await sup.stats()).destinations["erp"].parked

            await poll_until(parked, 30, "ERP records parked during the outage")
            await set_faults(emulator.url, "erp", None)  # ERP back: the park is replayed
            await wait_complete(nats_server.url, emulator.url, expected, timeout=60)
            st = await sup.stats()
        finally:
            await sup.stop()
            await set_faults(emulator.url, "erp", None)

        nc = await nats.connect(nats_server.url)
        js = nc.jetstream()
        lost: dict[str, set[str]] = {}
        for dest, n in (("erp", 3), ("marketplace", 1)):
            journal = await _journal(js, cfg.dedup.stream, journal_subject(cfg.dedup.stream, dest))
            doomed = sorted(journal)[1:1 + 2 * n:2]
            for seq in doomed:
                await js.delete_msg(cfg.dedup.stream, seq)
            kept = {h for seq, hs in journal.items() if seq not in doomed for h in hs}
            gone = {h for seq in doomed for h in journal[seq]} - kept
            lost[dest] = {k for k in expected[dest] if key_hash(k) in gone}
        # Of the ERP keys whose journal record is gone, one waits in the park again and one is
        # dead-lettered: those are accounted for.
        parked_key, dead_key = sorted(lost["erp"])[:2]
        await js.publish(f"{cfg.parking.subject_prefix}.erp.{shard_of(parked_key, cfg.destinations['erp'].pool_size)}",
                         b"{}", headers={IDEMPOTENCY_KEY: parked_key}, stream=cfg.parking.stream)
        await js.publish(f"{cfg.dead_letter.subject_prefix}.erp", b"{}", stream=cfg.dead_letter.stream, headers={
            H.REASON: "HTTP 422 from erp", H.STAGE: "destination", H.DESTINATION: "erp", H.KEY: dead_key})
        before = await _durables(js, cfg)
        erp_got = await received(emulator.url, "erp")

        everything = await asyncio.to_thread(reconcile)
        carrier_shipments = await asyncio.to_thread(reconcile, "-d", "carrier", "--type", "shipment.*")
        keys_file = tmp_path / "erp-keys.txt"
        delivered_erp = sorted(set(erp_got) - lost["erp"])
        forgotten = set(delivered_erp[::500])  # the ERP lost these from its own record
        keys_file.write_text("\n".join(k for k in erp_got if k not in forgotten) + "\n")
        at_erp = await asyncio.to_thread(reconcile, "-d", "erp", "--destination-keys", str(keys_file))
        as_text = await asyncio.to_thread(reconcile, "-d", "marketplace", as_json=False)
        after = await _durables(js, cfg)
        await nc.close()
        return (st, lost, (parked_key, dead_key), forgotten, everything, carrier_shipments, at_erp, as_text,
                before, after)

    (st, lost, (parked_key, dead_key), forgotten, everything, carrier_shipments, at_erp, as_text,
     before, after) = asyncio.run(scenario())
    assert st.destinations["erp"].parked > 0 and st.destinations["erp"].replayed > 0
    assert len(lost["erp"]) > 2 and lost["marketplace"]

    assert everything.returncode == 1, everything.stderr
    rep = json.loads(everything.stdout)
    unaccounted = {(e["destination"], e["key"]) for e in rep["unaccounted"]}
    want = {("erp", k) for k in lost["erp"] - {parked_key, dead_key}} | {("marketplace", k) for k in lost["marketplace"]}
    assert unaccounted == want
    assert rep["unaccounted_total"] == len(want)
    erp, market = rep["totals"]["erp"], rep["totals"]["marketplace"]
    assert erp["parked"] == 1 and erp["dead_lettered"] == 1
    assert rep["dead_letter_reasons"]["erp"] == {"HTTP 422 from erp": 1}
    assert erp["delivered"] == len(expected["erp"]) - len(lost["erp"])
    assert market["delivered"] == len(expected["marketplace"]) - len(lost["marketplace"])
    assert rep["totals"]["carrier"]["delivered"] == len(expected["carrier"])
    assert all(t["in_flight"] == 0 and t["unknown"] == 0 for t in rep["totals"].values())
    assert rep["ingest"] == {"undecodable": 6, "dead_lettered": 6, "in_flight": 0, "unaccounted": 0}
    assert rep["events_read"] == len(events)
    by_key = {e["key"]: e for e in rep["unaccounted"]}
    sample = by_key[sorted(lost["marketplace"])[0]]
    assert sample["stream"] in {s.stream for s in cfg.sources} and sample["seq"] > 0 and sample["published_at"]
    assert "read 3,000/3,000 source events" in everything.stderr  # progress (not a TTY: lines)

    # Nothing else lost: one destination, one type family, exit 0.
    assert carrier_shipments.returncode == 0, carrier_shipments.stdout + carrier_shipments.stderr
    shipments = json.loads(carrier_shipments.stdout)
    assert list(shipments["counts"]) == ["carrier"] and shipments["unaccounted"] == []
    assert set(shipments["counts"]["carrier"]) == {"shipment.requested"}
    shipped = expected_deliveries(cfg, [e for e in events if e.type and e.type.startswith("shipment.")])
    assert shipments["totals"]["carrier"]["delivered"] == len(shipped["carrier"])

    assert at_erp.returncode == 1
    keys_rep = json.loads(at_erp.stdout)
    assert {e["key"] for e in keys_rep["missing_at_destination"]} == forgotten
    assert keys_rep["missing_at_destination_total"] == len(forgotten)

    assert as_text.returncode == 1
    assert f"UNACCOUNTED: {len(lost['marketplace'])} (destination, key) pair(s)" in as_text.stdout
    assert all(k in as_text.stdout for k in lost["marketplace"])
    print(f"\nreconcile of {rep['events_read']} events in {rep['seconds']}s; unaccounted {rep['unaccounted_total']}; "
          f"erp totals {erp}")

    assert before == after, "reconcile moved a source consumer"


def test_reconcile_usage_errors(tmp_path):
    raw = config_dict("nats://127.0.0.1:1", "http://127.0.0.1:1")
    raw["nats"]["connect_timeout"] = "1s"
    path = tmp_path / "router.yaml"
    path.write_text(yaml.safe_dump(raw))

    def run(*args):
        return subprocess.run([sys.executable, "-m", "router.control.cli", "reconcile", "-c", str(path), *args],
                              capture_output=True, text=True, timeout=60)

    bad_dest = run("-d", "wms")
    assert bad_dest.returncode == 2 and "unknown destination `wms`" in bad_dest.stderr
    keys = tmp_path / "keys.txt"
    keys.write_text("a\n")
    assert run("--destination-keys", str(keys)).returncode == 2  # whose keys? needs -d
    assert run("--since", "yesterday").returncode == 2
    unreachable = run("--since", "1h")
    assert unreachable.returncode == 3, unreachable.stderr


def test_reconcile_says_what_it_cannot_know(clean, nats_server):
    """Events older than the journal's retention are `unknown`, not unaccounted; a source stream
    that lost the start of the window says how many messages left it. No Ray: nothing is routed."""
    from router.control.reconcile import ReconcileRequest, reconcile
    from router.jetstream.streams import ensure_router_streams, ensure_source

    raw = config_dict(nats_server.url, "http://127.0.0.1:1")
    raw["dedup"] = {"window": "1s"}
    cfg = parse_config(raw)
    orders = next(s for s in cfg.sources if s.name == "orders")
    events = [e for e in RetailEventFactory(seed=72).burst(300) if e.subject.startswith("retail.orders.")]

    async def scenario():
        nc = await nats.connect(nats_server.url)
        js = nc.jetstream()
        await ensure_router_streams(js, cfg)
        for src in cfg.sources:
            await ensure_source(js, src)
        for e in events:
            await js.publish(e.subject, e.payload, headers=e.headers)
        # The router "processed" them all (acked), but its journal kept nothing past the window.
        sub = await js.pull_subscribe_bind(orders.durable, orders.stream)
        for m in await sub.fetch(len(events), timeout=5):
            await m.ack_sync()
        await js.purge_stream(orders.stream, seq=11)  # the first 10 left the source stream
        await asyncio.sleep(1.2)  # past the journal's max_age
        report = await reconcile(js, cfg, ReconcileRequest(since=time.time() - 600))
        await nc.close()
        return report

    report = asyncio.run(scenario())
    routed = expected_deliveries(cfg, events[10:])
    assert report.unaccounted_total == 0 and report.exit_code == 0
    assert {d: t["unknown"] for d, t in report.totals.items()} == {d: len(routed.get(d, ())) for d in report.totals}
    why = {c.what: c for c in report.cannot_know}
    assert why["source orders"].events == 10 and "cannot be checked" in why["source orders"].reason
    assert why["dedup journal"].events == sum(len(v) for v in routed.values())
