"""Prometheus metrics: the supervisor's latest stats snapshot, exported on ``metrics.port``.

The actors keep plain counters; the supervisor polls them (one call per actor per scrape
interval, never per message) and this collector turns the snapshot into Prometheus series.
"""

from __future__ import annotations

from typing import Iterator

from prometheus_client import start_http_server
from prometheus_client.core import REGISTRY, CounterMetricFamily, GaugeMetricFamily, Metric

from router.control.supervisor import RouterStats

__all__ = ["StatsCollector", "serve_metrics"]

_SOURCE_COUNTERS = {
    "fetched": "messages fetched from the source",
    "acked": "source messages acked (all destinations final)",
    "nacked": "source messages NAKed for redelivery",
    "dead_lettered": "source messages dead-lettered at ingest (undecodable or invalid)",
    "unrouted": "source messages no route matched",
}
_DEST_COUNTERS = {
    "delivered": "records delivered",
    "duplicates": "records suppressed as duplicates by idempotency key",
    "dead_lettered": "records dead-lettered after a permanent failure",
    "parked": "records parked in JetStream while the destination could not take them",
    "replayed": "parked records delivered later",
    "requests": "delivery requests sent",
    "retries": "delivery retries",
    "exhausted_batches": "batches that failed after all retries and could not be parked",
    "breaker_opened": "times the circuit breaker opened",
}
_DEST_GAUGES = {"queued": "records waiting for a batch", "in_flight_keys": "records being delivered",
                "known_keys": "keys in the dedup window", "park_backlog": "parked records not yet replayed",
                "concurrency_limit": "requests allowed in flight (adaptive)"}
_BREAKER = {"closed": 0, "half_open": 1, "open": 2}


class StatsCollector:
    def __init__(self) -> None:
        self.latest: RouterStats | None = None

    def collect(self) -> Iterator[Metric]:
        st = self.latest
        if st is None:
            return
        for field, doc in _SOURCE_COUNTERS.items():
            m = CounterMetricFamily(f"router_source_{field}", doc, labels=["source"])
            for name, s in st.sources.items():
                m.add_metric([name], getattr(s, field))
            yield m
        g = GaugeMetricFamily("router_source_in_flight", "fetched messages not yet acked", labels=["source"])
        for name, s in st.sources.items():
            g.add_metric([name], s.in_flight)
        yield g
        for field, doc in _DEST_COUNTERS.items():
            m = CounterMetricFamily(f"router_destination_{field}", doc, labels=["destination"])
            for name, d in st.destinations.items():
                m.add_metric([name], getattr(d, field))
            yield m
        for field, doc in _DEST_GAUGES.items():
            g = GaugeMetricFamily(f"router_destination_{field}", doc, labels=["destination"])
            for name, d in st.destinations.items():
                g.add_metric([name], getattr(d, field))
            yield g
        g = GaugeMetricFamily("router_destination_breaker_state",
                              "circuit breaker: 0 closed, 1 half-open, 2 open (the worst in the pool)",
                              labels=["destination"])
        for name, d in st.destinations.items():
            g.add_metric([name], _BREAKER.get(d.breaker_state, 0))
        yield g


def serve_metrics(host: str, port: int) -> StatsCollector:
    collector = StatsCollector()
    REGISTRY.register(collector)
    start_http_server(port, addr=host)
    return collector
