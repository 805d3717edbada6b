"""The destination shard's logic through in-memory ports, in simulated time (no I/O, no sleeps).
The same behaviour against real HTTP servers and NATS is in test_pipeline.py and test_isolation.py."""

import asyncio
import hashlib
from collections import Counter

import pytest

from router.config import BatchConfig, Destination, RetryConfig, parse_section
from router.delivery.dedup_index import DedupIndex
from router.delivery.intake import Completion, Intake
from router.delivery.key_hash import key_hash
from router.delivery.lanes import HIGH, LOW, NORMAL, LaneScheduler
from router.delivery.memory_ports import MemoryDeadLetters, MemoryJournal, MemoryParking, ScriptedSink
from router.delivery.shard import DestinationShard, RetriesExhausted, ShardPorts, batch_id
from router.policies.circuit_breaker import CLOSED, HALF_OPEN, OPEN
from router.policies.rate_limit import TokenBucket
from router.policies.retry import RetryPolicy
from router.record_batch import RecordBatch
from router.sinks import Delivered, Permanent, Transient

from .simulated_time import run_simulated


def make(sink=None, *, parking=False, **over):
    """A shard named erp on the running (simulated) loop's clock, with in-memory ports."""
    cfg = parse_section({"kind": "http", "url": "http://127.0.0.1:1/x", "park": parking,
                         "batch": {"max_records": 10, "linger": 0.005}, **over}, Destination)
    clock = asyncio.get_running_loop().time
    ports = ShardPorts(sink or ScriptedSink(), MemoryJournal(), MemoryDeadLetters(),
                       MemoryParking() if parking else None)
    return DestinationShard("erp", cfg, ports, DedupIndex(3600, 1_000_000, clock=clock), clock=clock,
                            rand=lambda: 0.0)


def recs(*keys):
    batch = RecordBatch()
    for k in keys:
        batch.append(k, b'{"idempotency_key":"%s"}' % k.encode(), "src/1")
    return batch


def _columns(batch: RecordBatch) -> list[tuple]:
    return list(zip(batch.keys, batch.payloads, batch.origins, batch.published, batch.order_key_column(),
                    batch.lane_column(), batch.key_hashes(), batch.correlation_id_column()))


@pytest.mark.parametrize("first_plain", [True, False])
def test_a_batch_extended_by_another_holds_both_records_column_by_column(first_plain):
    """Whichever of the two has ordering keys or lanes, every record keeps its own (the columns a
    batch leaves empty read as their defaults). Hashes and correlation ids go along when both have
    them for every record; else the column is dropped and read from the records (as when sent
    without)."""
    plain, rich = RecordBatch(), RecordBatch()
    plain.append("p1", b"1", "s/1", 11, h=key_hash("p1"), correlation_id="c1")
    plain.append("p2", b"2", "s/2", 12, h=key_hash("p2"), correlation_id="c2")
    rich.append("r1", b"3", "s/3", 13, order_key=7, lane=LOW, h=key_hash("r1"), correlation_id="c3")
    rich.append("r2", b"4", "s/4", 14, lane=HIGH, h=key_hash("r2"), correlation_id="c4")
    first, second = (plain, rich) if first_plain else (rich, plain)
    expected = _columns(first) + _columns(second)
    first.extend(second)
    assert _columns(first) == expected
    assert len(first.order_keys) == len(first.lanes) == len(first.hashes) == len(first.correlation_ids) == 4

    without = RecordBatch()
    without.append("w1", b"5", "s/5", 15)
    first.extend(without)
    assert first.correlation_ids == [] and first.hashes == []
    assert first.key_hashes() == [key_hash(k) for k in first.keys]


