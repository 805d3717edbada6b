"""Waiting for the actors at start-up: no deadline (a large dedup shard loads slowly), but a line
every so often naming the actors not up yet, and the first start error raised at once."""

from __future__ import annotations

import asyncio
import logging

import pytest

from router.control.supervisor import wait_until_up

from .simulated_time import run_simulated


async def _up_after(seconds: float, error: Exception | None = None) -> None:
    await asyncio.sleep(seconds)
    if error:
        raise error


def test_actors_not_up_yet_are_named_while_the_start_waits(caplog):
    caplog.set_level(logging.WARNING, logger="router.control.supervisor")

    async def go():
        await wait_until_up({"ingest-orders-0": _up_after(1), "sink-erp-0": _up_after(75),
                             "sink-carrier-0": _up_after(45)}, every=30)
        return asyncio.get_running_loop().time()

    assert run_simulated(go()) == pytest.approx(75)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert lines[0].startswith("2 actor(s) not up after 30 s: sink-carrier-0, sink-erp-0.")
    assert lines[1].startswith("1 actor(s) not up after 60 s: sink-erp-0.") and "ray status" in lines[1]


def test_the_first_start_error_is_raised_at_once_and_the_other_waits_end():
    waits = []

    async def go():
        slow = asyncio.ensure_future(_up_after(600))
        waits.append(slow)
        with pytest.raises(ConnectionError, match="no NATS"):
            await wait_until_up({"sink-erp-0": slow, "ingest-orders-0": _up_after(5, ConnectionError("no NATS"))})
        await asyncio.sleep(0)
        return asyncio.get_running_loop().time()

    assert run_simulated(go()) == pytest.approx(5)
    assert waits[0].cancelled()
