"""A sink actor takes each ingest actor's calls in the order they were made (``CallOrder``), in
simulated time."""

from __future__ import annotations

import asyncio
import random

from router.delivery.call_order import CallOrder

from .simulated_time import run_simulated


def test_calls_arriving_in_any_order_take_their_places_in_sequence():
    async def scenario(rng: random.Random) -> list[int]:
        order, places = CallOrder("erp/0"), []

        async def call(seq: int) -> None:
            await asyncio.sleep(rng.random() * 0.01)  # Ray delivers them in any order
            await order.wait_turn("ingest-1", seq, 0)
            places.append(seq)
            await asyncio.sleep(rng.choice([0, 0.001]))
            order.done("ingest-1", seq)

        await asyncio.gather(*(call(seq) for seq in range(30)))
        return places

    for seed in range(20):
        assert run_simulated(scenario(random.Random(seed))) == list(range(30)), seed


def test_a_missing_call_holds_the_next_for_the_gap_wait_only_while_it_is_not_here(caplog):
    async def scenario() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        order = CallOrder("erp/0", gap_wait=5.0)
        order.done("a", 0)  # call 1 of "a" never comes (lost with a restarted actor)
        await order.wait_turn("a", 2, 1)
        gone_on = loop.time()
        # Call 1 of "b" is here, waiting for call 0, which takes 7 s to come: call 2 waits it out.
        t0 = loop.time()
        two = loop.create_task(order.wait_turn("b", 2, 0))
        one = loop.create_task(order.wait_turn("b", 1, 0))
        await asyncio.sleep(7.0)
        await order.wait_turn("b", 0, 0)
        order.done("b", 0)
        await one
        order.done("b", 1)
        await two
        return gone_on, loop.time() - t0

    gone_on, b_waited = run_simulated(scenario())
    assert gone_on == 5.0 and "call 2 of a waited 5s for call 1" in caplog.text
    assert b_waited == 7.0


def test_a_call_whose_turn_comes_is_woken_even_while_another_waiter_wakes_from_an_older_change():
    """The race behind calls that sat out the whole gap wait with their turn come: call 34, woken
    by an older change, checks its turn (not yet) after call 32 finished, and would clear a shared
    event before call 33, already checked and about to wait, begins to wait on it. The order of the
    steps below is that one on Python 3.11 (``wait_for`` starts the wait a step later)."""

    async def scenario() -> float:
        loop = asyncio.get_running_loop()
        order = CallOrder("erp/0", gap_wait=5.0)
        order.done("s", 31)  # call 32 has its turn
        waiter_34 = loop.create_task(order.wait_turn("s", 34, 32))
        for _ in range(3):
            await asyncio.sleep(0)  # call 34 waits
        order.done("s", 30)  # an older call finishing: call 34 wakes, not yet its turn
        await asyncio.sleep(0)
        t0 = loop.time()
        waiter_33 = loop.create_task(order.wait_turn("s", 33, 32))  # checks: call 32 still open
        loop.call_soon(order.done, "s", 32)  # call 32 takes its place: call 33's turn
        await waiter_33
        waited = loop.time() - t0
        order.done("s", 33)
        await waiter_34
        return waited

    assert run_simulated(scenario()) < 0.001