def test_batches_are_capped_and_each_key_delivered_once():
    async def go():
        sink = ScriptedSink()
        d = make(sink)
        await d.start()
        r = await asyncio.gather(d.submit(recs(*[f"k{i}" for i in range(25)])), d.submit(recs("k3", "k30")))
        await d.close()
        return sink, d, r

    sink, d, (a, b) = run_simulated(go())
    sent = [k for call in sink.calls for k in call]
    assert sorted(sent) == sorted({f"k{i}" for i in range(25)} | {"k30"})
    assert max(len(c) for c in sink.calls) <= 10
    assert a.delivered == 25 and b.duplicates == 1 and b.delivered == 1
    assert len(d.ports.journal.committed) == 26


def test_batches_are_cut_at_max_bytes_and_where_the_route_revision_changes():
    """A batch is at most ``max_bytes`` (a record larger than that goes alone) and all of one route
    table revision; the queue's head is cut whole only when it is both."""
    async def go():
        sink = ScriptedSink(latency=0.5)
        d = make(sink, batch={"max_records": 10, "max_bytes": 200, "linger": 0.0}, concurrency=1)
        await d.start()
        first = asyncio.ensure_future(d.submit(recs("first"), 1))
        await asyncio.sleep(0.1)  # the first request is out: what follows queues behind it
        big = RecordBatch()
        big.append("big", b"x" * 300, "src/1")
        rest = [asyncio.ensure_future(d.submit(recs(*[f"a{i}" for i in range(9)]), 1)),  # 24 bytes each
                asyncio.ensure_future(d.submit(big, 1)),
                asyncio.ensure_future(d.submit(recs("c0"), 1)),
                asyncio.ensure_future(d.submit(recs("d0", "d1"), 2))]
        await asyncio.gather(first, *rest)
        await d.close()
        return sink

    sink = run_simulated(go())
    assert sink.calls == [["first"], [f"a{i}" for i in range(8)], ["a8"], ["big"], ["c0"], ["d0", "d1"]]


def test_a_key_twice_in_one_submit_goes_once():
    async def go():
        sink = ScriptedSink()
        d = make(sink)
        await d.start()
        result = await d.submit(recs("a", "b", "a"))
        await d.close()
        return sink, result

    sink, result = run_simulated(go())
    assert sink.calls == [["a", "b"]]
    assert result.delivered == 2 and result.duplicates == 1


def test_a_partial_batch_waits_for_more_records_only_while_a_batch_is_on_its_way():
    """Nagle's rule: records reaching an idle shard go at once; while a request is out, later
    ones gather (up to ``linger``) and go together when it is answered."""
    async def go():
        sink = ScriptedSink(latency=0.5)
        d = make(sink, batch={"max_records": 100, "linger": 2.0})
        await d.start()
        first = asyncio.ensure_future(d.submit(recs("a", "b")))
        await asyncio.sleep(0.1)
        later = [asyncio.ensure_future(d.submit(recs(f"c{i}"))) for i in range(3)]
        await asyncio.gather(first, *later)
        await d.close()
        return sink

    sink = run_simulated(go())
    assert sink.calls == [["a", "b"], ["c0", "c1", "c2"]]
    assert sink.sent_at[0] == pytest.approx(0.0, abs=1e-6)  # idle: not linger (2 s) later
    assert sink.sent_at[1] == pytest.approx(0.5, abs=1e-6)  # when the first was answered, not at 2.1 s


def test_the_correlation_ids_the_ingest_sent_reach_the_sink_beside_their_records():
    """Each record's id from the batch's column, in the records' order; "" (read it from the
    record) for a batch sent without the column, and for a record replayed from the park."""
    async def go():
        sink = ScriptedSink()
        d = make(sink)
        await d.start()
        with_ids = RecordBatch()
        for k in ("a", "b", "c"):
            with_ids.append(k, b"{}", "src/1", correlation_id=f"cid-{k}" if k != "b" else "")
        await d.submit(with_ids)
        await d.submit(recs("d", "e"))
        await d.close()
        return sink

    sink = run_simulated(go())
    assert sink.calls == [["a", "b", "c"], ["d", "e"]]
    assert sink.correlation_ids == [["cid-a", "", "cid-c"], ["", ""]]


