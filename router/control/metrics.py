"""Prometheus metrics and health, on one HTTP server at ``metrics.host:metrics.port``.

The actors keep plain counters; the supervisor polls them (one call per actor per scrape
interval, never per message) and this collector turns the snapshot into Prometheus series.

``GET /healthz``: 200 while the process is alive. ``GET /readyz``: 200 when the router can do
its work, else 503 with the reason as text (for a Kubernetes readiness probe or a load
balancer). Every endpoint only reads; the server binds to loopback unless ``metrics.host``
says otherwise.
"""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Iterator

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import REGISTRY, CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from router.control.supervisor import RouterStats
from router.histogram import Histogram

__all__ = ["exported_metric_names", "MetricsServer", "StatsCollector", "serve_metrics"]

Readiness = Callable[[], "str | None"]  # None when ready, else why not

_SOURCE_COUNTERS = {
    "fetched": "messages fetched from the source",
    "acked": "source messages acked (all destinations final)",
    "nacked": "source messages NAKed for redelivery",
    "dead_lettered": "source messages dead-lettered at ingest (undecodable or invalid)",
    "unrouted": "source messages no route matched",
}
# ack: watermark: a watermark that does not move shows here first (a NAKed message holds back the acks
# of every later one until it is settled).
_WATERMARK_GAUGES = {
    "watermark_held": "settled messages not acked yet: an earlier one is still open or NAKed (ack: watermark)",
    "watermark_awaited": "NAKed messages not delivered again yet, holding the watermark (ack: watermark)",
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
# Every record that reached a destination shard ends in one of these (router_records_total{outcome}).
_OUTCOMES = ("delivered", "duplicates", "parked", "replayed", "dead_lettered")
_DEST_HISTOGRAMS = {
    "latency": ("router_destination_latency_seconds",
                "end-to-end latency: JetStream publish of the source message to the destination's ack"),
    "request_seconds": ("router_destination_request_seconds", "one delivery request's round trip"),
    "batch_records": ("router_destination_batch_records", "records per delivery request"),
}


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
        for field, doc in _WATERMARK_GAUGES.items():
            g = GaugeMetricFamily(f"router_source_{field}", doc, labels=["source"])
            for name, s in st.sources.items():
                g.add_metric([name], getattr(s, field))
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
        yield from _overview(st)
        yield from _lanes(st)
        m = CounterMetricFamily("router_route_records", "records each route sent to a destination (duplicates included)",
                                labels=["source", "route", "destination"])
        for name, s in st.sources.items():
            for key, n in s.routed.items():
                route, _, dest = key.rpartition("/")
                m.add_metric([name, route, dest], n)
        yield m


def _histogram(name: str, doc: str, labels: list[str], series: list[tuple[list[str], Histogram]]) -> Metric:
    m = HistogramMetricFamily(name, doc, labels=labels)
    for values, h in series:
        m.add_metric(values, h.cumulative(), h.sum)
    return m


def _lanes(st: RouterStats) -> Iterator[Metric]:
    """Per priority lane: what waits, what got through, what was parked, and how long it took."""
    m = CounterMetricFamily("router_lane_records", "records per destination and priority lane by outcome "
                            "(delivered, parked)", labels=["destination", "lane", "outcome"])
    for name, d in st.destinations.items():
        for outcome, counts in (("delivered", d.lane_delivered), ("parked", d.lane_parked)):
            for lane, n in counts.items():
                m.add_metric([name, lane, outcome], n)
    yield m
    g = GaugeMetricFamily("router_lane_queued", "records waiting for a batch, per priority lane",
                          labels=["destination", "lane"])
    for name, d in st.destinations.items():
        for lane, n in d.lane_queued.items():
            g.add_metric([name, lane], n)
    yield g
    yield _histogram("router_lane_latency_seconds", "end-to-end latency per destination and priority lane",
                     ["destination", "lane"],
                     [([name, lane], h) for name, d in st.destinations.items() for lane, h in d.lane_latency.items()])


def _overview(st: RouterStats) -> Iterator[Metric]:
    """The figures an SRE reads first: outcomes, latency, lag, per workflow SLOs, the router itself."""
    m = CounterMetricFamily("router_records", "records per destination by outcome "
                            "(delivered, duplicates, parked, replayed, dead_lettered)", labels=["destination", "outcome"])
    for name, d in st.destinations.items():
        for outcome in _OUTCOMES:
            m.add_metric([name, outcome], getattr(d, outcome))
    yield m
    for field, (metric, doc) in _DEST_HISTOGRAMS.items():
        yield _histogram(metric, doc, ["destination"], [([n], getattr(d, field)) for n, d in st.destinations.items()])
    for field, metric, doc in (
            ("consumer_pending", "router_source_consumer_pending", "stream messages the durable consumer has not delivered yet (lag)"),
            ("consumer_ack_pending", "router_source_consumer_ack_pending", "delivered to the router, not acked yet")):
        g = GaugeMetricFamily(metric, doc, labels=["source"])
        for name, v in getattr(st, field).items():
            g.add_metric([name], v)
        yield g
    for field, metric, doc in (
            ("partition_pending", "router_source_partition_consumer_pending",
             "per partition of a partitioned source: messages its consumer has not delivered yet (lag)"),
            ("partition_ack_pending", "router_source_partition_consumer_ack_pending",
             "per partition of a partitioned source: delivered to the router, not acked yet")):
        g = GaugeMetricFamily(metric, doc, labels=["source", "partition"])
        for name, values in getattr(st, field).items():
            for k, v in enumerate(values):
                g.add_metric([name, str(k)], v)
        yield g
    slos = [(w, dest, h, d.workflow_within.get(w, 0)) for dest, d in st.destinations.items()
            for w, h in d.workflow_latency.items()]
    yield _histogram("router_workflow_latency_seconds", "end-to-end latency per workflow with an SLO",
                     ["workflow", "destination"], [([w, dest], h) for w, dest, h, _ in slos])
    g = GaugeMetricFamily("router_workflow_slo_within_ratio", "share of the workflow's records delivered within its SLO",
                          labels=["workflow", "destination"])
    for w, dest, h, within in slos:
        g.add_metric([w, dest], within / h.count if h.count else 1.0)
    yield g
    c = CounterMetricFamily("router_workflow_slo_breaches", "records delivered later than their workflow's SLO",
                            labels=["workflow", "destination"])
    for w, dest, h, within in slos:
        c.add_metric([w, dest], h.count - within)
    yield c
    yield GaugeMetricFamily("router_routes_revision", "the live config revision running", value=st.routes_revision)
    yield CounterMetricFamily("router_reload_failures", "config revisions refused (the running one stayed)",
                              value=st.reload_failures)
    yield GaugeMetricFamily("router_actors_down", "actors that did not answer the last stats poll",
                            value=len(st.actors_down))


def exported_metric_names() -> set[str]:
    """The series names ``/metrics`` exports (with ``_total``, ``_bucket``, ``_sum``, ``_count``)."""
    from router.delivery.stats import DestinationStats
    from router.actors.ingest import IngestStats

    st = RouterStats({"s": IngestStats(routed={"r/d": 0})}, {"d": DestinationStats(
        workflow_latency={"w": Histogram()}, lane_queued={"high": 0}, lane_delivered={"high": 0},
        lane_parked={"high": 0}, lane_latency={"high": Histogram()})},
                     consumer_pending={"s": 0}, consumer_ack_pending={"s": 0},
                     partition_pending={"s": [0]}, partition_ack_pending={"s": [0]})
    collector = StatsCollector()
    collector.latest = st
    names = set()
    for metric in collector.collect():
        names.update(sample.name for sample in metric.samples)
    return names


class _Handler(BaseHTTPRequestHandler):
    server: "MetricsServer"

    def do_GET(self) -> None:  # noqa: N802 - the http.server hook name
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._answer(200, generate_latest(REGISTRY), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            self._answer(200, b"ok\n")
        elif path == "/readyz":
            try:
                why_not = self.server.readiness()
            except Exception as exc:  # noqa: BLE001 - a probe must answer, not hang up
                why_not = f"readiness check failed: {exc}"
            self._answer(200, b"ready\n") if why_not is None else self._answer(503, f"{why_not}\n".encode())
        else:
            self._answer(404, b"not found: /metrics, /healthz, /readyz\n")

    def _answer(self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # scrapes every few seconds: no log line each
        pass


class MetricsServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, host: str, port: int, readiness: Readiness) -> None:
        if ":" in host:
            self.address_family = socket.AF_INET6
        super().__init__((host, port), _Handler)
        self.readiness = readiness
        self.collector = StatsCollector()
        REGISTRY.register(self.collector)
        self._thread = threading.Thread(target=self.serve_forever, name="metrics-http", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.shutdown()
        self.server_close()
        REGISTRY.unregister(self.collector)


def serve_metrics(host: str, port: int, readiness: Readiness = lambda: None) -> MetricsServer:
    """Serve ``/metrics``, ``/healthz`` and ``/readyz``; ``server.collector.latest`` takes the stats."""
    return MetricsServer(host, port, readiness)
