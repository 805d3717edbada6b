"""Running the real router (Ray actors, NATS, HTTP emulators) inside a test, and counting."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable

import aiohttp
import nats

from router.config import Config, parse_config
from router.demo import demo_config_dict
from router.supervisor import RouterStats, Supervisor


def config(nats_url: str, emulator_url: str, change: Callable[[dict], None] | None = None) -> Config:
    raw = demo_config_dict(nats_url, emulator_url)
    for d in raw["destinations"].values():
        d.setdefault("batch", {})["linger"] = "5ms"
    if change:
        change(raw)
    return parse_config(raw, "<test>")


async def publish(url: str, events: list[Any]) -> None:
    nc = await nats.connect(url)
    js = nc.jetstream()
    for i in range(0, len(events), 500):
        await asyncio.gather(*(js.publish(e.subject, e.payload, headers=e.headers) for e in events[i:i + 500]))
    await nc.close()


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
