"""Retail events to NATS JetStream under a holiday-peak (or steady) load shape.

    locust -f loadtest/locustfile.py --nats-url nats://127.0.0.1:4222 --load-shape holiday-peak \\
        --base-rate 50 --peak-duration 600 --headless --csv peak

The web UI works the same without ``--headless``. Every publish is a locust request
(``JS-PUB``, named by event type and channel), its response time the JetStream publish-ack
latency, so locust's stats, charts and ``--csv`` files are the publish side of the rehearsal.
``router rehearse`` runs this file headless and adds the delivery side (see README).

Options (besides locust's own): ``--nats-url``, ``--load-shape`` (holiday-peak, steady),
``--base-rate`` (events/s at baseline), ``--peak-duration`` (seconds the whole shape takes),
``--per-user-rate``, ``--duplicate-ratio`` (share re-sent with the same idempotency key),
``--malformed-ratio`` (share that must be dead-lettered; both shares spread evenly over the run), ``--sent-journal`` (a directory:
one JSON line per acked publish, for the rehearsal's end-to-end counts), ``--publish-timeout``.
"""

from __future__ import annotations

import os
import random
import time
import uuid
from collections import deque
from pathlib import Path
from typing import Any

import orjson
from locust import events, task

from router.loadtest.even_share import EvenShare
from router.loadtest.nats_user import JetStreamUser
from router.loadtest.retail_events import MALFORMED, GeneratedEvent, RetailEventFactory
from router.loadtest.shapes import PROFILES, RehearsalShape, target_rate  # noqa: F401  (locust finds the shape here)


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    g = parser.add_argument_group("retail peak rehearsal")
    g.add_argument("--nats-url", default=os.environ.get("NATS_URL", "nats://127.0.0.1:4222"),
                   help="NATS server with the retail source streams")
    g.add_argument("--load-shape", choices=sorted(PROFILES), default="holiday-peak")
    g.add_argument("--base-rate", type=float, default=20.0, help="events/s at baseline (the shape multiplies it)")
    g.add_argument("--peak-duration", type=float, default=180.0, help="seconds the whole shape takes")
    g.add_argument("--per-user-rate", type=float, default=5.0, help="events/s one user publishes at most")
    g.add_argument("--duplicate-ratio", type=float, default=0.02, help="share re-sent with the same key")
    g.add_argument("--malformed-ratio", type=float, default=0.001, help="share of malformed events")
    g.add_argument("--sent-journal", default="", help="directory for the journal of acked publishes")
    g.add_argument("--publish-timeout", type=float, default=5.0, help="seconds to wait for a JetStream ack")


class SentJournal:
    """One JSON line per acked publish (time, key, subject, payload): what the rehearsal counts against."""

    def __init__(self, directory: str) -> None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        self._fh = open(Path(directory) / f"sent-{os.getpid()}.jsonl", "ab", buffering=1 << 16)

    def write(self, t: float, ev: GeneratedEvent) -> None:
        self._fh.write(orjson.dumps({"t": t, "k": ev.key, "s": ev.subject, "p": ev.payload.decode("latin-1"),
                                     "h": ev.headers}) + b"\n")

    def close(self) -> None:
        self._fh.close()


_journal: SentJournal | None = None
_recent: deque[GeneratedEvent] = deque(maxlen=2000)  # events a producer may re-send (same key)


_malformed_share = EvenShare()
_duplicate_share = EvenShare()


@events.test_start.add_listener
def _on_start(environment: Any, **_: Any) -> None:
    global _journal
    d = environment.parsed_options.sent_journal
    if d:
        _journal = SentJournal(d)
        (Path(d) / "started").write_text(repr(time.time()))  # the rehearsal aligns its fault timeline to this


@events.quitting.add_listener
def _on_quit(environment: Any, **_: Any) -> None:
    if _journal:
        _journal.close()
    JetStreamUser.close_client()


def _channel(subject: str) -> str:
    return subject.rsplit(".", 1)[-1]


class RetailPublisher(JetStreamUser):
    """Storefronts, POS, marketplaces and warehouses: the retail mix, paced to the shape's rate."""

    def __init__(self, environment: Any) -> None:
        super().__init__(environment)
        opts = environment.parsed_options
        self.factory = RetailEventFactory(seed=random.randrange(1 << 30), run_id=uuid.uuid4().hex[:10])
        self.duplicate_ratio = opts.duplicate_ratio
        self.malformed_ratio = opts.malformed_ratio
        self._next = time.monotonic()

    def wait_time(self) -> float:
        # All users together publish the shape's current rate: each takes an equal share.
        per_user = target_rate(self.environment) / max(1, self.environment.runner.user_count)
        if per_user <= 0:
            return 1.0
        self._next = max(self._next + 1.0 / per_user, time.monotonic() - 1.0)  # no catch-up burst after a stall
        return max(0.0, self._next - time.monotonic())

    def _send(self, make: Any) -> None:
        if _malformed_share.pick(self.malformed_ratio):
            payload, _why = random.choice(MALFORMED)
            ev = GeneratedEvent("retail.orders.web", payload, "", "", None, _why)
            name = "malformed"
        elif _duplicate_share.pick(self.duplicate_ratio, allowed=bool(_recent)):
            ev = random.choice(_recent)  # a producer retry: same key, same payload
            name = f"{ev.type} {_channel(ev.subject)} (re-sent)"
        else:
            ev = make()
            _recent.append(ev)
            name = f"{ev.type} {_channel(ev.subject)}"
        t = time.time()
        journal = _journal
        self.client.publish(name, ev.subject, ev.payload, ev.headers,
                            on_acked=(lambda: journal.write(t, ev)) if journal else None)

    # The holiday mix by family (the factory picks type and channel within it).
    @task(45)
    def order(self) -> None:
        self._send(self.factory.order)

    @task(30)
    def inventory(self) -> None:
        self._send(self.factory.inventory)

    @task(15)
    def shipment(self) -> None:
        self._send(self.factory.shipment)

    @task(6)
    def return_(self) -> None:
        self._send(self.factory.return_)

    @task(4)
    def refund(self) -> None:
        self._send(self.factory.refund)
