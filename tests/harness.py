"""Running the real router (Ray actors, NATS, HTTP emulators) inside a test, and counting."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Awaitable, Callable

import aiohttp
import nats

from router.config import Config, parse_config
from router.control.demo import demo_config_dict, read_dead_letters
from router.control.supervisor import RouterStats, Supervisor


def config_dict(nats_url: str, emulator_url: str, change: Callable[[dict], None] | None = None) -> dict:
    raw = demo_config_dict(nats_url, emulator_url)
    for d in raw["destinations"].values():
        d.setdefault("batch", {})["linger"] = "5ms"
    if change:
        change(raw)
    return raw


def config(nats_url: str, emulator_url: str, change: Callable[[dict], None] | None = None) -> Config:
    return parse_config(config_dict(nats_url, emulator_url, change), "<test>")


async def publish(url: str, events: list[Any]) -> None:
    nc = await nats.connect(url)
    js = nc.jetstream()
    for i in range(0, len(events), 500):
        await asyncio.gather(*(js.publish(e.subject, e.payload, headers=e.headers) for e in events[i:i + 500]))
    await nc.close()


async def publish_paced(url: str, events: list[Any], per_second: float, tick: float = 0.1) -> None:
    """Publish at a steady offered rate, as storefronts do, rather than all at once."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    per_tick = max(1, int(per_second * tick))
    start = time.monotonic()
    for n, i in enumerate(range(0, len(events), per_tick)):
        await asyncio.gather(*(js.publish(e.subject, e.payload, headers=e.headers) for e in events[i:i + per_tick]))
        await asyncio.sleep(max(0.0, start + (n + 1) * tick - time.monotonic()))
    await nc.close()


async def emulator_stats(emulator_url: str) -> dict:
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{emulator_url}/stats") as r:
            return await r.json()


async def poll_until(check: Callable[[], Awaitable[Any]], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Await ``check()`` until it returns something truthy (returned); fail after ``timeout`` naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        v = await check()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what} (last seen: {v!r})")
        await asyncio.sleep(interval)


async def wait_final(sup: Supervisor, count: int, timeout: float = 90.0) -> RouterStats:
    """Until ``count`` source messages are acked (every destination final for each)."""
    deadline = time.monotonic() + timeout
    while True:
        st = await sup.stats()
        if sum(s.acked for s in st.sources.values()) >= count:
            return st
        if time.monotonic() > deadline:
            raise AssertionError(f"not final after {timeout:g}s: {st}")
        await asyncio.sleep(0.2)


async def route_through(cfg: Config, nats_url: str, events: list[Any]) -> RouterStats:
    """Start the router, publish ``events``, wait until every one is final, stop (drained)."""
    sup = Supervisor(cfg)
    await sup.start()
    try:
        await publish(nats_url, events)
        return await wait_final(sup, len(events))
    finally:
        await sup.stop()


async def dead_letters(nats_url: str, cfg: Config) -> list[dict[str, str]]:
    nc = await nats.connect(nats_url)
    try:
        return await read_dead_letters(nc.jetstream(), cfg.dead_letter.stream)
    finally:
        await nc.close()


async def received(emulator_url: str, dest: str) -> dict[str, int]:
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{emulator_url}/received/{dest}") as r:
            return await r.json()


async def records(emulator_url: str, dest: str) -> list[dict]:
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{emulator_url}/records/{dest}") as r:
            return await r.json()


async def set_faults(emulator_url: str, dest: str, faults: dict | None) -> None:
    async with aiohttp.ClientSession() as s:
        if faults is None:
            async with s.delete(f"{emulator_url}/faults/{dest}") as r:
                r.raise_for_status()
        else:
            async with s.post(f"{emulator_url}/faults/{dest}", json=faults) as r:
                r.raise_for_status()


async def consumer_state(url: str, stream: str, durable: str) -> tuple[int, int]:
    """(messages not yet delivered, delivered but not acked)"""
    nc = await nats.connect(url)
    info = await nc.jetstream().consumer_info(stream, durable)
    await nc.close()
    return info.num_pending, info.num_ack_pending


async def all_received(emulator_url: str, dests: list[str]) -> dict[str, dict[str, int]]:
    return {d: await received(emulator_url, d) for d in dests}


def in_flight_bound(cfg: Config, dest: str, shards: int | None = None) -> int:
    """Records that can be between a destination's 2xx and the dedup journal at one instant:
    requests in flight per sink actor x records per request x sink actors."""
    d = cfg.destinations[dest]
    return (d.pool_size if shards is None else shards) * d.concurrency * d.batch.max_records


def times_received(got: dict[str, dict[str, int]], expected: dict[str, set[str]], keys) -> dict[str, dict[int, int]]:
    """Per destination, for those of ``keys`` routed there: how many keys arrived n times ({n: keys})."""
    out: dict[str, dict[int, int]] = {}
    for d, routed in expected.items():
        tally: dict[int, int] = {}
        for k in keys:
            if k in routed:
                n = got[d].get(k, 0)
                tally[n] = tally.get(n, 0) + 1
        out[d] = dict(sorted(tally.items()))
    return out


def duplicates_of(got: dict[str, int]) -> int:
    return sum(n - 1 for n in got.values() if n > 1)


def kill_process_tree(pid: int) -> None:
    """kill -9 a process and everything it started (Ray's head processes and workers included)."""
    import psutil

    try:
        root = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    procs = [root, *root.children(recursive=True)]
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=30)


SOURCES = [(s["stream"], s["durable"]) for s in demo_config_dict("", "")["sources"]]


async def drained(url: str) -> bool:
    """Every source consumer has nothing pending and nothing unacked."""
    for stream, durable in SOURCES:
        if await consumer_state(url, stream, durable) != (0, 0):
            return False
    return True


async def wait_complete(url, emulator_url, expected, timeout=180.0):
    """Until each destination has every expected key and the sources are drained."""
    deadline = time.monotonic() + timeout
    while True:
        got = await all_received(emulator_url, list(expected))
        if all(set(got[d]) >= expected[d] for d in expected) and await drained(url):
            return got
        if time.monotonic() > deadline:
            missing = {d: len(expected[d] - set(got[d])) for d in expected}
            raise AssertionError(f"not complete after {timeout:g}s waiting for every expected key and drained "
                                 f"sources; missing per destination: {missing}, sources drained: {await drained(url)}")
        await asyncio.sleep(0.5)


def assert_exactly(expected, got, bounds=None, label=""):
    """Each destination got exactly the expected keys; each once, or at most ``bounds[d]`` repeats."""
    dups = {}
    for d, keys in expected.items():
        assert set(got[d]) == keys, f"{d}: lost {len(keys - set(got[d]))}, unexpected {len(set(got[d]) - keys)}"
        dups[d] = duplicates_of(got[d])
        if bounds is None:
            assert dups[d] == 0, f"{d} received {dups[d]} records twice"
        else:
            assert dups[d] <= bounds[d], f"{d}: {dups[d]} duplicates exceed the in-flight bound {bounds[d]}"
    if label:
        print(f"\n{label}: records received twice per destination: {dups} (in-flight bounds: {bounds})")
    return dups
