"""Circuit breaker and adaptive concurrency with an injected clock: exact, and in microseconds."""

from router.policies.adaptive_concurrency import AdaptiveConcurrency
from router.policies.circuit_breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker
from router.config import CircuitBreakerConfig


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def breaker(**kw):
    clock = Clock()
    return CircuitBreaker(CircuitBreakerConfig(**kw), clock), clock


def test_opens_after_consecutive_failures_and_probes_to_close():
    b, clock = breaker(consecutive_failures=3, open_for=5.0, half_open_probes=2, min_calls=100)
    b.on_failure(0.1)
    b.on_failure(0.1)
    assert b.state == CLOSED
    b.on_failure(0.1, "HTTP 503")
    assert b.state == OPEN and not b.allows_traffic() and "3 failures in a row" in b.last_reason
    clock.t += 4.9
    assert b.state == OPEN and not b.try_probe()
    clock.t += 0.2
    assert b.state == HALF_OPEN
    assert b.try_probe() and b.try_probe() and not b.try_probe()  # limited probes
    b.on_success(0.1)
    assert b.state == HALF_OPEN
    b.on_success(0.1)
    assert b.state == CLOSED and b.allows_traffic()


def test_a_failed_probe_opens_it_again():
    b, clock = breaker(consecutive_failures=1, open_for=1.0)
    b.on_failure(0.1)
    clock.t += 1.0
    assert b.try_probe()
    b.on_failure(0.1, "still down")
    assert b.state == OPEN and b.opened_count == 2


def test_opens_on_failure_rate_over_the_window_only():
    b, clock = breaker(failure_rate=0.5, min_calls=10, window=10.0, consecutive_failures=100)
    for i in range(10):
        (b.on_failure if i % 2 else b.on_success)(0.1)
    assert b.state == OPEN


def test_old_calls_leave_the_window():
    b, clock = breaker(failure_rate=0.5, min_calls=4, window=10.0, consecutive_failures=100)
    for _ in range(3):
        b.on_failure(0.1)
    clock.t += 11
    for _ in range(4):
        b.on_success(0.1)
    b.on_failure(0.1)
    assert b.state == CLOSED  # 1 of 5 in the window


def test_calls_before_it_opened_do_not_count_once_it_closes_again():
    b, clock = breaker(failure_rate=0.5, min_calls=4, window=10.0, consecutive_failures=100, open_for=1.0,
                       half_open_probes=1)
    for _ in range(4):
        b.on_failure(0.1)
    assert b.state == OPEN
    clock.t += 1.0
    assert b.try_probe()
    b.on_success(0.1)
    assert b.state == CLOSED
    for _ in range(3):
        b.on_success(0.1)
    b.on_failure(0.1)
    assert b.state == CLOSED  # 1 of 4 since it closed


def test_opens_on_slow_calls():
    b, _ = breaker(slow_call=1.0, slow_call_rate=0.8, min_calls=5)
    for _ in range(5):
        b.on_success(2.0)
    assert b.state == OPEN and "slower than 1s" in b.last_reason


def test_aimd_grows_by_one_per_window_and_halves_on_pushback():
    clock = Clock()
    c = AdaptiveConcurrency(max_limit=16, initial=2, clock=clock)
    c.in_flight = 2
    for _ in range(2):  # a full window of successes at the limit: +1
        clock.t += 0.05
        c.adjust(0.05, backpressure=False)
    assert c.current == 3
    clock.t += 1
    c.adjust(0.05, backpressure=True)
    assert c.current == 1  # 3 * 0.5 -> 1.5 -> 1
    c.adjust(0.05, backpressure=True)  # same round trip: one decrease only
    assert c.limit == 1.5


def test_aimd_backs_off_when_latency_climbs_and_respects_the_ceiling():
    clock = Clock()
    c = AdaptiveConcurrency(max_limit=4, initial=4, clock=clock)
    c.in_flight = 4
    for _ in range(50):
        clock.t += 0.01
        c.adjust(0.01, backpressure=False)
    assert c.current == 4  # never above the configured ceiling
    clock.t += 1
    c.adjust(0.5, backpressure=False)  # 50x the usual round trip
    assert c.current == 3


def test_fixed_concurrency_when_not_adaptive():
    c = AdaptiveConcurrency(max_limit=6, adaptive=False)
    c.adjust(1.0, backpressure=True)
    assert c.current == 6