def test_known_keys_are_not_sent_again():
    async def go():
        sink = ScriptedSink()
        d = make(sink)
        await d.start()
        await d.submit(recs("a", "b"))
        r = await d.submit(recs("a", "b", "c"))
        await d.close()
        return sink, r

    sink, r = run_simulated(go())
    assert r.duplicates == 2 and r.delivered == 1
    assert sink.calls[-1] == ["c"]


def test_record_level_rejection_is_isolated_by_splitting():
    def script(keys):
        return Permanent("HTTP 400", 400, "bad sku", True) if "bad" in keys else Delivered()

    async def go():
        d = make(ScriptedSink(script))
        await d.start()
        r = await d.submit(recs("a", "b", "bad", "c", "d"))
        await d.close()
        return d, r

    d, r = run_simulated(go())
    assert r.delivered == 4 and r.dead_lettered == 1
    [letter] = d.ports.dead_letters.letters
    assert letter["key"] == "bad" and letter["status"] == 400 and letter["response"] == "bad sku"


def test_transient_failures_retry_then_give_up_without_journaling():
    async def go():
        sink = ScriptedSink(lambda keys: Transient("HTTP 503"))
        d = make(sink, retry={"max_attempts": 3, "initial_backoff": 0.5, "jitter": 0})
        await d.start()
        with pytest.raises(RetriesExhausted):
            await d.submit(recs("a"))
        await d.close()
        return sink, d

    sink, d = run_simulated(go())
    assert len(sink.calls) == 3 and d.ports.journal.committed == [] and len(d.index) == 0
    assert len(set(sink.batch_ids)) == 1  # a retried batch keeps its Idempotency-Key
    assert sink.sent_at[1] - sink.sent_at[0] == pytest.approx(0.5)  # the backoff, to the microsecond
    assert sink.sent_at[2] - sink.sent_at[1] == pytest.approx(1.0)


def test_a_journal_write_that_fails_is_retried_before_the_record_counts_as_delivered():
    async def go():
        d = make()
        d.ports.journal.fail_next = 3
        await d.start()
        r = await d.submit(recs("a", "b"))
        await d.close()
        return d, r

    d, r = run_simulated(go())
    assert r.delivered == 2 and len(d.ports.journal.committed) == 2 and d.index.contains(key_hash("a"))


def test_new_records_go_straight_to_the_park_while_the_breaker_is_open_or_their_lane_has_parked_ones():
    """Where a submit's records go, checked once for the whole submit when nothing parks (the usual
    case): each reason to park still sends them to the park, not to the queue."""
    async def go():
        d = make(ScriptedSink(), parking=True, circuit_breaker={"consecutive_failures": 1, "open_for": "60s"},
                 buffer={"max_records": 3})
        await d.start()
        loop = asyncio.get_running_loop()

        def place(*keys):
            fresh = d.intake.admit(recs(*keys), 0, Completion(0, loop.create_future()), 0.0).fresh
            queued, parked = d._place(fresh)
            return len(queued), [(reason, len(rs)) for reason, rs in parked]

        usual = place("a", "b", "c")
        over = place("a", "b", "c", "d")
        d.park.lane_backlog[NORMAL] = 1
        behind = place("a")
        d.park.lane_backlog[NORMAL] = 0
        d.breaker.on_failure(0.1, "HTTP 503")
        opened = place("a")
        await d.close()
        return usual, over, behind, opened

    usual, over, behind, opened = run_simulated(go())
    assert usual == (3, [])
    assert over == (0, [("buffer full (3 records)", 4)])
    assert behind == (0, [("behind records parked earlier", 1)])
    assert opened == (0, [("circuit breaker open: 1 failures in a row: HTTP 503", 1)])


