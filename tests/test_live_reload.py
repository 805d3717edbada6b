"""Live route and destination changes on a running router (real NATS, Ray and HTTP destinations):
nothing lost, nothing duplicated, every record routed by exactly one revision of the table."""

from __future__ import annotations

import asyncio
import copy
import os
import signal
import subprocess
import sys
from collections import Counter

import aiohttp
import msgspec
import nats
import yaml

from router.codecs import EventDecoder
from router.config import parse_config
from router.control.reload import encode_live, live_part
from router.control.supervisor import Supervisor
from router.ingest.routing import RouteTable
from router.jetstream.revisions import RevisionStore
from router.loadtest.retail_events import RetailEventFactory
from router.routes import DEFAULT_ROUTES

from .conftest import wait_until
from .harness import config_dict, publish, publish_paced, received, wait_final

DESTS = ("erp", "marketplace", "carrier")


def table_b(raw_routes: list[dict]) -> list[dict]:
    """Table B: stock levels go to the carrier instead of the marketplace (table A: the default)."""
    out = copy.deepcopy(raw_routes)
    for r in out:
        if r["name"] == "inventory-to-marketplace":
            r["destinations"] = ["carrier"]
    return out


def default_routes() -> list[dict]:
    return yaml.safe_load(open(DEFAULT_ROUTES))["routes"]


def with_routes(cfg, routes):
    raw = msgspec_builtins(cfg)
    raw["routes"] = routes
    return parse_config(raw, "<test>")


def msgspec_builtins(cfg) -> dict:
    from router.config_base import enc_hook

    return msgspec.to_builtins(cfg, enc_hook=enc_hook)


async def get_json(url: str):
    async with aiohttp.ClientSession() as s:
        async with s.get(url) as r:
            return await r.json()


async def store(nats_url: str, cfg) -> tuple:
    nc = await nats.connect(nats_url)
    return nc, await RevisionStore(nc.jetstream(), cfg.live.bucket, cfg.live.key).open()


def targets(table: RouteTable, decoder: EventDecoder, e) -> set[str]:
    return {t.destination for t in table.targets(decoder.decode(e.payload, e.headers, e.subject))}


def test_20_applies_during_a_stream_lose_nothing_double_nothing_and_route_by_one_revision(
        clean, nats_server, emulator, ray_session):
    cfg_a = parse_config(config_dict(nats_server.url, emulator.url), "<test>")
    cfg_b = with_routes(cfg_a, table_b(default_routes()))
    events = list(RetailEventFactory(seed=61).burst(50_000, duplicate_ratio=0.05))
    tables = {"a": RouteTable(cfg_a.route_list), "b": RouteTable(cfg_b.route_list)}

    async def scenario():
        sup = Supervisor(cfg_a)
        await sup.start()
        nc, revisions = await store(nats_server.url, cfg_a)
        first = sup.revision
        table_of = {first: "a"}
        try:
            publishing = asyncio.get_running_loop().create_task(publish_paced(nats_server.url, events, 6000))
            for i in range(20):
                await asyncio.sleep(0.4)
                which = "b" if i % 2 == 0 else "a"
                number = await revisions.put(encode_live(live_part(cfg_b if which == "b" else cfg_a)))
                table_of[number] = which
            await publishing
            st = await wait_final(sup, len(events), timeout=180)
            got = {d: await received(emulator.url, d) for d in DESTS}
            revs = {d: await get_json(f"{emulator.url}/revisions/{d}") for d in DESTS}
        finally:
            await nc.close()
            await sup.stop()
        return st, got, revs, table_of, sup.revision

    st, got, revs, table_of, final_revision = asyncio.run(scenario())
    assert st.reload_failures == 0 and final_revision == max(table_of), "all 20 revisions applied"
    decoder = EventDecoder()
    used = Counter()
    for d in DESTS:
        assert max(got[d].values()) == 1, f"{d} received a key twice"
        for key, rs in revs[d].items():
            used[rs[0]] += 1
    assert len([r for r in used if r]) >= 5, f"records routed by several revisions mid-stream: {used}"
    by_key = {}
    for e in events:
        by_key.setdefault(e.key, e)
    affected = 0
    for key, e in by_key.items():
        da, db = targets(tables["a"], decoder, e), targets(tables["b"], decoder, e)
        where = {d for d in DESTS if key in got[d]}
        assert da & db <= where <= da | db, (key, where, da, db)
        assert da <= where or db <= where, f"{key} delivered by no revision in full: {where} (a {da}, b {db})"
        for d in where:
            table = tables[table_of[int(revs[d][key][0])]]
            assert d in targets(table, decoder, e), f"{key} at {d} under revision {revs[d][key][0]}"
        affected += da != db
    assert affected > 1000, "the two tables differ for many events"
    print(f"\n20 applies: revisions used by delivered records: {dict(sorted(used.items()))}")


