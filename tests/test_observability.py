"""Observability: histograms merged across actors, /metrics figures that add up after known
traffic, /readyz following NATS and the actors, the status view, the dashboard's metric names,
workflow SLOs and the JSON logs.

Unit tests first (no I/O); the system tests at the end run real NATS, Ray and the HTTP emulators.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import re
import urllib.error
import urllib.request
from pathlib import Path

import orjson
import pytest
import ray
from prometheus_client import CollectorRegistry, generate_latest

from router.actors.ingest import IngestStats
from router.config import ConfigError, parse_config
from router.control.logging_setup import JsonFormatter
from router.control.metrics import StatsCollector, exported_metric_names, serve_metrics
from router.control.service import Readiness, poll_stats
from router.control.status import parse_scrape, render, run_status, view
from router.control.supervisor import RouterStats, Supervisor, _sum_structs
from router.delivery.intake import DELIVERED, PARKED
from router.delivery.lanes import HIGH, LANES, LOW, NORMAL
from router.delivery.latency import LatencyRecorder
from router.delivery.stats import DestinationStats
from router.histogram import LATENCY_BUCKETS, Histogram
from router.jetstream.connection import connect
from router.jetstream.embedded_server import EmbeddedNats, free_port
from router.loadtest.retail_events import MALFORMED, GeneratedEvent, RetailEventFactory
from router.control.demo import expected_deliveries
from router.policies.circuit_breaker import CircuitBreaker
from router.record_batch import RecordBatch
from router.redaction import install_log_redaction
from router.slo import WorkflowTagger, parse_slos
from router.tracing import traceparent_of, with_traceparent

from .harness import config, config_dict, poll_until, publish, received, records, set_faults, wait_complete

DASHBOARD = Path(__file__).resolve().parent.parent / "helm" / "dashboards" / "router.json"


# -- unit: histograms and their merge across a pool ------------------------------------------------

def test_histogram_buckets_are_prometheus_le_and_merge_adds_up():
    a, b = Histogram((0.1, 1.0)), Histogram((0.1, 1.0))
    a.observe_many([0.05, 0.1, 0.5])  # 0.1 belongs to le=0.1 (inclusive)
    b.observe_many([2.0, 0.5])
    assert a.cumulative() == [("0.1", 2), ("1.0", 3), ("+Inf", 3)]
    a.merge(b)
    assert a.cumulative() == [("0.1", 2), ("1.0", 4), ("+Inf", 5)]
    assert a.count == 5 and a.sum == pytest.approx(3.15)
    with pytest.raises(ValueError, match="different buckets"):
        a.merge(Histogram((1.0,)))


def test_pool_stats_merge_histograms_and_per_workflow_dicts_without_touching_the_inputs():
    shards = []
    for n in range(3):
        st = DestinationStats(delivered=10)
        st.latency.observe(0.02 * (n + 1))
        st.workflow_latency["order.* -> erp"] = Histogram(LATENCY_BUCKETS)
        st.workflow_latency["order.* -> erp"].observe(1.0)
        st.workflow_within["order.* -> erp"] = n
        shards.append(st)
    merged = _sum_structs(shards, DestinationStats)
    assert merged.delivered == 30 and merged.latency.count == 3
    assert merged.workflow_latency["order.* -> erp"].count == 3
    assert merged.workflow_within == {"order.* -> erp": 3}
    assert all(s.latency.count == 1 and s.workflow_latency["order.* -> erp"].count == 1 for s in shards)


# -- unit: end-to-end latency and SLOs -------------------------------------------------------------

class _Item:
    def __init__(self, key, outcome):
        self.key, self.outcome = key, outcome


def test_latency_is_observed_per_delivered_record_and_per_workflow(caplog):
    st = DestinationStats()
    now = 1_000 * 10**9
    rec = LatencyRecorder("erp", st, wall_ns=lambda: now, clock=lambda: 0.0)
    batch = RecordBatch(workflows=[("order.* -> erp", 1.0)])
    for key, age, wf in (("a", 0.5, 0), ("b", 2.0, 0), ("c", 0.01, -1), ("d", 3.0, 0)):
        batch.append(key, b"{}", "orders/1", now - int(age * 1e9))
        batch.workflow.append(wf)
    batch.append("e", b"{}", "orders/2", 0)  # publish time unknown: not observed
    batch.workflow.append(0)
    items = [_Item("a", DELIVERED), _Item("b", DELIVERED), _Item("c", DELIVERED), _Item("d", PARKED), _Item("e", DELIVERED)]
    with caplog.at_level(logging.WARNING, "router.delivery.latency"):
        rec.observe(batch, items)
    assert st.latency.count == 3 and st.latency.sum == pytest.approx(2.51)
    assert st.workflow_latency["order.* -> erp"].count == 2  # d was parked, not delivered now
    assert st.workflow_within == {"order.* -> erp": 1}
    [line] = [r for r in caplog.records if getattr(r, "event", "") == "slo_breach"]
    assert line.workflow == "order.* -> erp" and line.count == 1 and line.destination == "erp"
    # Duplicates leave fewer items than records: matched by key.
    rec.observe(batch, [_Item("c", DELIVERED)])
    assert st.latency.count == 4


@pytest.mark.parametrize("lanes", [None, [HIGH, LOW, NORMAL, LOW, HIGH, LOW, HIGH, LOW, LOW, HIGH, LOW, LOW]])
def test_latency_of_a_plain_batch_lands_in_the_buckets_one_by_one_observing_would(lanes):
    """A submit without duplicates or workflows is observed as arrays: the same buckets as
    observing each delivered record, bounds included (a value on a bound belongs to it), for
    the destination and for each priority lane."""
    now = 1_000 * 10**9
    ages = [0.0, 0.004, 0.005, 0.0051, 0.1, 0.7, 600.0, 601.0, -0.2, 0.3, 0.02]
    outcomes = [DELIVERED] * 9 + [PARKED, DELIVERED]
    lane_of = lanes or [NORMAL] * 12
    batch = RecordBatch()
    for n, age in enumerate(ages):
        batch.append(f"k{n}", b"{}", "orders/1", now - round(age * 1e9), lane=lane_of[n])
    batch.append("unknown", b"{}", "orders/2", 0, lane=lane_of[-1])  # publish time unknown: not observed
    items = [_Item(k, o) for k, o in zip(batch.keys, [*outcomes, DELIVERED])]
    st = DestinationStats()
    LatencyRecorder("erp", st, wall_ns=lambda: now, clock=lambda: 0.0).observe(batch, items)
    expected = Histogram(LATENCY_BUCKETS)
    per_lane = {}
    for age, outcome, lane in zip(ages, outcomes, lane_of):
        if outcome == DELIVERED:
            s = max((now - (now - round(age * 1e9))) / 1e9, 0.0)
            expected.observe(s)
            per_lane.setdefault(LANES[lane], Histogram(LATENCY_BUCKETS)).observe(s)
    for hist, want in ((st.latency, expected), *((st.lane_latency[name], h) for name, h in per_lane.items())):
        assert hist.counts == want.counts and hist.sum == pytest.approx(want.sum)
    assert set(st.lane_latency) == set(per_lane)  # a lane with nothing delivered gets no histogram
    assert expected.count == 10 and expected.counts[0] == 4 and expected.counts[-1] == 1
    assert len(per_lane) == (3 if lanes else 1)


def test_slo_config_is_checked_and_tags_records_by_type_and_destination():
    raw = config_dict("nats://127.0.0.1:1", "http://127.0.0.1:1")
    raw["slo"] = {"inventory.* -> marketplace": "60s", "order.created -> erp": "5m"}
    cfg = parse_config(raw, "router.yaml")
    slos = parse_slos(cfg.slo, list(cfg.destinations), lambda p, m: ValueError(p, m))
    assert [(s.name, s.within) for s in slos] == [("inventory.* -> marketplace", 60.0), ("order.created -> erp", 300.0)]
    tag = WorkflowTagger(slos)
    assert tag.index("inventory.adjusted", "marketplace") == 0
    assert tag.index("inventory.adjusted", "erp") == -1
    assert tag.index("order.created", "erp") == 1 and tag.index("order.cancelled", "erp") == -1
    # The ingest actor does not check (a live revision may have removed the destination): no error.
    assert [s.destination for s in parse_slos({"order.* -> gone": 1.0}, None, lambda p, m: ValueError(p, m))] == ["gone"]
    for bad, why in (({"order.* -> nowhere": "1s"}, "unknown destination `nowhere`"),
                     ({"order.* erp": "1s"}, "expected `<event type pattern> -> <destination>`"),
                     ({"order.* -> erp": "0s"}, "positive duration"),
                     ({"order.* -> erp": "soon"}, "slo")):
        raw["slo"] = bad
        with pytest.raises(ConfigError, match=re.escape(why)) as err:
            parse_config(raw, "router.yaml")
        assert "router.yaml: slo" in str(err.value)


# -- unit: what /metrics exports, the dashboard, the status view ------------------------------------

def _canned_stats() -> RouterStats:
    erp = DestinationStats(delivered=90, duplicates=5, parked=12, replayed=12, dead_lettered=3, park_backlog=4,
                           breaker_state="open")
    erp.latency.observe_many([0.02] * 60 + [0.4] * 39 + [7.0])
    erp.workflow_latency["order.* -> erp"] = Histogram(LATENCY_BUCKETS)
    erp.workflow_latency["order.* -> erp"].observe_many([0.02] * 8 + [9.0] * 2)
    erp.workflow_within["order.* -> erp"] = 8
    return RouterStats({"orders": IngestStats(source="orders", fetched=110, acked=100, dead_lettered=6)},
                       {"erp": erp}, routes_revision=3, consumer_pending={"orders": 250},
                       consumer_ack_pending={"orders": 10})


def _scrape_of(st: RouterStats) -> str:
    registry = CollectorRegistry()
    collector = StatsCollector()
    collector.latest = st
    registry.register(collector)
    return generate_latest(registry).decode()


def test_status_view_from_a_scrape_shows_rates_lag_latency_breaker_and_slos():
    st = _canned_stats()
    earlier = parse_scrape(_scrape_of(st))
    st.sources["orders"].acked = 300
    st.destinations["erp"].delivered = 290
    v = view(parse_scrape(_scrape_of(st)), earlier, 2.0)
    assert v["sources"]["orders"] == {"acked": 300, "acked_per_s": 100.0, "pending": 250, "ack_pending": 10, "invalid": 6}
    erp = v["destinations"]["erp"]
    assert erp["delivered_per_s"] == 100.0 and erp["breaker"] == "open" and erp["parked_backlog"] == 4
    assert erp["latency_p50_s"] == 0.0225 and erp["latency_p99_s"] == 0.5  # interpolated inside the bucket
    assert v["workflows"]["order.* -> erp"] == {"destination": "erp", "within_slo": 0.8, "breaches": 2,
                                                "latency_p99_s": 9.75}
    text = render(v, "http://router:9464")
    assert "routes revision 3" in text
    assert re.search(r"^erp\s+100\s+290\s+5\s+0\.0225\s+0\.5\s+open\s+4\s+12\s+3$", text, re.M), text
    assert re.search(r"^order\.\* -> erp\s+80\.0%\s+2\s+9\.75$", text, re.M), text
    json.dumps(v)  # --json prints it as is


def test_every_metric_the_dashboard_queries_is_one_the_router_exports():
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 15
    named = {n for e in exprs for n in re.findall(r"\b(router_[a-z0-9_]+)", e)}
    exported = exported_metric_names()
    assert named and named <= exported, f"the dashboard queries metrics the router does not export: {named - exported}"
    # Every series the router exports is on the dashboard, one way or another.
    families = {re.sub(r"_(bucket|sum|count|total)$", "", n) for n in exported}
    shown = {re.sub(r"_(bucket|sum|count|total)$", "", n) for n in named}
    assert {"router_destination_latency_seconds", "router_source_consumer_pending", "router_records",
            "router_workflow_slo_within_ratio", "router_destination_breaker_state"} <= shown <= families


# -- unit: logs ------------------------------------------------------------------------------------

def test_breaker_reports_each_transition():
    from router.config import CircuitBreakerConfig

    now = [0.0]
    seen = []
    b = CircuitBreaker(CircuitBreakerConfig(consecutive_failures=2, open_for=5.0, half_open_probes=1),
                       lambda: now[0], on_change=lambda *t: seen.append(t))
    b.on_failure(0.1, "503")
    b.on_failure(0.1, "503")
    now[0] = 6.0
    assert b.try_probe()
    b.on_success(0.1)
    assert [t[:2] for t in seen] == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]
    assert "503" in seen[0][2]


def test_json_log_lines_carry_the_event_fields_and_stay_redacted():
    install_log_redaction(["s3cret-token"])
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("router.test.json")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("erp: %d records dead-lettered: token %s", 3, "s3cret-token",
                       extra={"event": "dead_letter", "destination": "erp", "count": 3,
                              "reason": "HTTP 400 for s3cret-token", "idempotency_key": "o-1"})
    finally:
        logger.removeHandler(handler)
    line = json.loads(out.getvalue())
    assert line["event"] == "dead_letter" and line["destination"] == "erp" and line["count"] == 3
    assert line["idempotency_key"] == "o-1" and line["level"] == "warning"
    assert "s3cret-token" not in out.getvalue() and "3 records dead-lettered" in line["msg"]


# -- system ----------------------------------------------------------------------------------------

def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _status_once(url: str) -> dict:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert run_status(url, once=True, as_json=True, interval=0.2) == 0
    return json.loads(out.getvalue())


def _by_label(samples, name, label):
    return {labels[label]: v for labels, v in samples.get(name, []) if label in labels}


@pytest.mark.timeout(120)
def test_metrics_add_up_per_destination_after_duplicates_malformed_and_a_parked_outage(clean, nats_server, emulator,
                                                                                        ray_session):
    def change(raw):
        erp = raw["destinations"]["erp"]
        erp.update(buffer={"max_wait": "1s"}, circuit_breaker={"open_for": "1s"},
                   retry={"max_attempts": 2, "initial_backoff": "50ms"})
        raw["slo"] = {"inventory.* -> marketplace": "60s", "shipment.* -> carrier": "1ms"}  # that one cannot be met

    cfg = config(nats_server.url, emulator.url, change)
    events = list(RetailEventFactory(seed=81).burst(1500, duplicate_ratio=0.05))
    # A few carry a W3C trace context: it must reach the destinations in their records.
    traced = {}
    for n, e in enumerate(events[:40]):
        if e.key and e.key not in traced and not e.headers:
            traced[e.key] = f"00-{n + 1:032x}-{n + 1:016x}-01"
            events[n] = e._replace(headers={"traceparent": traced[e.key]})
    bad = [GeneratedEvent("retail.orders.web", p, "", "", None, why) for p, why in MALFORMED]
    good = [e for e in events if e.key]
    expected = expected_deliveries(cfg, good)
    port = free_port()

    async def scenario():
        ready = Readiness()
        ready.nc = await connect(cfg.nats, "test-driver")
        server = serve_metrics("127.0.0.1", port, ready)
        sup = Supervisor(cfg)
        try:
            await sup.start()
            ready.started = True
            await set_faults(emulator.url, "erp", {"error_rate": 1.0, "status": 503})  # ERP down: it parks

            async def parked():
                return (await poll_stats(sup, cfg, ready, server)).destinations["erp"].parked

            await publish(nats_server.url, events + bad)
            await poll_until(parked, 30, "ERP records parked during the outage")
            await set_faults(emulator.url, "erp", None)  # back: the park is replayed
            await wait_complete(nats_server.url, emulator.url, expected, timeout=60)

            async def settled():
                st = await poll_stats(sup, cfg, ready, server)
                return st if st.destinations["erp"].park_backlog == 0 and sum(
                    s.acked for s in st.sources.values()) >= len(events) + len(bad) else None

            await poll_until(settled, 30, "every source message acked and the park empty")
            status, text = await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/metrics")
            status_json = await asyncio.to_thread(_status_once, f"http://127.0.0.1:{port}")
            ready_before = await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/readyz")
            # One sink actor gone for good: /readyz names it.
            ray.kill(sup.workers["carrier"][0], no_restart=True)
            await poll_stats(sup, cfg, ready, server)
            ready_after = await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/readyz")
            got = {d: await received(emulator.url, d) for d in cfg.destinations}
            delivered = [r["record"] for d in cfg.destinations for r in await records(emulator.url, d)]
            return status, text, ready_before, ready_after, got, status_json, delivered
        finally:
            await set_faults(emulator.url, "erp", None)
            await sup.stop(timeout=20)
            server.close()
            await ready.nc.close()

    status, text, ready_before, ready_after, got, status_json, delivered = asyncio.run(scenario())
    assert status == 200
    samples = parse_scrape(text)
    outcomes: dict[str, dict[str, float]] = {}
    for labels, v in samples["router_records_total"]:
        outcomes.setdefault(labels["destination"], {})[labels["outcome"]] = v
    routed = {d: 0 for d in cfg.destinations}  # records each destination was sent by ingest
    for e in events:
        for d in cfg.destinations:
            routed[d] += e.key in expected[d]
    for d in cfg.destinations:
        o = outcomes[d]
        # What the emulator counted, exactly ("delivered" includes the records replayed from the park).
        assert o["delivered"] == len(got[d]) == len(expected[d]), (d, o)
        assert o["dead_lettered"] == 0
        # Every record routed to the destination: delivered straight away, a duplicate, or parked (and replayed).
        assert o["delivered"] - o["replayed"] + o["duplicates"] + o["parked"] == routed[d], (d, o, routed[d])
        assert o["parked"] >= o["replayed"]  # a key parked twice (both copies) is replayed once
    assert outcomes["erp"]["parked"] > 0
    with_trace = {r["idempotency_key"]: r.get("traceparent") for r in delivered if r["idempotency_key"] in traced}
    assert with_trace and all(tp == traced[k] for k, tp in with_trace.items()), with_trace
    assert not any("traceparent" in r for r in delivered if r["idempotency_key"] not in traced)
    per_route: dict[str, float] = {}
    for labels, v in samples["router_route_records_total"]:
        per_route[labels["destination"]] = per_route.get(labels["destination"], 0) + v
    assert per_route == routed  # each record reaches a destination by exactly one route
    assert _by_label(samples, "router_source_dead_lettered_total", "source")["orders"] == len(bad)
    assert sum(_by_label(samples, "router_source_acked_total", "source").values()) == len(events) + len(bad)
    assert all(v == 0 for v in _by_label(samples, "router_source_consumer_pending", "source").values())
    assert set(_by_label(samples, "router_source_consumer_pending", "source")) == {s.name for s in cfg.sources}
    # Latency: one observation per record delivered while its source message was held.
    lat_count = _by_label(samples, "router_destination_latency_seconds_count", "destination")
    for d in cfg.destinations:
        assert lat_count[d] == outcomes[d]["delivered"] - outcomes[d]["replayed"], d
    assert _by_label(samples, "router_destination_breaker_state", "destination")["erp"] == 0
    assert _by_label(samples, "router_destination_request_seconds_count", "destination")["erp"] > 0
    wf = {(l["workflow"]): v for l, v in samples["router_workflow_slo_within_ratio"]}
    assert wf["inventory.* -> marketplace"] == 1.0 and wf["shipment.* -> carrier"] == 0.0
    breaches = {l["workflow"]: v for l, v in samples["router_workflow_slo_breaches_total"]}
    assert breaches["shipment.* -> carrier"] > 0 and breaches["inventory.* -> marketplace"] == 0
    # `router status --once --json` reads the same figures.
    assert {d: v["delivered"] for d, v in status_json["destinations"].items()} == {
        d: len(got[d]) for d in cfg.destinations}
    assert status_json["workflows"]["shipment.* -> carrier"]["within_slo"] == 0.0
    assert ready_before == (200, "ready\n")
    assert ready_after[0] == 503 and "sink carrier#0" in ready_after[1], ready_after


@pytest.mark.timeout(60)
def test_readyz_is_503_while_nats_is_down_and_200_when_it_is_back(tmp_path):
    server = EmbeddedNats(store_dir=str(tmp_path / "js")).start()
    port = free_port()
    cfg = config(server.url, "http://127.0.0.1:1")

    async def scenario():
        ready = Readiness()
        ready.nc = await connect(cfg.nats, "test-driver")
        ready.started = True
        metrics = serve_metrics("127.0.0.1", port, ready)
        url = f"http://127.0.0.1:{port}"
        try:
            seen = [await asyncio.to_thread(_get, f"{url}/readyz")]
            await asyncio.to_thread(server.stop)

            async def not_ready():
                return (await asyncio.to_thread(_get, f"{url}/readyz"))[0] == 503

            await poll_until(not_ready, 15, "/readyz 503 while nats-server is stopped")
            seen.append(await asyncio.to_thread(_get, f"{url}/readyz"))
            seen.append(await asyncio.to_thread(_get, f"{url}/healthz"))  # alive all along
            await asyncio.to_thread(server.start)

            async def is_ready():
                return (await asyncio.to_thread(_get, f"{url}/readyz"))[0] == 200

            await poll_until(is_ready, 20, "/readyz 200 once nats-server is back")
            seen.append(await asyncio.to_thread(_get, f"{url}/readyz"))
            return seen
        finally:
            metrics.close()
            await ready.nc.close()

    try:
        seen = asyncio.run(scenario())
    finally:
        server.cleanup()
    assert seen[0] == (200, "ready\n")
    assert seen[1] == (503, "NATS not connected (reconnecting)\n")
    assert seen[2] == (200, "ok\n")
    assert seen[3] == (200, "ready\n")


TRACE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_traceparent_is_read_only_when_well_formed_and_added_to_the_record():
    assert traceparent_of({"traceparent": TRACE}) == TRACE
    for bad in ("", "00-xyz", TRACE.upper(), "ff" + TRACE[2:], TRACE + '"', 'x", "evil": "1'):
        assert traceparent_of({"traceparent": bad}) is None, bad
    assert traceparent_of(None) is None
    assert json.loads(with_traceparent(b'{"a":1}', TRACE)) == {"a": 1, "traceparent": TRACE}
    assert json.loads(with_traceparent(b"{}", TRACE)) == {"traceparent": TRACE}
    assert with_traceparent(b"[1]", TRACE) == b"[1]"


def test_planner_puts_the_source_traceparent_into_every_record_of_that_message():
    from types import SimpleNamespace

    from router.ingest.plan import IngestPlanner
    from router.ingest.routing import RouteTable

    cfg = config("nats://127.0.0.1:1", "http://127.0.0.1:1")
    order = next(e for e in RetailEventFactory(seed=3).burst(50) if e.type == "order.cancelled")
    msgs = [SimpleNamespace(subject=order.subject, data=order.payload, headers={"traceparent": TRACE}),
            SimpleNamespace(subject=order.subject, data=order.payload.replace(order.key.encode(), b"other"),
                            headers=None)]
    plan = IngestPlanner("orders", RouteTable(cfg.route_list), {d: 1 for d in cfg.destinations}).plan(msgs, [1, 2])
    records = [(json.loads(p), i) for batch, idx in plan.work.values() for p, i in zip(batch.payloads, idx)]
    assert {i for _, i in records} == {0, 1} and len(records) >= 2
    assert all((r.get("traceparent") == TRACE) == (i == 0) for r, i in records), records
    # beside each record, the correlation id it carries (for a NATS header), or "" where the sink
    # reads the record for its traceparent too
    for batch, _ in plan.work.values():
        assert len(batch.correlation_ids) == len(batch.payloads)
        for p, cid in zip(batch.payloads, batch.correlation_ids):
            r = json.loads(p)
            assert cid == ("" if "traceparent" in r else r["correlation_id"]) and r["correlation_id"]


def test_nats_destination_messages_carry_the_correlation_id_header(clean, nats_server):
    import nats
    from nats.js import api

    from router.config import Destination, parse_section
    from router.sinks.nats_sink import NatsSink
    from router.sinks.outcome import Delivered
    from router.wire import CORRELATION_ID

    async def scenario():
        nc = await nats.connect(nats_server.url)
        js = nc.jetstream()
        await js.add_stream(name="PARTNER", subjects=["partner.>"])
        sink = NatsSink("partner", parse_section({"kind": "nats", "subject": "partner.orders"}, Destination), nc)
        await sink.start()
        payloads = [orjson.dumps({"idempotency_key": f"k{i}", "correlation_id": f"c-{i}", "type": "order.created"})
                    for i in range(3)]
        payloads[1] = with_traceparent(payloads[1], TRACE)
        # A line break in a correlation id would end the header and start one of the sender's choosing.
        payloads[2] = orjson.dumps({"idempotency_key": "k2", "correlation_id": "c-2\r\nX-Injected: 1"})
        outcome = await sink.send("batch-1", ["k0", "k1", "k2"], payloads, revision=4)
        # ids the ingest sent beside the records are used as they are ("": read from the record)
        given = await sink.send("batch-2", ["k3", "k4", "k5"], payloads, revision=4,
                                correlation_ids=["given-3", "", "given\r\nX-Injected: 5"])
        sub = await js.pull_subscribe("partner.orders", stream="PARTNER",
                                      config=api.ConsumerConfig(ack_policy=api.AckPolicy.NONE))
        msgs = await sub.fetch(6, timeout=5)
        await sink.close()
        await nc.close()
        return outcome, given, msgs

    outcome, given, msgs = asyncio.run(scenario())
    assert isinstance(outcome, Delivered) and isinstance(given, Delivered)
    assert [m.headers[CORRELATION_ID] for m in msgs] == ["c-0", "c-1", "c-2X-Injected: 1",
                                                         "given-3", "c-1", "givenX-Injected: 5"]
    assert not any("X-Injected" in m.headers for m in msgs)
    assert [m.headers.get("traceparent") for m in msgs] == [None, TRACE, None, None, TRACE, None]
    assert [m.headers["Nats-Msg-Id"] for m in msgs] == ["k0", "k1", "k2", "k3", "k4", "k5"]


def test_nats_destination_says_why_the_stream_refused(clean, nats_server):
    """The PubAck paths other than success: no stream on the subject (a 503 status, with headers) is
    transient; a stream that refuses the message (an error PubAck, without headers) names its code."""
    import nats

    from router.config import Destination, parse_section
    from router.sinks.nats_sink import NatsSink
    from router.sinks.outcome import Delivered, Permanent, Transient

    async def scenario():
        nc = await nats.connect(nats_server.url)
        js = nc.jetstream()
        await js.add_stream(name="SMALL", subjects=["small.>"], max_msg_size=64)
        out = []
        for subject in ("nowhere.orders", "small.orders"):
            sink = NatsSink("partner", parse_section({"kind": "nats", "subject": subject, "timeout": 5}, Destination), nc)
            await sink.start()
            big = orjson.dumps({"idempotency_key": "k1", "correlation_id": "c-1", "pad": "x" * 200})
            out.append(await sink.send("batch-1", ["k1"], [big]))
            await sink.close()
        sink = NatsSink("partner", parse_section({"kind": "nats", "subject": "small.orders"}, Destination), nc)
        await sink.start()
        out.append(await sink.send("batch-2", ["k2"], [b"{}"]))  # fits: the same publisher goes on
        await sink.close()
        await nc.close()
        return out

    nowhere, refused, fits = asyncio.run(scenario())
    assert isinstance(nowhere, Transient) and "no stream answered" in nowhere.reason, nowhere
    assert isinstance(refused, Permanent) and refused.status and "JetStream" in refused.reason, refused
    assert isinstance(fits, Delivered)


def test_an_ack_that_is_not_a_jetstream_answer_fails_the_publish_at_once():
    """Whatever comes back on the ack inbox counts for its message: an answer that cannot be read
    fails the call (transient) instead of leaving it to time out."""
    from router.jetstream.pipelined_publisher import PipelinedPublisher, PublishError, _Pending

    async def scenario():
        pub = PipelinedPublisher(nc=None)
        out = []
        for answer in (b"not json", b'["a list"]', b'{"error": "a string"}'):
            pending = pub._pending[b"_INBOX.x.1"] = _Pending(1, asyncio.get_running_loop().create_future())
            pub._on_plain_ack(b"_INBOX.x.1", answer)
            out.append((pending.future.done(), pending.error))
        return out

    for done, error in asyncio.run(scenario()):
        assert done and isinstance(error, PublishError) and error.transient, error


def test_shard_logs_breaker_dead_letters_and_parking_with_their_fields(caplog):
    from router.config import Destination, parse_section
    from router.delivery.dedup_index import DedupIndex
    from router.delivery.memory_ports import MemoryDeadLetters, MemoryJournal, MemoryParking, ScriptedSink
    from router.delivery.shard import DestinationShard, ShardPorts
    from router.sinks import Delivered, Permanent, Transient

    from .simulated_time import run_simulated

    down = {"erp": True}

    def script(keys):
        if "bad" in keys:
            return Permanent("HTTP 400", 400, "bad sku", False)
        return Transient("HTTP 503 from erp") if down["erp"] else Delivered()

    def record(key):
        return orjson.dumps({"idempotency_key": key, "correlation_id": f"corr-{key}"})

    async def go():
        cfg = parse_section({"kind": "http", "url": "http://127.0.0.1:1/x", "park": True,
                             "batch": {"max_records": 10, "linger": 0.005},
                             "retry": {"max_attempts": 2, "initial_backoff": "10ms"},
                             "circuit_breaker": {"consecutive_failures": 2, "open_for": "1s", "half_open_probes": 1}},
                            Destination)
        clock = asyncio.get_running_loop().time
        shard = DestinationShard("erp", cfg, ShardPorts(ScriptedSink(script), MemoryJournal(), MemoryDeadLetters(),
                                                        MemoryParking()),
                                 DedupIndex(3600, 1000, clock=clock), clock=clock, rand=lambda: 0.0)
        await shard.start()
        batch = RecordBatch()
        for k in ("a", "b", "c"):
            batch.append(k, record(k), "orders/1")
        await shard.submit(batch)  # ERP down: retried, the breaker opens, the records park
        shard.snapshot()  # the poll that logs parking
        down["erp"] = False
        await asyncio.sleep(3)  # half-open probe succeeds, the park is replayed
        bad = RecordBatch()
        bad.append("bad", record("bad"), "orders/2")
        await shard.submit(bad)
        st = shard.snapshot()
        await shard.close()
        return st

    with caplog.at_level(logging.INFO):
        st = run_simulated(go())
    events = [r for r in caplog.records if hasattr(r, "event")]
    kinds = [r.event for r in events]
    transitions = [(r.from_state, r.to_state) for r in events if r.event == "breaker"]
    assert transitions[:3] == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")], transitions
    assert "HTTP 503" in next(r for r in events if r.event == "breaker").reason
    parked = next(r for r in events if r.event == "park")
    assert parked.destination == "erp" and parked.count == 3
    assert "replay" in kinds
    [dead] = [r for r in events if r.event == "dead_letter"]
    assert (dead.destination, dead.count, dead.status, dead.idempotency_key, dead.correlation_id) == (
        "erp", 1, 400, "bad", "corr-bad")
    assert st.request_seconds.count == st.requests and st.batch_records.count == st.requests
    assert all(r.levelno > logging.INFO or r.event in ("breaker", "replay") for r in events)