def test_breaker_opens_parks_probes_half_open_then_closes_and_replays_everything_once():
    """A 30 s outage: the breaker opens, records park; after `open_for` it probes (half-open) and
    reopens while the destination is still down; once it is back, the probes close it and the
    park is delivered, each key once."""
    down_until = 30.0

    async def go():
        loop = asyncio.get_running_loop()
        sink = ScriptedSink(lambda keys: Transient("HTTP 503") if loop.time() < down_until else Delivered(),
                            latency=0.05)
        d = make(sink, parking=True, retry={"max_attempts": 2, "initial_backoff": 0.1},
                 circuit_breaker={"consecutive_failures": 3, "open_for": "5s", "half_open_probes": 2})
        states = [d.breaker.state]

        async def watch():
            while True:
                if d.breaker.state != states[-1]:
                    states.append(d.breaker.state)
                await asyncio.sleep(0.01)

        watcher = loop.create_task(watch())
        await d.start()
        keys = [f"k{i}" for i in range(2000)]
        submits = []
        for i in range(0, len(keys), 50):  # 50 records every second for 40 s
            submits.append(loop.create_task(d.submit(recs(*keys[i:i + 50]))))
            await asyncio.sleep(1.0)
        results = await asyncio.gather(*submits)
        while d.park.backlog or len(d.ports.parking):
            await asyncio.sleep(0.5)
        await d.close()
        watcher.cancel()
        return sink, d, keys, states, results

    sink, d, keys, states, results = run_simulated(go())
    assert states[:3] == [CLOSED, OPEN, HALF_OPEN], states
    assert states.count(OPEN) >= 2, f"a probe during the outage reopens it: {states}"
    assert states[-1] == CLOSED
    got = Counter(sink.delivered)
    assert set(got) == set(keys) and max(got.values()) == 1, "every key delivered exactly once"
    assert sum(r.parked for r in results) > 0 and d.stats.replayed > 0
    assert d.stats.replayed + sum(r.delivered for r in results) == len(keys)


def test_a_429_with_retry_after_pauses_every_request_of_the_shard():
    answered_429_at = []

    async def go():
        loop = asyncio.get_running_loop()
        calls = [0]

        def script(keys):
            calls[0] += 1
            if calls[0] == 3:
                answered_429_at.append(loop.time())
                return Transient("HTTP 429", retry_after=2.0)
            return Delivered()

        sink = ScriptedSink(script, latency=0.05)
        d = make(sink, concurrency=4, adaptive_concurrency=False)
        await d.start()
        await asyncio.gather(*(d.submit(recs(*[f"k{b}-{i}" for i in range(10)])) for b in range(40)))
        await d.close()
        return sink

    sink = run_simulated(go())
    [t] = answered_429_at
    assert sink.max_in_flight == 4
    inside = [s for s in sink.sent_at if t < s < t + 2.0]
    assert inside == [], f"requests sent during the Retry-After pause: {inside}"
    resumed = [s for s in sink.sent_at if t + 2.0 <= s < t + 2.01]
    assert len(resumed) >= 2, "the other requests of the shard waited for the same pause"


def test_a_park_of_10000_is_replayed_in_order_through_dedup_while_new_records_arrive():
    async def go():
        loop = asyncio.get_running_loop()
        up = [True]
        sink = ScriptedSink(lambda keys: Delivered() if up[0] else Transient("HTTP 503"), latency=0.02)
        d = make(sink, parking=True, concurrency=8, batch={"max_records": 100, "linger": 0.005},
                 retry={"max_attempts": 2, "initial_backoff": 0.1},
                 circuit_breaker={"consecutive_failures": 2, "open_for": "2s", "half_open_probes": 1})
        await d.start()
        await d.submit(recs(*[f"early{i}" for i in range(300)]))  # delivered before the outage
        up[0] = False
        parking = d.ports.parking
        outage = [loop.create_task(d.submit(recs(*[f"p{i}" for i in range(j, j + 500)])))
                  for j in range(0, 10_000, 500)]
        await asyncio.gather(*outage)
        # A replayed dead letter or an operator's re-park: keys the destination already has.
        await parking.park([(f"early{i}", b"{}", "src/1", 0, 0, 1) for i in range(50)], "replay of dead letters")
        parked_order = parking.keys()
        assert len(parked_order) >= 10_000
        up[0] = True
        arriving = []
        for j in range(0, 2000, 100):  # new records keep arriving while the park drains
            arriving.append(loop.create_task(d.submit(recs(*[f"new{i}" for i in range(j, j + 100)]))))
            await asyncio.sleep(0.05)
        await asyncio.gather(*arriving)
        while d.park.backlog or len(parking):
            await asyncio.sleep(0.5)
        await d.close()
        return sink, parked_order

    sink, parked_order = run_simulated(go())
    got = Counter(sink.delivered)
    expected = {f"early{i}" for i in range(300)} | {f"p{i}" for i in range(10_000)} | {f"new{i}" for i in range(2000)}
    assert set(got) == expected, f"lost: {len(expected - set(got))}"
    assert max(got.values()) == 1, "a key delivered twice"
    first_delivery = {k: n for n, k in enumerate(sink.delivered)}
    replayed = [k for k in dict.fromkeys(parked_order) if not k.startswith("early")]
    assert replayed == sorted(replayed, key=first_delivery.__getitem__), "the park was delivered in park order"


