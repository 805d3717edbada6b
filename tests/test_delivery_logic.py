"""The delivery loop's inner logic with a scripted sink and an in-memory journal (no I/O).
The same behaviour against real HTTP servers and NATS is in test_pipeline.py."""

import asyncio

import pytest

from router.config import Destination, RetryConfig, parse_section
from router.delivery.dedup_index import DedupIndex
from router.delivery.shard import DestinationDelivery, RetriesExhausted, batch_id
from router.record_batch import RecordBatch
from router.policies.rate_limit import TokenBucket
from router.policies.retry import RetryPolicy
from router.sinks import Delivered, Permanent, Transient


class ScriptedSink:
    def __init__(self, script=None):
        self.calls: list[list[str]] = []
        self.batch_ids: list[str] = []
        self.script = script or (lambda keys: Delivered())

    async def start(self): ...
    async def close(self): ...

    async def send(self, bid, keys, payloads):
        self.calls.append(list(keys))
        self.batch_ids.append(bid)
        await asyncio.sleep(0)
        return self.script(keys)


class MemoryJournal:
    def __init__(self):
        self.committed: list[int] = []

    async def commit(self, hashes):
        self.committed.extend(hashes)


class MemoryDeadLetters:
    def __init__(self):
        self.letters = []

    def destination_failure(self, destination, key, record, reason, **kw):
        return (key, reason, kw)

    async def publish(self, letters):
        self.letters.extend(letters)


def make(sink, **over):
    cfg = parse_section({"kind": "http", "url": "http://127.0.0.1:1/x", "park": False,
                         "batch": {"max_records": 10, "linger": 0.005}, **over}, Destination)
    d = DestinationDelivery("erp", cfg, sink, MemoryJournal(), DedupIndex(3600, 10_000), MemoryDeadLetters(),
                            retry=RetryPolicy(cfg.retry, rand=lambda: 0.0))
    return d


def recs(*keys):
    batch = RecordBatch()
    for k in keys:
        batch.append(k, b'{"idempotency_key":"%s"}' % k.encode(), "src/1")
    return batch


def run(coro):
    return asyncio.run(coro)


def test_batches_are_capped_and_each_key_delivered_once():
    async def go():
        sink = ScriptedSink()
        d = make(sink)
        await d.start()
        r = await asyncio.gather(d.submit(recs(*[f"k{i}" for i in range(25)])), d.submit(recs("k3", "k30")))
        await d.close()
        return sink, d, r

    sink, d, (a, b) = run(go())
    sent = [k for call in sink.calls for k in call]
    assert sorted(sent) == sorted({f"k{i}" for i in range(25)} | {"k30"})
    assert max(len(c) for c in sink.calls) <= 10
    assert a.delivered == 25 and b.duplicates == 1 and b.delivered == 1
    assert len(d.journal.committed) == 26


def test_known_keys_are_not_sent_again():
    async def go():
        sink = ScriptedSink()
        d = make(sink)
        await d.start()
        await d.submit(recs("a", "b"))
        r = await d.submit(recs("a", "b", "c"))
        await d.close()
        return sink, r

    sink, r = run(go())
    assert r.duplicates == 2 and r.delivered == 1
    assert sink.calls[-1] == ["c"]


def test_record_level_rejection_is_isolated_by_splitting():
    def script(keys):
        return Permanent("HTTP 400", 400, "bad sku", True) if "bad" in keys else Delivered()

    async def go():
        sink = ScriptedSink(script)
        d = make(sink)
        await d.start()
        r = await d.submit(recs("a", "b", "bad", "c", "d"))
        await d.close()
        return d, r

    d, r = run(go())
    assert r.delivered == 4 and r.dead_lettered == 1
    [(key, reason, kw)] = d.dead_letters.letters
    assert key == "bad" and kw["status"] == 400 and kw["response"] == "bad sku"


def test_transient_failures_retry_then_give_up_without_journaling():
    async def go():
        sink = ScriptedSink(lambda keys: Transient("HTTP 503"))
        d = make(sink, retry={"max_attempts": 3, "initial_backoff": 0.001})
        await d.start()
        with pytest.raises(RetriesExhausted):
            await d.submit(recs("a"))
        await d.close()
        return sink, d

    sink, d = run(go())
    assert len(sink.calls) == 3 and d.journal.committed == [] and len(d.index) == 0
    assert len(set(sink.batch_ids)) == 1  # a retried batch keeps its Idempotency-Key


def test_batch_id_is_deterministic():
    assert batch_id("erp", ["a", "b"]) == batch_id("erp", ["a", "b"]) != batch_id("erp", ["b", "a"])


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
    from router.jetstream.pull_consumer import delivery_count, stream_seq

    v1 = "$JS.ACK.RETAIL_ORDERS.router-orders.3.1042.977.1795440000000000000.12"
    v2 = "$JS.ACK.hub.ACCHASH.RETAIL_ORDERS.router-orders.3.1042.977.1795440000000000000.12.rnd"
    for reply in (v1, v2):
        assert stream_seq(reply) == 1042 and delivery_count(reply) == 3
