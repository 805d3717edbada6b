"""Several ingest actors on one source, each key's events in order: partitioned consumers.

The stream's subject transform stores each event under a partition number hashed from the subject
token that carries the key; each partition has its own durable consumer and ingest actor. Real
nats-server, Ray and HTTP emulator for the system tests; the config rules on their own.
"""

from __future__ import annotations

import asyncio
import random
import time

import nats
import orjson
import pytest
from nats.js import api

from router.config import load_config, parse_config
from router.control.metrics import StatsCollector, exported_metric_names
from router.control.reconcile import ReconcileRequest, reconcile
from router.control.status import parse_scrape, render, view
from router.control.supervisor import RouterStats, Supervisor
from router.jetstream.partitions import partition_of, partition_transform, strip_partition, unpartitioned
from router.jetstream.streams import SetupError, ensure_source
from router.loadtest.retail_events import GeneratedEvent

from .harness import config_dict, publish, received
from .test_config import error_of, write_config
from .test_ordering import STEPS, ordered_config

PARTITIONS = 4
SUBJECT = "retail.orders.*.*"  # retail.orders.<channel>.<order_id>: the key is token 4


def partitioned(raw: dict) -> None:
    ordered_config(raw)  # ordering_key [data.order_id] on orders-to-erp; erp: pool 4, concurrency 8
    raw["sources"][0].update(subjects=[SUBJECT], partitions=PARTITIONS, partition_token=4,
                             ingest_actors=PARTITIONS, fetch_batch=50)


def small_batches(raw: dict) -> None:
    """The old consumer's backlog takes a while: long enough for partition actors started beside it to
    overtake it."""
    partitioned(raw)
    raw["sources"][0].update(fetch_batch=10, max_inflight_batches=1)


def eight_partitions(raw: dict) -> None:
    partitioned(raw)
    raw["sources"][0].update(partitions=8, ingest_actors=8)


def order_event(o: int, kind: str) -> GeneratedEvent:
    key = f"o{o}-{kind}"
    body = {"idempotency_key": key, "type": f"order.{kind}", "source": "web-storefront",
            "occurred_at": "2026-11-27T10:00:00Z",
            "data": {"order_id": f"O-{o}", "channel": "web", "currency": "EUR", "total": 10.0,
                     "lines": [{"sku": "SKU-1", "quantity": 1, "unit_price": 10.0}]}}
    return GeneratedEvent(f"retail.orders.web.O-{o}", orjson.dumps(body), key, f"order.{kind}")


def interleaved(orders: range, steps: tuple[str, ...], seed: int) -> list[GeneratedEvent]:
    """Each order's steps in sequence, the orders interleaved at random."""
    rng = random.Random(seed)
    step = {o: 0 for o in orders}
    out = []
    while step:
        o = rng.choice(list(step))
        out.append(order_event(o, steps[step[o]]))
        step[o] += 1
        if step[o] == len(steps):
            del step[o]
    return out


def out_of_order(got: dict[str, int], steps: tuple[str, ...]) -> dict[str, list[str]]:
    seen: dict[str, list[str]] = {}
    for key in got:  # the emulator's order of first receipt
        order, kind = key.split("-")
        seen.setdefault(order, []).append(kind)
    return {o: s for o, s in seen.items() if s != list(steps)}


async def until_received(emulator_url: str, keys: set[str], timeout: float) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while True:
        got = await received(emulator_url, "erp")
        if set(got) >= keys:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"after {timeout:g}s the ERP misses {len(keys - set(got))} of {len(keys)} events")
        await asyncio.sleep(0.2)


async def consumers(url: str, stream: str, names: list[str]) -> dict[str, api.ConsumerInfo]:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        return {n: await js.consumer_info(stream, n) for n in names}
    finally:
        await nc.close()


async def settled_consumers(url: str, stream: str, names: list[str], timeout: float = 10.0) -> dict[str, api.ConsumerInfo]:
    """``consumers`` once none has a message delivered and not acked, or after ``timeout``: a source
    message is acked after its records reach the destinations, so the last acks may still be on
    their way when the last record arrives."""
    deadline = time.monotonic() + timeout
    while True:
        info = await consumers(url, stream, names)
        if all(c.num_ack_pending == 0 for c in info.values()) or time.monotonic() > deadline:
            return info
        await asyncio.sleep(0.2)


