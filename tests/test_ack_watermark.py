"""Acks by watermark (a source's ``ack: watermark``): one AckAll per settled batch, never past a
message that is not final. The bookkeeping alone, then the real thing: a message taken from the
router's consumer by someone else mid-stream, counted at every destination by idempotency key
(the kill -9 of the router and of a sink actor and the nats-server restart are ``test_crash.py``'s,
run with both ack modes)."""

from __future__ import annotations

import asyncio

import nats
import pytest
from nats.js import api

from router.config import ConfigError, parse_config
from router.control.supervisor import Supervisor
from router.jetstream.ack_watermark import AckWatermark
from router.loadtest.retail_events import RetailEventFactory
from router.control.demo import expected_deliveries

from .harness import assert_exactly, config, config_dict, in_flight_bound, poll_until, publish, wait_complete
from .test_crash import crash_config_acking


class _Msg:
    def __init__(self, sseq: int, dseq: int) -> None:
        self.reply = f"$JS.ACK.S.c.1.{sseq}.{dseq}.0.0"


def _batch(mark: AckWatermark, bid: int, sseqs: list[int], first_dseq: int) -> None:
    dseqs = list(range(first_dseq, first_dseq + len(sseqs)))
    mark.fetched(bid, sseqs, dseqs, [_Msg(s, d) for s, d in zip(sseqs, dseqs)])


def _point(reply: str | None) -> int | None:
    return None if reply is None else int(reply.split(".")[5])


def test_a_batch_settled_before_the_ones_below_it_is_held_then_one_ack_covers_all():
    mark = AckWatermark(next_dseq=1)
    _batch(mark, 1, [1, 2, 3], 1)
    _batch(mark, 2, [4, 5, 6], 4)
    _batch(mark, 3, [7, 8, 9], 7)
    assert _point(mark.settled(3)) is None and _point(mark.settled(2)) is None
    assert len(mark.held()) == 2, "the held batches get progress acks while they wait"
    assert _point(mark.settled(1)) == 9, "the lowest batch settled: one ack for all three"
    assert mark.held() == []


def test_a_nak_holds_the_watermark_until_the_message_comes_back_and_is_settled():
    mark = AckWatermark(next_dseq=1)
    _batch(mark, 1, [1, 2, 3, 4], 1)
    final = [m for m in mark._tops[1][3] if _point(m.reply) != 2]
    mark.given_back(1, [2], final, now=0.0)  # 2 NAKed, the rest of its batch final
    assert _point(mark.settled(1)) is None, "an ack of 4 would ack 2, which the server is sending again"
    assert mark.held() == [final], "no progress ack for 2: it would put its redelivery off"
    _batch(mark, 2, [5, 6], 5)
    assert _point(mark.settled(2)) is None
    _batch(mark, 3, [2, 7], 7)  # 2 again, with a new delivery sequence
    assert _point(mark.settled(3)) == 7
    assert not mark.overdue(now=1e9)


def test_no_progress_ack_for_any_copy_of_a_nakd_message():
    """A copy of 5 delivered again (after an ack_wait ran out) and one NAKed: progress acks on the
    other copy would put the NAKed one's redelivery off for as long as it is held."""
    mark = AckWatermark(next_dseq=1)
    _batch(mark, 1, [5, 6], 1)
    _batch(mark, 2, [5, 7], 3)
    mark.given_back(1, [5], [], now=0.0)
    copies = mark._tops[2][3]
    assert [_point(m.reply) for m in mark.without_awaited(copies)] == [7]


def test_a_nakd_message_that_never_comes_back_stops_every_ack():
    """Deleted from the stream by its limits before its redelivery, say: the watermark would wait
    for it forever. Past its patience the reader reads the consumer again from its ack floor."""
    mark = AckWatermark(next_dseq=1, patience=40.0)
    _batch(mark, 1, [1, 2], 1)
    mark.given_back(1, [1], [], now=100.0)
    mark.settled(1)
    assert not mark.overdue(now=139.0)
    assert mark.overdue(now=141.0) and mark.broken


def test_the_ack_point_leaves_the_delivery_floor_below_every_open_batch():
    """An AckAll sets the server's delivery floor; a later ack or NAK below it is ignored. So a
    redelivery (high delivery seq) is not the point while a batch delivered before it is open."""
    mark = AckWatermark(next_dseq=1)
    _batch(mark, 1, [11, 12], 1)
    mark.given_back(1, [12], [], now=0.0)
    assert mark.settled(1) is None
    _batch(mark, 2, [21, 22], 3)  # open
    _batch(mark, 3, [12, 13], 5)  # 12 again, and 13
    assert _point(mark.settled(3)) == 12, "12 (delivery 2), not 13 (delivery 6): batch 2's acks must count"
    assert _point(mark.settled(2)) == 22


def test_a_delivery_that_never_arrived_stops_every_ack():
    mark = AckWatermark(next_dseq=1)
    _batch(mark, 1, [1, 2], 1)
    assert _point(mark.settled(1)) == 2
    _batch(mark, 2, [4, 5], 4)  # delivery 3 (stream seq 3) lost on the way: the server holds it as pending
    assert mark.broken
    assert mark.settled(2) is None, "an ack of 5 would ack 3, which nobody here has seen"
    inside = AckWatermark(next_dseq=1)
    inside.fetched(1, [1, 2, 4], [1, 2, 4], [_Msg(1, 1), _Msg(2, 2), _Msg(4, 4)])
    assert inside.broken, "a gap inside one batch counts too"


