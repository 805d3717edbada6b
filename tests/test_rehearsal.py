"""The peak rehearsal: rate profiles, scenario files, report arithmetic, and the CI variant of
``router rehearse`` (about 30 s: locust at a small rate, one ERP outage, the real router)."""

from __future__ import annotations

import asyncio
import json

import nats
import pytest

from router.config import parse_config
from router.loadtest.even_share import EvenShare
from router.loadtest.rate_profile import make_profile
from router.loadtest.rehearsal import Deployment, rehearse, supervisor_stats
from router.loadtest.report import RehearsalData, Sample, build_report
from router.loadtest.scenario import ScenarioError, load_scenario, parse_scenario
from router.control.supervisor import Supervisor

from .harness import config_dict, emulator_stats


# -- rate profiles ------------------------------------------------------------------------------

def test_holiday_peak_rate_over_time():
    p = make_profile("holiday-peak", base_rate=10, duration=100)
    assert p.rate(0) == p.rate(5) == 10  # baseline
    assert p.rate(17.5) == pytest.approx(20)  # half way up the 3x ramp (10 % -> 25 %)
    assert p.rate(40) == pytest.approx(30)  # 3x plateau
    assert p.rate(57) == pytest.approx(100)  # 10x flash sale
    assert p.rate(70) == pytest.approx(30)
    assert p.rate(82.5) == pytest.approx(20)  # decaying
    assert p.rate(95) == pytest.approx(10)
    assert p.rate(101) == 0  # the run is over
    assert max(p.rate(t / 10) for t in range(1000)) == pytest.approx(100)
    assert p.phase_at(57) == "flash sale 10x"
    # the whole run: 10 s x 1 + ramp 2 avg ... integrated numerically
    assert p.total_events() == pytest.approx(10 * (10 * 1 + 15 * 2 + 25 * 3 + 3 * 6.5 + 7 * 10 + 3 * 6.5
                                                   + 12 * 3 + 15 * 2 + 10 * 1), rel=0.01)


def test_steady_rate_and_scaling():
    p = make_profile("steady", base_rate=25, duration=60)
    assert {p.rate(t) for t in (0, 1, 30, 59.9, 60)} == {25}
    assert make_profile("holiday-peak", 50, 10).rate(5.7) == pytest.approx(500)  # scaled by the base rate
    with pytest.raises(ValueError, match="unknown load shape 'spike'"):
        make_profile("spike", 1, 1)


# -- scenario files -----------------------------------------------------------------------------

def _scenario(**extra):
    return {"name": "t", "base_rate": 5, "duration_s": 30, **extra}


def _fault(**extra):
    return {"name": "erp down", "destination": "erp", "start_s": 5, "duration_s": 5, "fault": {"status": 503,
                                                                                          "error_rate": 1}, **extra}


@pytest.mark.parametrize("raw, message", [
    (_scenario(bogus=1), "f.yaml: Object contains unknown field `bogus`"),
    (_scenario(base_rate=0), "f.yaml: base_rate: Expected `float` > 0.0"),
    (_scenario(shape="spike"), "f.yaml: shape: Invalid enum value 'spike'; expected one of: holiday-peak, steady"),
    (_scenario(faults=[_fault(fault={"latency": 5})]), "f.yaml: faults[0].fault: Object contains unknown field `latency`"),
    (_scenario(faults=[_fault(fault={"error_rate": 2})]), "f.yaml: faults[0].fault.error_rate: Expected `float` <= 1.0"),
    (_scenario(faults=[_fault(start_s=28)]), "faults[0] (erp down) ends at 33s, after the load ends"),
    (_scenario(faults=[_fault(), _fault(name="again", start_s=8)]), "faults[1] (again) overlaps faults[0]"),
    (_scenario(faults=[_fault(destination="wms")]), "faults[0].destination: unknown destination `wms`"),
    ([1, 2], "f.yaml: Expected `object`, got `array`"),
])
def test_scenario_errors_name_the_file_and_key(raw, message):
    with pytest.raises(ScenarioError) as err:
        parse_scenario(raw, "f.yaml", ["erp", "marketplace", "carrier"])
    assert message in str(err.value)