def test_a_record_that_waited_past_max_wait_is_parked():
    async def go():
        sink = ScriptedSink(latency=60.0)  # a destination that takes a minute per request
        d = make(sink, parking=True, concurrency=1, adaptive_concurrency=False,
                 buffer={"max_wait": "5s"}, timeout="120s")
        await d.start()
        first = asyncio.get_running_loop().create_task(d.submit(recs(*[f"a{i}" for i in range(10)])))
        await asyncio.sleep(0.1)
        r = await d.submit(recs("late"))  # waits behind the first request, then goes to the park
        now = asyncio.get_running_loop().time()
        await first
        await d.close()
        return d, r, now

    d, r, parked_at = run_simulated(go())
    assert r.parked == 1 and r.delivered == 0
    assert 5.0 <= parked_at < 6.0, "parked soon after max_wait, not when the request ended"
    assert any("waited over 5s" in reason for reason in d.ports.parking.reasons)


def test_batch_id_is_deterministic():
    assert batch_id("erp", ["a", "b"]) == batch_id("erp", ["a", "b"]) != batch_id("erp", ["b", "a"])
    # The same id as earlier releases gave (a batch retried across an upgrade keeps its header).
    assert batch_id("erp", ["a", "b\u00e9"]) == hashlib.blake2b(b"erp\x00a\x00b\xc3\xa9", digest_size=16).hexdigest()
    assert batch_id("erp", []) == hashlib.blake2b(b"erp", digest_size=16).hexdigest()


def test_retry_policy_backoff_and_retry_after():
    p = RetryPolicy(RetryConfig(initial_backoff=0.1, max_backoff=1.0, multiplier=2.0, jitter=0.5), rand=lambda: 1.0)
    assert [round(p.backoff(n), 3) for n in (1, 2, 3, 5, 9)] == [0.1, 0.2, 0.4, 1.0, 1.0]
    assert p.backoff(1, retry_after=2.0) == 2.0  # Retry-After is a floor
    low = RetryPolicy(RetryConfig(initial_backoff=0.1, jitter=0.5), rand=lambda: 0.0)
    assert low.backoff(1) == pytest.approx(0.05)


def test_token_bucket_with_injected_clock():
    now = [0.0]
    tb = TokenBucket(per_second=10, burst=2, clock=lambda: now[0])
    assert tb.try_take() == 0 and tb.try_take() == 0
    assert tb.try_take() == pytest.approx(0.1)
    now[0] += 0.1
    assert tb.try_take() == 0


