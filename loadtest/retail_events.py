"""Realistic retail event bursts: orders, inventory, shipments, returns, refunds.

Used by ``router demo``, the tests, the benchmark and the locustfiles. Deterministic for a seed,
so a test can compute exactly what each destination must receive.
"""

from __future__ import annotations

import random
import uuid
from datetime import datetime, timedelta, timezone
from typing import Iterator, NamedTuple

import orjson

__all__ = ["GeneratedEvent", "MALFORMED", "RetailEventFactory", "SUBJECTS"]

SUBJECTS = {
    "order": "retail.orders.{channel}",
    "inventory": "retail.inventory.{location}",
    "shipment": "retail.shipments.{carrier}",
    "return": "retail.returns.{channel}",
    "refund": "retail.refunds.{channel}",
}

CHANNELS = ["web", "pos", "marketplace", "app"]
LOCATIONS = ["dc-east", "dc-west", "store-0042", "store-0107"]
CARRIERS = ["ups", "dhl", "fedex", "postnl"]
SKUS = [f"SKU-{n:05d}" for n in range(1, 400)]


class GeneratedEvent(NamedTuple):
    subject: str
    payload: bytes
    key: str  # "" for malformed events without a key
    type: str
    headers: dict[str, str] | None = None
    malformed_reason: str = ""  # what the router should say about it ("" when well formed)


# (payload, the fragment the dead-letter reason must contain)
MALFORMED: list[tuple[bytes, str]] = [
    (b"{not json", "undecodable json"),
    (b'{"idempotency_key": "bad-1", "source": "pos", "occurred_at": "2026-11-27T10:00:00Z", "data": {}}',
     "missing required field `type`"),
    (b'{"idempotency_key": "bad-2", "type": "order.created", "source": "web", "occurred_at": "yesterday",'
     b' "data": {"order_id": "X"}}', "occurred_at"),
    (b'{"type": "inventory.adjusted", "source": "wms", "occurred_at": "2026-11-27T10:00:00Z",'
     b' "data": {"sku": "SKU-1", "location_id": "dc-east", "delta": 1, "reason": "count"}}',
     "missing idempotency key"),
    (b'{"idempotency_key": "bad-3", "type": "order.created", "source": "web", "occurred_at": '
     b'"2026-11-27T10:00:00Z", "data": {"order_id": "O-1", "channel": "web", "currency": "EUR", '
     b'"total": 10, "lines": [{"sku": "SKU-1", "quantity": 0, "unit_price": 10}]}}',
     "$.data.lines[0].quantity"),
    (b"\xff\xfe\x00binary garbage", "undecodable json"),
]