def test_shipped_scenarios_load_and_scale(tmp_path):
    for name in ("holiday-peak", "ci"):
        sc = load_scenario(name, ["erp", "marketplace", "carrier"])
        assert sc.faults and sc.slo.p99_ms
    hp = load_scenario("holiday-peak").scaled(base_rate=7, duration_s=360)
    assert hp.base_rate == 7 and hp.duration_s == 360 and hp.faults[0].start_s == 100  # windows stretch 2x
    with pytest.raises(ScenarioError, match="cannot read it .*scenarios shipped: ci, holiday-peak"):
        load_scenario("black-friday")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed")
    with pytest.raises(ScenarioError, match="bad.yaml: not valid YAML"):
        load_scenario(str(bad))


# -- report arithmetic --------------------------------------------------------------------------

def test_report_counts_lost_and_duplicated_and_fails_the_slos():
    sc = parse_scenario(_scenario(slo={"p99_ms": 1000, "drain_s": 5}))
    t0 = 1000.0
    data = RehearsalData(
        scenario=sc, mode="test", started_at=t0, load_ended_at=t0 + 30, finished_at=t0 + 40,
        sent=[(t0 + 1, "a", False), (t0 + 2, "b", False), (t0 + 3, "c", False), (t0 + 4, "d", False),
              (t0 + 5, "a", False), (t0 + 6, "", True)],
        expected={"erp": ["a", "b", "c", "d"], "carrier": ["a"]},
        received={"erp": {"a": 1, "b": 3}, "carrier": {"a": 1, "x": 1}},
        receipts={"erp": {"a": t0 + 1.1, "b": t0 + 4.0}, "carrier": {"a": t0 + 1.05}},
        dead_lettered={"erp": ["d"]}, ingest_dead_letters=1,
        samples=[Sample(t0 + 1, 0), Sample(t0 + 10, 400), Sample(t0 + 12, 200), Sample(t0 + 20, 3)],
        faults=[])
    r = build_report(data)
    erp = r["destinations"]["erp"]
    assert (erp["expected"], erp["delivered"], erp["lost"], erp["duplicated"], erp["dead_lettered"]) == (4, 2, 1, 2, 1)
    assert r["destinations"]["carrier"]["unexpected"] == 1
    assert erp["latency_ms"]["p99"] == pytest.approx(2000.0)  # b: published at +2 s, first receipt at +4 s
    assert r["sent"] == {"events": 6, "unique_keys": 4, "malformed": 1, "resent_duplicates": 1,
                         "ingest_dead_letters": 1}
    assert r["backlog"]["peak"] == 400 and r["backlog"]["drained_after_s"] == 10.0
    assert r["verdict"] == "no-go"
    assert r["failed_slos"] == ["lost == 0", "duplicated == 0", "nothing unexpected delivered",
                                "end-to-end p99 <= 1000 ms", "backlog drained within 5 s"]


# -- the CI variant: locust, one fault window, the real router ----------------------------------

async def _published(url: str, cfg) -> int:
    nc = await nats.connect(url)
    js = nc.jetstream()
    n = sum([(await js.stream_info(s.stream)).state.messages for s in cfg.sources])
    await nc.close()
    return n


async def _received(url: str, dests) -> dict[str, dict[str, int]]:
    import aiohttp

    out = {}
    async with aiohttp.ClientSession() as s:
        for d in dests:
            async with s.get(f"{url}/received/{d}") as r:
                out[d] = await r.json()
    return out