async def stored_subjects(url: str, stream: str) -> dict[str, int]:
    nc = await nats.connect(url)
    try:
        return (await nc.jetstream().stream_info(stream, subjects_filter=">")).state.subjects or {}
    finally:
        await nc.close()


# -- system: four partitions, four ingest actors ------------------------------------------------------

def test_four_partition_actors_keep_each_orders_events_in_order(clean, nats_server, emulator, ray_session):
    orders = 1500
    events = interleaved(range(orders), STEPS, seed=5)
    cfg = parse_config(config_dict(nats_server.url, emulator.url, partitioned), "<test>")
    src = cfg.sources[0]
    assert src.consumers == [f"router-orders-p{k}" for k in range(PARTITIONS)]

    async def scenario():
        sup = Supervisor(cfg)
        await sup.start()
        try:
            assert sum(1 for s, _ in sup.ingest if s == "orders") == PARTITIONS
            await publish(nats_server.url, events)
            got = await until_received(emulator.url, {e.key for e in events}, timeout=60)
            info = await settled_consumers(nats_server.url, src.stream, src.consumers)
        finally:
            await sup.stop()
        return got, info, await stored_subjects(nats_server.url, src.stream)

    started = time.monotonic()
    got, info, subjects = asyncio.run(scenario())
    assert set(got) == {e.key for e in events} and max(got.values()) == 1, "every event once"
    wrong = out_of_order(got, STEPS)
    assert not wrong, f"{len(wrong)} orders out of order, e.g. {list(wrong.items())[:3]}"
    # The server put each order in the partition its key token hashes to, every event of it.
    per_partition = [0] * PARTITIONS
    for subject, n in subjects.items():
        k, order = int(subject.split(".")[0]), subject.rsplit(".", 1)[1]
        assert k == partition_of(order, PARTITIONS), subject
        per_partition[k] += n
    assert sum(per_partition) == len(events) and all(per_partition), per_partition
    # Each partition's consumer got (only) its partition's events, and acked them all.
    for k, name in enumerate(src.consumers):
        c = info[name]
        assert c.config.filter_subject == f"{k}.{SUBJECT}"
        assert (c.num_pending, c.num_ack_pending) == (0, 0), (name, c.num_pending, c.num_ack_pending)
        assert c.delivered.consumer_seq >= per_partition[k] > 0, (name, c.delivered, per_partition)
    print(f"\npartitions: {len(events)} events of {orders} orders over {PARTITIONS} partition actors "
          f"{per_partition}, every order in order, in {time.monotonic() - started:.0f}s")


# -- system: a stream from before partitioning ----------------------------------------------------------

def test_messages_stored_before_partitioning_are_finished_first(clean, nats_server, emulator, ray_session):
    """The stream had no transform and the router's old consumer had not read everything: after the
    transform is set, those messages still go before the same orders' newer ones."""
    orders = 600
    before = interleaved(range(orders), STEPS[:1], seed=7)  # created, stored unpartitioned
    between = interleaved(range(orders), STEPS[1:2], seed=8)  # updated, stored before the router starts
    after = interleaved(range(orders), STEPS[2:], seed=9)  # cancelled, while it runs
    cfg = parse_config(config_dict(nats_server.url, emulator.url, small_batches), "<test>")
    src = cfg.sources[0]

    async def scenario():
        nc = await nats.connect(nats_server.url)
        js = nc.jetstream()
        await js.add_stream(api.StreamConfig(name=src.stream, subjects=[SUBJECT]))
        await js.add_consumer(src.stream, api.ConsumerConfig(durable_name=src.durable,
                                                             ack_policy=api.AckPolicy.EXPLICIT))
        await publish(nats_server.url, before)
        with pytest.raises(SetupError, match=r"needs stream RETAIL_ORDERS to have the subject transform "
                                             r"retail\.orders\.\*\.\* -> \{\{partition\(4,2\)\}\}\.retail\.orders\."):
            await Supervisor(cfg).start()
        stream = (await js.stream_info(src.stream)).config
        stream.subject_transform = partition_transform(src)
        await js.update_stream(stream)
        await publish(nats_server.url, between)
        await nc.close()
        sup = Supervisor(cfg)
        await sup.start()
        try:
            await publish(nats_server.url, after)
            keys = {e.key for e in before + between + after}
            got = await until_received(emulator.url, keys, timeout=60)
            legacy = (await settled_consumers(nats_server.url, src.stream, [src.durable]))[src.durable]
        finally:
            await sup.stop()
        nc = await nats.connect(nats_server.url)
        try:  # reconcile reads both: under `durable` and in each partition, by the publisher's subject
            request = ReconcileRequest(since=time.time() - 600, destinations=["erp"])
            report = await reconcile(nc.jetstream(), cfg, request)
        finally:
            await nc.close()
        return got, legacy, report

    got, legacy, report = asyncio.run(scenario())
    assert report.totals["erp"]["delivered"] == 3 * orders and report.events_read == 3 * orders, report.totals
    assert not report.unaccounted and not report.in_flight
    assert max(got.values()) == 1, "none twice"
    wrong = out_of_order(got, STEPS)
    assert not wrong, f"{len(wrong)} orders out of order, e.g. {list(wrong.items())[:3]}"
    assert legacy.config.filter_subject == SUBJECT, "the old consumer reads only what was stored unpartitioned"
    assert (legacy.num_pending, legacy.num_ack_pending) == (0, 0)
    assert legacy.delivered.stream_seq == len(before)