def test_an_ack_the_server_would_ignore_is_not_chosen():
    """The server takes an AckAll only when its delivery sequence is above the last one it took."""
    mark = AckWatermark(next_dseq=1)
    _batch(mark, 1, [10, 11], 1)
    mark.given_back(1, [10], [], now=0.0)
    assert _point(mark.settled(1)) is None
    _batch(mark, 2, [10], 3)  # 10 again (delivery 3)
    assert _point(mark.settled(2)) == 11, "11 (delivery 2) covers 10 (delivery 3) too"
    _batch(mark, 3, [12], 4)
    assert _point(mark.settled(3)) == 12


def test_watermark_acks_need_one_reader_per_consumer():
    def raw(**src):
        d = config_dict("nats://127.0.0.1:4222", "http://127.0.0.1:1")
        d["sources"][0].update(ack="watermark", **src)
        return d

    parse_config(raw(), "<test>")
    with pytest.raises(ConfigError) as err:
        parse_config(raw(ingest_actors=2), "<test>")
    assert "sources[0].ack" in str(err.value) and "ingest_actors: 2" in str(err.value)
    with pytest.raises(ConfigError) as err:
        parse_config(raw(max_ingest_actors=3), "<test>")
    assert "max_ingest_actors: 3" in str(err.value)


def test_an_explicit_consumer_becomes_watermark_from_its_ack_floor(nats_server):
    """The ack policy of a consumer never changes: switching `ack` creates it again where it was,
    so nothing acked in order comes back and nothing unacked is skipped."""
    from router.jetstream.pull_consumer import PullConsumer, stream_seq
    from router.jetstream.streams import ensure_source

    async def scenario():
        nc = await nats.connect(nats_server.url)
        js = nc.jetstream()
        await js.add_stream(name="ACKMODE", subjects=["ackmode.>"])
        for i in range(20):
            await js.publish("ackmode.x", str(i).encode())
        raw = config_dict(nats_server.url, "http://127.0.0.1:1")
        raw["sources"] = [{"name": "s", "stream": "ACKMODE", "subjects": ["ackmode.>"], "durable": "am",
                           "create_stream": False}]
        await ensure_source(js, parse_config(raw, "<test>").sources[0])
        reader = PullConsumer(nc, "ACKMODE", "am")
        await reader.start()
        got = await reader.fetch(10, expires=1.0)
        await reader.ack_many(got[:6])  # 1-6 acked, 7-10 out with a reader that stops here
        await nc.flush()
        await reader.stop()
        await poll_until(lambda: _floor(js, 6), 10, "JetStream to take the six acks")
        raw["sources"][0]["ack"] = "watermark"
        await ensure_source(js, parse_config(raw, "<test>").sources[0])
        info = await js.consumer_info("ACKMODE", "am")
        again = PullConsumer(nc, "ACKMODE", "am")
        await again.start()
        seqs = [stream_seq(m.reply) for m in await again.fetch(20, expires=1.0)]
        await again.stop()
        await js.delete_stream("ACKMODE")
        await nc.close()
        return info.config.ack_policy, seqs

    policy, seqs = asyncio.run(scenario())
    assert policy == api.AckPolicy.ALL
    assert seqs == list(range(7, 21)), seqs


async def _floor(js, n: int) -> bool:
    info = await js.consumer_info("ACKMODE", "am")
    return bool(info.ack_floor) and info.ack_floor.stream_seq == n


def test_a_message_someone_else_pulled_from_the_consumer_is_not_acked_unseen(clean, nats_server, emulator,
                                                                              ray_session):
    """An operator peeks at the router's consumer (`nats consumer next`, no ack) mid-stream: the next
    AckAll of the router would ack that message unseen. Its delivery sequence is missing from what
    the router got, so it reads the consumer again from its ack floor and delivers it."""
    factory = RetailEventFactory(seed=47)
    first, second = list(factory.burst(2_000)), list(factory.burst(6_000))

    async def scenario():
        cfg = config(nats_server.url, emulator.url, crash_config_acking("watermark"))
        src = cfg.sources[0]
        sup = Supervisor(cfg)
        await sup.start()
        nc = await nats.connect(nats_server.url)
        try:
            await publish(nats_server.url, first)
            await wait_complete(nats_server.url, emulator.url, expected_deliveries(cfg, first))
            reader = next(actor for name, actor in sup.ingest if name == src.name)
            await reader.pause.remote()  # so the peek surely gets one: the router's pulls wait meanwhile
            await publish(nats_server.url, second)
            peek = await nc.jetstream().pull_subscribe_bind(src.durable, src.stream)
            taken = await peek.fetch(1, timeout=5)
            await reader.resume.remote()
            assert len(taken) == 1, "the peek took a message off the router's consumer"
            expected = expected_deliveries(cfg, first + second)
            got = await wait_complete(nats_server.url, emulator.url, expected)
        finally:
            await nc.close()
            await sup.stop()
        return cfg, expected, got

    cfg, expected, got = asyncio.run(scenario())
    assert_exactly(expected, got, {d: in_flight_bound(cfg, d) for d in cfg.destinations}, "a peek at the consumer")
