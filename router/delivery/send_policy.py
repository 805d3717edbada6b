"""One attempt at one batch, through the send policy's layers, outermost first:

    Retry-After gate -> rate limit -> circuit breaker -> (concurrency slot) -> sink -> classify

The concurrency slot is taken by the shard when it cuts the batch (so records keep filling the
next batch while requests are in flight) and is held through the batch's retries. The gate
comes before the rate limit: a token taken before a pause would be spent in a burst after it.
The outcome flows back up: the breaker, the adaptive concurrency limit and the gate learn from
it, and ``next_step`` says what the shard does with the batch next.
"""

from __future__ import annotations

import time
from typing import Callable

from router.histogram import BATCH_RECORDS_BUCKETS, REQUEST_BUCKETS, Histogram
from router.policies.adaptive_concurrency import AdaptiveConcurrency
from router.policies.circuit_breaker import CircuitBreaker
from router.policies.rate_limit import TokenBucket
from router.policies.retry import RetryPolicy
from router.policies.retry_after import RetryAfterGate
from router.delivery.ports import Sink
from router.sinks.outcome import Delivered, Outcome, Permanent, Transient

__all__ = ["BREAKER_OPEN", "DEAD_LETTER", "DONE", "GIVE_UP", "PARK", "RETRY", "SPLIT", "SendPolicy"]

# What the shard does with a batch after an attempt.
DONE, SPLIT, DEAD_LETTER, RETRY, PARK, GIVE_UP = "done", "split", "dead_letter", "retry", "park", "give_up"
BREAKER_OPEN = None  # ``attempt`` sent nothing: the breaker does not allow traffic


class SendPolicy:
    def __init__(self, sink: Sink, *, retry: RetryPolicy, breaker: CircuitBreaker,
                 concurrency: AdaptiveConcurrency, gate: RetryAfterGate, limiter: TokenBucket | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.sink = sink
        self.retry = retry
        self.breaker = breaker
        self.concurrency = concurrency
        self.gate = gate
        self.limiter = limiter
        self._clock = clock
        self.requests = 0
        self.request_seconds = Histogram(REQUEST_BUCKETS)  # each request's round trip, for /metrics
        self.batch_records = Histogram(BATCH_RECORDS_BUCKETS)  # records per request

    async def attempt(self, batch_id: str, keys: list[str], payloads: list[bytes], revision: int,
                      correlation_ids: list[str] | None = None, *, respect_breaker: bool) -> Outcome | None:
        """Send once; ``BREAKER_OPEN`` (None) when ``respect_breaker`` and the breaker is not closed."""
        while True:
            await self.gate.wait()
            if self.limiter is not None:
                await self.limiter.take()
            if self.gate.remaining() == 0:  # no Retry-After arrived while we waited for a token
                break
        if respect_breaker and not self.breaker.allows_traffic():
            return BREAKER_OPEN
        self.requests += 1
        started = self._clock()
        outcome = await self.sink.send(batch_id, keys, payloads, revision, correlation_ids)
        rtt = self._clock() - started
        self.request_seconds.observe(rtt)
        self.batch_records.observe(len(keys))
        self._learn(outcome, rtt)
        return outcome

    def _learn(self, outcome: Outcome, rtt: float) -> None:
        if isinstance(outcome, Transient):
            self.breaker.on_failure(rtt, outcome.reason)
            self.concurrency.adjust(rtt, backpressure=True)
            if outcome.retry_after:
                self.gate.hold_for(outcome.retry_after)
        else:  # delivered, or refused for the records' own sake: the destination itself is fine
            self.breaker.on_success(rtt)
            self.concurrency.adjust(rtt, backpressure=False)

    def next_step(self, outcome: Outcome, attempts: int, size: int, *, from_park: bool, can_park: bool) -> str:
        """Classify an outcome into what happens to the batch next."""
        if isinstance(outcome, Delivered):
            return DONE
        if isinstance(outcome, Permanent):
            return SPLIT if outcome.record_level and size > 1 else DEAD_LETTER
        assert isinstance(outcome, Transient)
        exhausted = not self.retry.may_retry(attempts)
        if from_park and (exhausted or not self.breaker.allows_traffic()):
            return GIVE_UP  # it stays parked (the replayer NAKs it) and is tried after the breaker's pause
        if can_park and (exhausted or not self.breaker.allows_traffic()):
            return PARK
        return GIVE_UP if exhausted else RETRY

    def backoff(self, attempts: int, outcome: Transient) -> float:
        return self.retry.backoff(attempts, outcome.retry_after)
