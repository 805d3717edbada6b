"""Ingest autoscaling by consumer lag: the decision, in simulated time (one poll every 2 s)."""

from __future__ import annotations

import pytest

from router.config import ConfigError, parse_config
from router.control.demo import demo_config_dict
from router.control.ingest_autoscale import IngestScaler

POLL = 2.0


def _run(scaler: IngestScaler, lag_at, seconds: float, actors: int) -> list[tuple[float, int]]:
    """Poll for ``seconds``; ``lag_at(t, actors)`` is the consumer's pending count. Returns the changes."""
    changes = []
    t = 0.0
    while t <= seconds:
        step = scaler.decide(lag_at(t, actors), actors, t)
        if step:
            actors += step
            changes.append((t, actors))
        t += POLL
    return changes


def test_a_lasting_backlog_adds_actors_one_hold_at_a_time_up_to_the_maximum():
    scaler = IngestScaler(minimum=1, maximum=3, up_pending=1000, down_pending=100, hold=10.0)
    changes = _run(scaler, lambda t, n: 50_000, 60.0, actors=1)
    # One more after 10 s above, the next after another full hold, then none past the maximum.
    assert changes == [(10.0, 2), (20.0, 3)]


def test_a_short_spike_changes_nothing():
    scaler = IngestScaler(minimum=1, maximum=4, up_pending=1000, down_pending=100, hold=10.0)
    spike = lambda t, n: 50_000 if 10 <= t < 18 else 500  # noqa: E731 - 8 s above, shorter than the hold
    assert _run(scaler, spike, 60.0, actors=1) == []


def test_caught_up_removes_actors_down_to_the_minimum_and_the_band_between_holds_still():
    scaler = IngestScaler(minimum=2, maximum=6, up_pending=1000, down_pending=100, hold=10.0)
    assert _run(scaler, lambda t, n: 0, 60.0, actors=5) == [(10.0, 4), (20.0, 3), (30.0, 2)]
    # Between the two thresholds (per actor): no change either way, however long.
    scaler = IngestScaler(minimum=1, maximum=6, up_pending=1000, down_pending=100, hold=10.0)
    assert _run(scaler, lambda t, n: 500 * n, 120.0, actors=3) == []


def test_lag_per_actor_decides_so_the_count_settles_instead_of_flapping():
    """A backlog that 3 actors keep below the threshold and 2 do not: it settles at 3."""
    scaler = IngestScaler(minimum=1, maximum=8, up_pending=1000, down_pending=100, hold=6.0)
    lag = lambda t, n: 2500 if n < 3 else 600 * n  # noqa: E731 - per actor: 2500, 1250, 600
    changes = _run(scaler, lag, 200.0, actors=1)
    assert changes == [(6.0, 2), (12.0, 3)]


def test_a_dip_resets_the_hold():
    scaler = IngestScaler(minimum=1, maximum=4, up_pending=1000, down_pending=100, hold=10.0)
    lag = lambda t, n: 500 if t == 8.0 else 50_000  # noqa: E731 - one poll below the threshold
    assert _run(scaler, lag, 28.0, actors=1) == [(20.0, 2)]  # 10 s after the dip, not 10 s after 0


def test_fixed_sources_have_no_scaler_and_bad_bounds_are_refused():
    raw = demo_config_dict("nats://x:4222", "http://x")
    raw["sources"] = [dict(s) for s in raw["sources"]]  # the demo's list is shared by every test
    cfg = parse_config(raw, "<t>")
    assert all(IngestScaler.for_source(s) is None for s in cfg.sources)
    raw["sources"][0].update(ingest_actors=2, max_ingest_actors=4, scale_up_pending=5000, scale_down_pending=50)
    scaler = IngestScaler.for_source(parse_config(raw, "<t>").sources[0])
    assert (scaler.minimum, scaler.maximum, scaler.up_pending, scaler.down_pending) == (2, 4, 5000, 50)
    raw["sources"][0]["max_ingest_actors"] = 1
    with pytest.raises(ConfigError, match=r"sources\[0\]\.max_ingest_actors: 1 is below ingest_actors"):
        parse_config(raw, "<t>")
    raw["sources"][0].update(max_ingest_actors=4, scale_down_pending=5000)
    with pytest.raises(ConfigError, match=r"sources\[0\]\.scale_down_pending: must be below scale_up_pending"):
        parse_config(raw, "<t>")


def test_the_supervisor_adds_ingest_actors_while_a_source_lags_and_removes_them_after(
        clean, nats_server, emulator, ray_session):
    """A slow destination and small fetches: the shipments consumer lags, actors are added up to the
    maximum, and removed again (each draining its open batches) once it has caught up; nothing lost."""
    import asyncio

    from router.control.demo import expected_deliveries
    from router.control.supervisor import Supervisor
    from router.loadtest.retail_events import RetailEventFactory
    from tests.harness import assert_exactly, config, poll_until, publish, set_faults, wait_complete

    def change(raw):
        raw["sources"] = [dict(s) for s in raw["sources"]]  # the demo's list is shared by every test
        for s in raw["sources"]:
            if s["name"] == "shipments":
                s.update(fetch_batch=20, max_inflight_batches=1, max_ingest_actors=3, scale_up_pending=100,
                         scale_down_pending=20, scale_hold="1s")

    cfg = config(nats_server.url, emulator.url, change)
    events = [e for e in RetailEventFactory(seed=1502).burst(9000) if e.subject.startswith("retail.shipments.")]
    expected = expected_deliveries(cfg, events)

    async def scenario():
        for dest in ("erp", "marketplace", "carrier"):
            await set_faults(emulator.url, dest, {"latency_ms": 150})
        sup = Supervisor(cfg)
        await sup.start()
        counts = []
        try:
            count = lambda: sum(1 for s, _ in sup.ingest if s == "shipments")  # noqa: E731
            await publish(nats_server.url, events)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 90
            while loop.time() < deadline:
                counts.append(count())
                if max(counts) >= 2 and counts[-1] == 1:
                    break
                await asyncio.sleep(0.5)
            got = await wait_complete(nats_server.url, emulator.url, expected, timeout=60)
            async def all_acked():  # the removed actors' counts included: a counter never goes down
                n = (await sup.stats()).sources["shipments"].acked
                return n if n >= len(events) else 0

            acked = await poll_until(all_acked, 20, "every shipments message counted as acked")
            return counts, got, acked
        finally:
            await sup.stop()
            for dest in ("erp", "marketplace", "carrier"):
                await set_faults(emulator.url, dest, None)

    counts, got, acked = asyncio.run(scenario())
    changes = [c for i, c in enumerate(counts) if i == 0 or c != counts[i - 1]]
    print(f"\nshipments ingest actors over time: {changes} ({len(events)} events)")
    # Up by one per hold while the lag lasts (how far depends on how fast this machine drains it: 1 -> 3
    # when measured), then down to the minimum; never above the maximum.
    assert max(counts) >= 2 and counts[-1] == 1 and max(counts) <= 3, changes
    assert acked >= len(events)
    assert_exactly(expected, got)