def test_ack_subjects_give_stream_sequence_and_delivery_count():
    from router.jetstream.pull_consumer import delivery_count, pending_count, seqs_and_published, stream_seq

    v1 = "$JS.ACK.RETAIL_ORDERS.router-orders.3.1042.977.1795440000000000000.12"
    v2 = "$JS.ACK.hub.ACCHASH.RETAIL_ORDERS.router-orders.3.1042.977.1795440000000000000.12.rnd"
    for reply in (v1, v2):
        assert stream_seq(reply) == 1042 and delivery_count(reply) == 3 and pending_count(reply) == 12
    assert seqs_and_published([v1, v2]) == ([1042, 1042], [1795440000000000000] * 2, [977, 977])


# -- ordering keys ---------------------------------------------------------------------------------

STEPS = ("created", "updated", "cancelled")


def order_events(orders: int, seed: int) -> list[tuple[str, int]]:
    """(idempotency key, ordering key hash) for each order's created / updated / cancelled, each order's
    events in sequence, the orders interleaved at random."""
    import random

    rng = random.Random(seed)
    nxt = {o: 0 for o in range(orders)}
    out = []
    while nxt:
        o = rng.choice(list(nxt))
        out.append((f"order-{o}-{STEPS[nxt[o]]}", key_hash(f"order-{o}")))
        nxt[o] += 1
        if nxt[o] == len(STEPS):
            del nxt[o]
    return out


def ordered_recs(events):
    batch = RecordBatch()
    for key, okey in events:
        batch.append(key, b'{"idempotency_key":"%s"}' % key.encode(), "src/1", 0, okey)
    return batch


def sequences(keys):
    seen = {}
    for k in keys:
        _, o, step = k.split("-")
        seen.setdefault(o, []).append(step)
    return seen


def test_each_sequence_arrives_in_order_through_concurrency_retries_retry_after_and_an_outage():
    """2,000 orders x created / updated / cancelled, concurrency 8, requests of random latency, 10% of
    them answered 503, a 429 with Retry-After, and a 10 s outage that opens the breaker and parks."""
    import random

    rng = random.Random(7)
    events = order_events(2000, seed=8)

    async def go():
        loop = asyncio.get_running_loop()
        calls = [0]

        def script(keys):
            calls[0] += 1
            if 10.0 <= loop.time() < 20.0 or rng.random() < 0.10:
                return Transient("HTTP 503")
            if calls[0] == 40:
                return Transient("HTTP 429", retry_after=1.5)
            return Delivered()

        sink = ScriptedSink(script, latency=lambda: rng.uniform(0.005, 0.08))
        d = make(sink, parking=True, concurrency=8, adaptive_concurrency=False,
                 batch={"max_records": 25, "linger": 0.005}, retry={"max_attempts": 3, "initial_backoff": 0.05},
                 circuit_breaker={"consecutive_failures": 4, "open_for": "2s", "half_open_probes": 1})
        await d.start()
        submits = []
        for i in range(0, len(events), 100):  # 100 events every 0.5 s for 30 s
            submits.append(loop.create_task(d.submit(ordered_recs(events[i:i + 100]))))
            await asyncio.sleep(0.5)
        await asyncio.gather(*submits)
        while d.park.backlog or len(d.ports.parking):
            await asyncio.sleep(0.5)
        await d.close()
        return sink, d

    sink, d = run_simulated(go())
    got = Counter(sink.delivered)
    assert set(got) == {k for k, _ in events} and max(got.values()) == 1, "each record once, none lost"
    out_of_order = {o: s for o, s in sequences(sink.delivered).items() if s != list(STEPS)}
    assert not out_of_order, f"{len(out_of_order)} orders out of order, e.g. {list(out_of_order.items())[:3]}"
    assert d.stats.retries > 20 and d.park.parked > 0 and d.stats.replayed > 0, "the faults did happen"