def test_bad_revisions_are_refused_rollback_restores_and_limits_change_in_place(
        clean, nats_server, emulator, ray_session, tmp_path):
    raw = config_dict(nats_server.url, emulator.url)
    raw["routes"] = default_routes()
    cfg_path = tmp_path / "router.yaml"
    cfg_path.write_text(yaml.safe_dump(raw))
    cfg = parse_config(raw, "<test>")
    factory = RetailEventFactory(seed=62)

    def inventory(n):
        return [e for e in factory.burst(n * 8) if e.type == "inventory.adjusted"][:n]

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "router.control.cli", "routes", *args, "-c", str(cfg_path)],
                              capture_output=True, text=True, timeout=120)

    def write_routes(name, routes):
        p = tmp_path / name
        p.write_text(yaml.safe_dump({"routes": routes}))
        return str(p)

    async def send_and_count(sup, evs):
        before = {d: set(await received(emulator.url, d)) for d in ("marketplace", "carrier")}
        acked = sum(s.acked for s in (await sup.stats()).sources.values())
        await publish(nats_server.url, evs)
        await wait_final(sup, acked + len(evs))
        keys = {e.key for e in evs}
        return {d: len(keys & (set(await received(emulator.url, d)) - before[d])) for d in ("marketplace", "carrier")}

    async def scenario():
        sup = Supervisor(cfg)
        await sup.start()
        out = {}
        try:
            start = sup.revision
            # A table naming a destination that does not exist never reaches the bucket.
            bad = write_routes("bad.yaml", default_routes() + [{"name": "x", "destinations": ["wms"]}])
            out["bad_cli"] = await asyncio.to_thread(cli, "apply", bad)
            out["history_after_bad"] = await asyncio.to_thread(cli, "history")
            # One that reaches it anyway (written by hand): refused by the running router, old table stays.
            nc, revisions = await store(nats_server.url, cfg)
            doc = msgspec.json.decode(encode_live(live_part(cfg)))
            doc["routes"].append({"name": "x", "destinations": ["wms"]})
            await revisions.put(msgspec.json.encode(doc))
            await nc.close()
            await asyncio.sleep(2.0)
            out["after_bad"] = await sup.stats()
            out["old_table"] = await send_and_count(sup, inventory(200))
            # Table B through the CLI: first what it would change on the latest traffic, then apply it.
            out["diff_b"] = await asyncio.to_thread(cli, "diff", write_routes("b.yaml", table_b(default_routes())),
                                                    "--sample", "500")
            out["apply_b"] = await asyncio.to_thread(cli, "apply", str(tmp_path / "b.yaml"))
            await asyncio.sleep(2.0)
            out["table_b"] = await send_and_count(sup, inventory(200))
            out["rollback"] = await asyncio.to_thread(cli, "rollback", str(start))
            await asyncio.sleep(2.0)
            out["rolled_back"] = await send_and_count(sup, inventory(200))
            # Destination limits in place: smaller marketplace batches, same actor process.
            pid = await sup.workers["marketplace"][0].pid.remote()
            raw["destinations"]["marketplace"]["batch"] = {"max_records": 7, "linger": "5ms"}
            cfg_path.write_text(yaml.safe_dump(raw))
            out["apply_limits"] = await asyncio.to_thread(cli, "apply", write_routes("a.yaml", default_routes()))
            await asyncio.sleep(2.0)
            sizes_before = len(await get_json(f"{emulator.url}/batch-sizes/marketplace"))
            out["limits"] = await send_and_count(sup, inventory(300))
            out["sizes"] = (await get_json(f"{emulator.url}/batch-sizes/marketplace"))[sizes_before:]
            out["pid"] = (pid, await sup.workers["marketplace"][0].pid.remote())
            # A bigger carrier pool: new sink actors load the journal behind a short ingest pause.
            raw["destinations"]["carrier"]["pool_size"] = 2
            cfg_path.write_text(yaml.safe_dump(raw))
            out["apply_pool"] = await asyncio.to_thread(cli, "apply", str(tmp_path / "a.yaml"))
            await asyncio.sleep(3.0)
            out["carrier_shards"] = len(sup.workers["carrier"])
            shipments = [e for e in factory.burst(3000) if e.type == "shipment.requested"][:150]
            acked = sum(s.acked for s in (await sup.stats()).sources.values())
            await publish(nats_server.url, shipments)
            await wait_final(sup, acked + len(shipments))
            got = await received(emulator.url, "carrier")
            out["shipments"] = [got.get(e.key, 0) for e in shipments]
            out["history"] = await asyncio.to_thread(cli, "history")
        finally:
            await sup.stop()
        return out

    out = asyncio.run(scenario())
    assert out["bad_cli"].returncode != 0 and "wms" in out["bad_cli"].stderr + out["bad_cli"].stdout
    assert out["after_bad"].reload_failures == 1 and "wms" in out["after_bad"].last_reload_error
    assert out["old_table"] == {"marketplace": 200, "carrier": 0}, "the old table kept routing"
    assert out["diff_b"].returncode == 0, out["diff_b"].stderr
    assert "route changed: inventory-to-marketplace" in out["diff_b"].stdout
    changed = int(out["diff_b"].stdout.split(" event(s) change destination")[0].split()[-1])
    assert changed >= 200, out["diff_b"].stdout  # the 200 stock levels sent just before
    assert out["apply_b"].returncode == 0, out["apply_b"].stderr
    assert out["table_b"] == {"marketplace": 0, "carrier": 200}
    assert out["rollback"].returncode == 0, out["rollback"].stderr
    assert out["rolled_back"] == {"marketplace": 200, "carrier": 0}
    assert out["apply_limits"].returncode == 0 and "retuned in place: marketplace" in out["apply_limits"].stdout
    assert out["limits"]["marketplace"] == 300 and out["sizes"] and max(out["sizes"]) <= 7
    assert out["pid"][0] == out["pid"][1], "limits changed without restarting the sink actor"
    assert "rebuilt (pool size or parking): carrier" in out["apply_pool"].stdout, out["apply_pool"].stdout
    assert out["carrier_shards"] == 2
    assert out["shipments"] == [1] * 150, "each shipment once, through the new pool"
    assert out["history"].returncode == 0 and "<- running" in out["history"].stdout


