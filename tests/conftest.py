"""Real parts for every system test: one nats-server with JetStream, one local Ray, the HTTP
destination emulators in their own process. Started once per session, on loopback."""

from __future__ import annotations

import asyncio
import os
import tempfile
from typing import Any, Callable

import aiohttp
import nats
import pytest
import ray

from router.jetstream.embedded_server import EmbeddedNats
from router.loadtest.sink_emulator import EmulatorProcess


@pytest.fixture(scope="session")
def nats_server():
    with EmbeddedNats() as server:
        yield server


@pytest.fixture(scope="session")
def ray_session():
    os.environ.setdefault("RAY_worker_niceness", "0")  # as `router run` starts a local Ray
    ray.init(namespace="router-tests", include_dashboard=False, object_store_memory=200 * 1024 * 1024,
             logging_level="WARNING")
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def emulator():
    with tempfile.TemporaryDirectory(prefix="router-emulator-") as d:
        proc = EmulatorProcess(d).start()
        yield proc
        proc.stop()


async def _delete_all_streams(url: str) -> None:
    nc = await nats.connect(url)
    js = nc.jetstream()
    for info in await js.streams_info():
        await js.delete_stream(info.config.name)
    await nc.close()


async def _post(url: str, json: Any = None) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.post(url, json=json) as r:
            r.raise_for_status()


@pytest.fixture
def clean(nats_server, emulator):
    """Each system test starts with no streams and emulators that have seen nothing."""
    asyncio.run(_delete_all_streams(nats_server.url))
    asyncio.run(_post(f"{emulator.url}/reset"))


def wait_until(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    import time

    deadline = time.monotonic() + timeout
    while True:
        v = check()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)