def test_after_a_dead_letter_hold_keeps_the_rest_of_the_sequence_with_it_and_continue_does_not():
    def script(keys):  # the ERP refuses order 1's update, for its content
        return Permanent("HTTP 422", 422, "bad update", True) if "order-1-updated" in keys else Delivered()

    def run(policy):
        async def go():
            sink = ScriptedSink(script)
            d = make(sink, after_dead_letter=policy, batch={"max_records": 1, "linger": 0.001})
            await d.start()
            for step in STEPS:
                await d.submit(ordered_recs([(f"order-1-{step}", key_hash("order-1")),
                                             (f"order-2-{step}", key_hash("order-2"))]))
            await d.close()
            return sink, d

        return run_simulated(go())

    sink, d = run("hold")
    assert sequences(sink.delivered) == {"1": ["created"], "2": list(STEPS)}
    assert [x["key"] for x in d.ports.dead_letters.letters] == ["order-1-updated", "order-1-cancelled"]
    assert d.ports.dead_letters.letters[1]["reason"].startswith("held")
    sink, d = run("continue")
    assert sequences(sink.delivered) == {"1": ["created", "cancelled"], "2": list(STEPS)}


def test_replaying_the_held_dead_letters_in_order_completes_the_sequence():
    """`hold`, then the fix and `router dlq replay` (the dead letters go back through the park, in
    order): the replay is not held again, and the sequence arrives whole and in order."""
    fixed = [False]

    def script(keys):
        if "order-1-updated" in keys and not fixed[0]:
            return Permanent("HTTP 422", 422, "bad update", True)
        return Delivered()

    async def go():
        sink = ScriptedSink(script)
        d = make(sink, parking=True, after_dead_letter="hold", batch={"max_records": 1, "linger": 0.001})
        await d.start()
        okey = key_hash("order-1")
        for step in STEPS:
            await d.submit(ordered_recs([(f"order-1-{step}", okey)]))
        letters = d.ports.dead_letters.letters
        assert [x["key"] for x in letters] == ["order-1-updated", "order-1-cancelled"]
        fixed[0] = True
        await d.ports.parking.park([(x["key"], x["record"], x["origin"], 0, x["order_key"], 1) for x in letters],
                                   "replay of dead letters")
        while len(d.ports.parking):
            await asyncio.sleep(0.5)
        await d.close()
        return sink

    sink = run_simulated(go())
    assert sequences(sink.delivered) == {"1": list(STEPS)}


# -- priority lanes --------------------------------------------------------------------------------

def lane_recs(lane: int, *keys, skus: int = 0):
    """``skus``: the records' ordering keys cycle over this many (0: none)."""
    batch = RecordBatch()
    for k in keys:
        okey = int("".join(c for c in k if c.isdigit())) % skus + 1 if skus else 0
        batch.append(k, b'{"idempotency_key":"%s"}' % k.encode(), "src/1", order_key=okey, lane=lane)
    return batch


def test_lane_scheduler_gives_each_waiting_lane_its_share_and_an_idle_lane_gives_its_share_away():
    sched = LaneScheduler((70, 20, 10))
    picks = Counter()
    for _ in range(1000):
        lane = sched.pick([HIGH, NORMAL, LOW])
        sched.charge(lane, 10)
        picks[lane] += 1
    assert picks[HIGH] == pytest.approx(700, abs=15) and picks[NORMAL] == pytest.approx(200, abs=15)
    assert picks[LOW] == pytest.approx(100, abs=15)
    assert all(sched.pick([LOW]) == LOW for _ in range(3))  # alone, a lane takes every turn


def test_a_park_replay_does_not_wait_for_a_lane_whose_records_go_to_the_park():
    """Queued records of a lane that is behind the park (they will be parked, not sent) do not take
    the turn from a replay: else the replay waits on records that never go to the destination."""
    async def go():
        intake = Intake(DedupIndex(3600, 1000), parse_section({}, BatchConfig))
        group = Completion(50, asyncio.get_running_loop().create_future())
        intake.enqueue(intake.admit(lane_recs(HIGH, *[f"high{i}" for i in range(50)]), 0, group, 0.0).fresh)
        return intake.my_turn(LOW, 10), intake.my_turn(LOW, 10, frozenset({HIGH}))

    competing, behind_the_park = run_simulated(go())
    assert not competing  # queued high records to send go first
    assert behind_the_park