def test_sighup_reloads_a_single_router(clean, nats_server, emulator, tmp_path):
    raw = config_dict(nats_server.url, emulator.url)
    routes_file = tmp_path / "routes.yaml"
    routes_file.write_text(yaml.safe_dump({"routes": default_routes()}))
    raw["routes"] = "routes.yaml"
    cfg_path = tmp_path / "router.yaml"
    cfg_path.write_text(yaml.safe_dump(raw))
    log = tmp_path / "router.log"
    factory = RetailEventFactory(seed=63)
    first = [e for e in factory.burst(800) if e.type == "inventory.adjusted"][:100]
    second = [e for e in factory.burst(800) if e.type == "inventory.adjusted"][:100]
    env = dict(os.environ)
    proc = subprocess.Popen([sys.executable, "-m", "router.control.cli", "run", "-c", str(cfg_path)],
                            stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True, env=env)
    try:
        wait_until(lambda: "router running" in log.read_text() or proc.poll() is not None, 120, "the router to start")
        assert proc.poll() is None, log.read_text()[-2000:]
        asyncio.run(publish(nats_server.url, first))
        wait_until(lambda: len(set(asyncio.run(received(emulator.url, "marketplace"))) & {e.key for e in first}) == 100,
                   60, "the first events at the marketplace")
        routes_file.write_text(yaml.safe_dump({"routes": table_b(default_routes())}))
        proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "applied (route table)" in log.read_text(), 60, "the reload to be applied")
        asyncio.run(publish(nats_server.url, second))
        wait_until(lambda: len(set(asyncio.run(received(emulator.url, "carrier"))) & {e.key for e in second}) == 100,
                   60, "the second events at the carrier")
        assert not set(asyncio.run(received(emulator.url, "marketplace"))) & {e.key for e in second}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
    assert proc.returncode == 0, log.read_text()[-3000:]