# -- start-up checks on the stream (NATS only) ------------------------------------------------------------

def test_a_stream_partitioned_differently_or_unpartitioned_is_refused_at_start(clean, nats_server, emulator, caplog):
    cfg = parse_config(config_dict(nats_server.url, emulator.url, partitioned), "<test>")
    src = cfg.sources[0]
    plain = parse_config(config_dict(nats_server.url, emulator.url,
                                     lambda raw: raw["sources"][0].update(subjects=[SUBJECT])), "<test>").sources[0]

    async def go():
        nc = await nats.connect(nats_server.url)
        js = nc.jetstream()
        try:
            assert await ensure_source(js, plain) is False
            await js.publish("retail.orders.web.O-1", b"{}")
            with pytest.raises(SetupError, match=r"\(it has: none\); set it, e\.g\. `nats stream edit RETAIL_ORDERS "
                                                 r"--transform-source 'retail\.orders\.\*\.\*' "
                                                 r"--transform-destination"):
                await ensure_source(js, src)
            stream = (await js.stream_info(src.stream)).config
            stream.subject_transform = partition_transform(src)
            await js.update_stream(stream)
            await js.delete_consumer(src.stream, src.durable)
            # What was stored before partitioning, with no consumer to say what the router finished: said.
            assert await ensure_source(js, src) is False
            assert "holds messages stored before it was partitioned (from sequence 1)" in caplog.text
            with pytest.raises(SetupError, match=r"stores its subjects partitioned .*set partitions and "
                                                 r"partition_token"):
                await ensure_source(js, plain)
            eight = parse_config(config_dict(nats_server.url, emulator.url, eight_partitions), "<test>").sources[0]
            with pytest.raises(SetupError, match=r"partitions: 8 needs stream RETAIL_ORDERS to have the subject "
                                                 r"transform .*\{\{partition\(8,2\)\}\}.* \(it has: retail"):
                await ensure_source(js, eight)
        finally:
            await nc.close()

    asyncio.run(go())


# -- unit -------------------------------------------------------------------------------------------------

def test_the_transform_and_subjects():
    cfg = parse_config(config_dict("nats://x", "http://x", partitioned), "<test>")
    src = cfg.sources[0]
    t = partition_transform(src)
    assert (t.src, t.dest) == (SUBJECT, "{{partition(4,2)}}.retail.orders.{{wildcard(1)}}.{{wildcard(2)}}")
    assert partition_transform(cfg.sources[1]) is None
    assert strip_partition("3.retail.orders.web.O-1") == "retail.orders.web.O-1"
    assert unpartitioned(src, "3.retail.orders.web.O-1") == "retail.orders.web.O-1"
    assert unpartitioned(src, "retail.orders.web.O-1") == "retail.orders.web.O-1"  # stored before partitioning
    assert unpartitioned(cfg.sources[1], "3.retail.inventory.x") == "3.retail.inventory.x"
    assert partition_of("O-17", 4) == 1 and partition_of(b"o2", 4) == 0  # FNV-1a, as the server hashes