def test_high_goes_before_low_while_the_destination_cannot_keep_up_and_low_keeps_its_share():
    """A destination that takes one batch of 10 per 100 ms; 500 low-priority records queued, then
    100 high: the high records go within a few batches, and low is not stopped meanwhile."""
    async def go():
        sink = ScriptedSink(latency=0.1)
        d = make(sink, concurrency=1, adaptive_concurrency=False)
        await d.start()
        low = asyncio.ensure_future(d.submit(lane_recs(LOW, *[f"low{i}" for i in range(500)])))
        await asyncio.sleep(1.0)  # 10 low batches out
        high = asyncio.ensure_future(d.submit(lane_recs(HIGH, *[f"high{i}" for i in range(100)])))
        await asyncio.gather(low, high)
        st = d.snapshot()
        await d.close()
        return sink, st

    sink, st = run_simulated(go())
    lanes = ["high" if c[0].startswith("high") else "low" for c in sink.calls]
    first_high = lanes.index("high")
    last_high = len(lanes) - 1 - lanes[::-1].index("high")
    window = lanes[first_high:last_high + 1]
    assert len(window) <= 13, f"100 high records took {len(window)} batches to go: {window}"
    assert window.count("low") >= 1, "low kept a share while high went"
    assert sorted(k for c in sink.calls for k in c) == sorted([f"low{i}" for i in range(500)] +
                                                               [f"high{i}" for i in range(100)])
    assert st.lane_delivered == {"low": 500, "high": 100}


def test_low_is_parked_first_when_the_buffer_fills_and_high_still_queues():
    """Buffer of 100: stock updates (low, ordered per sku) fill it, then orders (high) arrive, then more
    stock updates. The orders queue and go first; the later stock updates are parked, behind the
    queued ones of their sku, and replayed in order."""
    async def go():
        sink = ScriptedSink(latency=0.1)
        d = make(sink, parking=True, concurrency=1, adaptive_concurrency=False,
                 buffer={"max_records": 100, "max_wait": 60})
        await d.start()
        tasks = []

        async def hand_over(records):  # as the sink actor does: each once the one before has its place
            admitted = asyncio.get_running_loop().create_future()
            tasks.append(asyncio.ensure_future(d.submit(records, 0, admitted)))
            await asyncio.wait([admitted, tasks[-1]], return_when=asyncio.FIRST_COMPLETED)

        def low(n):
            return lane_recs(LOW, *[f"low{i}" for i in range(n * 50, n * 50 + 50)], skus=10)

        await hand_over(low(0))
        await hand_over(low(1))  # the buffer is full now
        sent_before_high = len(sink.calls)
        await hand_over(lane_recs(HIGH, *[f"high{i}" for i in range(50)]))
        for n in range(2, 6):
            await hand_over(low(n))
        results = await asyncio.gather(*tasks)
        while d.park.backlog:  # the parked low records are replayed
            await asyncio.sleep(0.5)
        st = d.snapshot()
        await d.close()
        return sink, d, results[2], sent_before_high, st

    sink, d, high, sent_before_high, st = run_simulated(go())
    last_high = max(n for n, call in enumerate(sink.calls) if call[0].startswith("high"))
    sent_when_high_done = last_high + 1 - sent_before_high
    assert high.parked == 0 and high.delivered == 50, "high records queue though low filled the buffer"
    assert st.lane_parked.get("low", 0) >= 150 and "high" not in st.lane_parked
    assert sent_when_high_done <= 5 + 2, f"the 50 high records took {sent_when_high_done} batches to go"
    delivered = Counter(sink.delivered)
    assert set(delivered) == {f"low{i}" for i in range(300)} | {f"high{i}" for i in range(50)}
    assert max(delivered.values()) == 1
    for sku in range(10):  # each stock-keeping unit's updates in order, through the park
        lows = [int(k[3:]) for k in sink.delivered if k.startswith("low") and int(k[3:]) % 10 == sku]
        assert lows == sorted(lows), f"sku {sku} out of order: {lows}"