def test_ci_rehearsal_counts_match_the_emulators(nats_server, ray_session, emulator, clean, tmp_path):
    cfg = parse_config(config_dict(nats_server.url, emulator.url), "<test>")
    sc = load_scenario("ci", list(cfg.destinations))
    assert len(sc.faults) == 1 and sc.duration_s <= 30

    async def go():
        sup = Supervisor(cfg)
        await sup.start()
        try:
            dep = Deployment(nats_server.url, cfg, emulator.url, supervisor_stats(sup), mode="test")
            return await rehearse(sc, dep, tmp_path, say=print, progress_every=5)
        finally:
            await sup.stop()

    r = asyncio.run(go())
    got = asyncio.run(_received(emulator.url, cfg.destinations))
    seen = asyncio.run(emulator_stats(emulator.url))
    print(json.dumps({k: v for k, v in r.items() if k != "timeline"}, indent=1))

    assert r["drained"]
    assert r["sent"]["events"] == asyncio.run(_published(nats_server.url, cfg)) > 100  # every acked publish counted
    assert r["sent"]["resent_duplicates"] > 0 and r["sent"]["malformed"] > 0
    assert r["sent"]["ingest_dead_letters"] == r["sent"]["malformed"]
    for d, x in r["destinations"].items():
        assert x["lost"] == 0 and x["duplicated"] == 0, (d, x)
        assert x["delivered"] == len(got[d]) == seen[d]["unique"] == x["expected"], (d, x, seen[d])
        assert x["duplicated"] == seen[d]["duplicates"]
        assert x["latency_ms"]["p50"] is not None
    # the ERP outage was played and the router rode it out (parked, then replayed)
    (fault,) = r["faults"]
    assert fault["destination"] == "erp" and fault["end_s"] - fault["start_s"] == pytest.approx(6, abs=1)
    erp = r["destinations"]["erp"]
    assert erp["parked"] + erp["retries"] > 0
    assert r["backlog"]["peak"] > 0 and r["backlog"]["drained_after_s"] is not None
    html = (tmp_path / "report.html").read_text()
    assert "data:image/png;base64," in html and "<script" not in html and "<link" not in html  # self-contained
    assert json.loads((tmp_path / "report.json").read_text())["verdict"] == r["verdict"]
    assert r["verdict"] == "go", r["failed_slos"]


def test_malformed_and_duplicate_shares_are_spread_evenly():
    # A short run gets its share exactly (random picks gave the CI rehearsal no malformed event
    # about one run in twenty), the picks spaced a period apart, the first half a period in.
    share = EvenShare()
    picks = [i for i in range(300) if share.pick(0.01)]
    assert picks == [49, 149, 249]
    share = EvenShare()
    assert sum(share.pick(0.05) for _ in range(300)) == 15
    # a pick not allowed yet (nothing sent to re-send) is owed, not dropped
    share = EvenShare()
    assert not any(share.pick(0.25, allowed=False) for _ in range(10))
    assert share.pick(0.25) and share.pick(0.25) and share.pick(0.25)


# -- the command's errors, and router stats from an existing deployment's metrics ---------------

def test_rehearse_command_rejects_bad_input_before_starting_anything(tmp_path):
    from click.testing import CliRunner

    from router.control.cli import main

    r = CliRunner().invoke(main, ["rehearse", "-s", "black-friday", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "scenarios shipped: ci, holiday-peak" in r.output
    r = CliRunner().invoke(main, ["rehearse", "--nats-url", "nats://127.0.0.1:1", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "--nats-url needs --config" in r.output
    assert not any(tmp_path.iterdir())  # nothing ran


def test_router_stats_from_prometheus_metrics():
    from aiohttp import web

    from router.loadtest.rehearsal import metrics_stats

    exposition = "\n".join([
        "# TYPE router_destination_parked counter",
        'router_destination_parked_total{destination="erp"} 120.0',
        'router_destination_parked_created{destination="erp"} 1.7e+09',
        'router_destination_replayed_total{destination="erp"} 118.0',
        'router_destination_park_backlog{destination="erp"} 2.0',
        'router_destination_breaker_state{destination="erp"} 2.0',
        'router_destination_breaker_state{destination="carrier"} 0.0',
        'router_source_acked_total{source="orders"} 5.0',
    ])

    async def metrics(_request):
        return web.Response(text=exposition)

    async def go():
        app = web.Application()
        app.add_routes([web.get("/metrics", metrics)])
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        try:
            return await metrics_stats(f"http://127.0.0.1:{port}/metrics")()
        finally:
            await runner.cleanup()

    st = asyncio.run(go())
    assert st["erp"]["parked"] == 120 and st["erp"]["replayed"] == 118 and st["erp"]["park_backlog"] == 2
    assert st["erp"]["breaker_state"] == "open" and st["carrier"]["breaker_state"] == "closed"