def test_partition_lag_is_exported_and_shown_by_status():
    st = RouterStats({}, {}, consumer_pending={"orders": 12}, consumer_ack_pending={"orders": 3},
                     partition_pending={"orders": [5, 0, 7, 0]}, partition_ack_pending={"orders": [1, 0, 2, 0]})
    collector = StatsCollector()
    collector.latest = st
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry()
    registry.register(collector)
    samples = parse_scrape(generate_latest(registry).decode())
    lag = {l["partition"]: v for l, v in samples["router_source_partition_consumer_pending"]}
    assert lag == {"0": 5, "1": 0, "2": 7, "3": 0}
    assert "router_source_partition_consumer_ack_pending" in exported_metric_names()
    samples["router_source_acked_total"] = [({"source": "orders"}, 100.0)]
    v = view(samples)
    assert v["sources"]["orders"]["partition_pending"] == [5, 0, 7, 0]
    assert "orders lag by partition: p0 5  p1 0  p2 7  p3 0" in render(v)


# -- config rules -----------------------------------------------------------------------------------------

ORDERED_ROUTES = """
routes:
  - name: orders-to-erp
    match: {subjects: ["retail.orders.>"], types: ["order.*"]}
    destinations: [erp]
    ordering_key: [data.order_id]
"""


def orders_source(**fields):
    def change(raw):
        raw["sources"][0] = {"name": "orders", "stream": "RETAIL_ORDERS", "subjects": ["retail.orders.*"],
                             "durable": "router-orders", **fields}
    return change


@pytest.mark.parametrize("fields, path, message", [
    ({"partitions": 4}, "partition_token", "partitions: 4 needs the subject token that carries the key"),
    ({"partitions": 4, "partition_token": 2}, "partition_token",
     "token 2 of `retail.orders.*` is `orders`; the key's token must be a `*`"),
    ({"partitions": 4, "partition_token": 5}, "partition_token", "token 5 of `retail.orders.*` is past its end"),
    ({"partitions": 4, "partition_token": 3, "subjects": ["retail.orders.*", "retail.refunds.*"]}, "subjects",
     "a partitioned source takes one subject pattern"),
    ({"partitions": 4, "partition_token": 3, "ingest_actors": 2}, "ingest_actors",
     "2, but partitions: 4 runs one ingest actor per partition; set ingest_actors: 4 or leave it out"),
    ({"partitions": 4, "partition_token": 3, "max_ingest_actors": 8}, "max_ingest_actors",
     "a partitioned source runs one ingest actor per partition"),
    ({"partition_token": 3}, "partition_token", "takes effect only with partitions > 1"),
    ({"partitions": 65, "partition_token": 3}, "partitions", "Expected `int` <= 64"),
])
def test_partition_settings_are_checked(tmp_path, fields, path, message):
    e = error_of(write_config(tmp_path, orders_source(**fields)))
    assert e.path == f"sources[0].{path}" and message in e.message, str(e)


@pytest.mark.parametrize("fields, key", [({"ingest_actors": 4}, "ingest_actors"),
                                         ({"max_ingest_actors": 4}, "max_ingest_actors")])
def test_an_ordering_key_takes_several_ingest_actors_only_as_partitions(tmp_path, fields, key):
    e = error_of(write_config(tmp_path, orders_source(**fields), routes_text=ORDERED_ROUTES))
    assert e.file.endswith("router.yaml") and e.path == f"sources[0].{key}"
    assert ("route `orders-to-erp` has an ordering_key" in e.message and "set partitions: 4 and partition_token"
            in e.message), str(e)


@pytest.mark.parametrize("actors", [{}, {"ingest_actors": 4}])
def test_an_ordering_key_with_partitions_loads(tmp_path, actors):
    cfg = load_config(write_config(tmp_path, orders_source(partitions=4, partition_token=3, **actors),
                                   routes_text=ORDERED_ROUTES))
    assert cfg.sources[0].consumers == ["router-orders-p0", "router-orders-p1", "router-orders-p2", "router-orders-p3"]


def test_a_partition_consumer_name_used_by_another_source_is_refused(tmp_path):
    def change(raw):
        orders_source(partitions=2, partition_token=3)(raw)
        raw["sources"][1].update(stream="RETAIL_ORDERS", durable="router-orders-p1")
    e = error_of(write_config(tmp_path, change))
    assert e.path == "sources[1].durable" and "durable `router-orders-p1` on `RETAIL_ORDERS` is used twice" in str(e)