class RetailEventFactory:
    def __init__(self, seed: int = 7, start: datetime | None = None, run_id: str | None = None) -> None:
        self.rng = random.Random(seed)
        self.clock = start or datetime(2026, 11, 27, 8, 0, tzinfo=timezone.utc)  # Black Friday morning
        self.run_id = run_id or uuid.UUID(int=self.rng.getrandbits(128), version=4).hex[:8]
        self.n = 0

    def _key(self, kind: str) -> str:
        self.n += 1
        return f"{kind}-{self.run_id}-{self.n:07d}"

    def _tick(self) -> str:
        self.clock += timedelta(milliseconds=self.rng.randint(1, 40))
        return self.clock.isoformat().replace("+00:00", "Z")

    def _event(self, family: str, type_: str, source: str, data: dict, subject_vars: dict) -> GeneratedEvent:
        key = self._key(family)
        body = {"idempotency_key": key, "type": type_, "source": source, "occurred_at": self._tick(), "data": data}
        if self.rng.random() < 0.5:
            body["correlation_id"] = str(uuid.UUID(int=self.rng.getrandbits(128), version=4))
        return GeneratedEvent(SUBJECTS[family].format(**subject_vars), orjson.dumps(body), key, type_)

    def order(self) -> GeneratedEvent:
        rng = self.rng
        channel = rng.choice(CHANNELS)
        lines = [{"sku": rng.choice(SKUS), "quantity": rng.randint(1, 4), "unit_price": round(rng.uniform(3, 250), 2)}
                 for _ in range(rng.randint(1, 5))]
        total = round(sum(ln["quantity"] * ln["unit_price"] for ln in lines), 2)
        type_ = rng.choices(["order.created", "order.updated", "order.cancelled"], [8, 2, 1])[0]
        data = {"order_id": f"O-{rng.randint(10**6, 10**7)}", "channel": channel, "currency": "EUR",
                "lines": lines, "total": total, "customer_id": f"C-{rng.randint(1, 50000)}",
                "ship_to": {"country": rng.choice(["NL", "DE", "FR", "BE"]), "postal_code": f"{rng.randint(1000, 9999)}"}}
        return self._event("order", type_, f"{channel}-storefront" if channel != "pos" else "pos", data,
                           {"channel": channel})

    def inventory(self) -> GeneratedEvent:
        rng = self.rng
        loc = rng.choice(LOCATIONS)
        type_ = rng.choices(["inventory.adjusted", "inventory.counted"], [5, 1])[0]
        data = {"sku": rng.choice(SKUS), "location_id": loc, "delta": rng.randint(-5, 20),
                "reason": rng.choice(["sale", "receipt", "damage", "cycle-count"]), "on_hand": rng.randint(0, 500)}
        return self._event("inventory", type_, "wms", data, {"location": loc})

    def shipment(self) -> GeneratedEvent:
        rng = self.rng
        carrier = rng.choice(CARRIERS)
        type_ = rng.choices(["shipment.requested", "shipment.dispatched", "shipment.delivered"], [4, 3, 2])[0]
        data = {"shipment_id": f"S-{rng.randint(10**6, 10**7)}", "order_id": f"O-{rng.randint(10**6, 10**7)}",
                "carrier": carrier, "service_level": rng.choice(["standard", "express"]),
                "packages": [{"weight_kg": round(rng.uniform(0.2, 20), 2)} for _ in range(rng.randint(1, 3))],
                "ship_to": {"country": rng.choice(["NL", "DE"]), "postal_code": "1011"}}
        if type_ != "shipment.requested":
            data["tracking_number"] = f"1Z{rng.randint(10**9, 10**10)}"
        return self._event("shipment", type_, "3pl", data, {"carrier": carrier})

    def return_(self) -> GeneratedEvent:
        rng = self.rng
        channel = rng.choice(CHANNELS)
        type_ = rng.choice(["return.requested", "return.received"])
        data = {"return_id": f"R-{rng.randint(10**6, 10**7)}", "order_id": f"O-{rng.randint(10**6, 10**7)}",
                "lines": [{"sku": rng.choice(SKUS), "quantity": 1, "reason": rng.choice(["size", "damaged"])}],
                "needs_label": rng.random() < 0.6}
        return self._event("return", type_, f"{channel}-returns", data, {"channel": channel})

    def refund(self) -> GeneratedEvent:
        rng = self.rng
        channel = rng.choice(CHANNELS)
        data = {"refund_id": f"F-{rng.randint(10**6, 10**7)}", "order_id": f"O-{rng.randint(10**6, 10**7)}",
                "amount": round(rng.uniform(5, 300), 2), "currency": "EUR", "reason": "return"}
        return self._event("refund", "refund.issued", "payments", data, {"channel": channel})

    def mix(self) -> GeneratedEvent:
        """One event, in a holiday-peak mix: mostly orders and stock movements."""
        pick = self.rng.choices([self.order, self.inventory, self.shipment, self.return_, self.refund],
                                [45, 30, 15, 6, 4])[0]
        return pick()

    def resent(self, ev: GeneratedEvent, minutes_later: float) -> GeneratedEvent:
        """The same event (same key) as a producer would re-send it later: a new message, a later time."""
        body = orjson.loads(ev.payload)
        t = datetime.fromisoformat(body["occurred_at"].replace("Z", "+00:00")) + timedelta(minutes=minutes_later)
        body["occurred_at"] = t.isoformat().replace("+00:00", "Z")
        return ev._replace(payload=orjson.dumps(body))

    def burst(self, count: int, duplicate_ratio: float = 0.0, malformed: int = 0,
              resend_after_minutes: float = 0.0) -> Iterator[GeneratedEvent]:
        """``count`` events; a share re-sent with the same key later in the burst (``resend_after_minutes``
        later in event time, when given); ``malformed`` bad ones."""
        sent: list[GeneratedEvent] = []
        bad_at = set(self.rng.sample(range(count), min(malformed, count))) if malformed else set()
        bad_i = 0
        for i in range(count):
            if i in bad_at:
                payload, why = MALFORMED[bad_i % len(MALFORMED)]
                bad_i += 1
                yield GeneratedEvent("retail.orders.web", payload, "", "", None, why)
            elif sent and self.rng.random() < duplicate_ratio:
                again = self.rng.choice(sent)  # same key: a producer retry or a replay
                yield self.resent(again, resend_after_minutes) if resend_after_minutes else again
            else:
                ev = self.mix()
                sent.append(ev)
                yield ev
