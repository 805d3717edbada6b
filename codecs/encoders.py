"""Per-destination encoders: an Event in, one JSON record (bytes) out.

Every record carries ``idempotency_key`` and ``correlation_id`` (the HTTP destination contract).
A route names its encoder; ``canonical`` (the whole envelope) is the default. An encoder that
only understands some event families says so in ``families`` and the route compiler refuses a
route that would feed it anything else.

An encoder raises ``EncodeError`` (an ``InvalidEvent``) and nothing else for any event the
decoder accepted: the typed encoders read validated models; ``canonical`` passes free-form data
through, and data that decoded but has no JSON form (a MessagePack map keyed by an array or nil)
is refused with the reason. The ingest planner dead-letters that one message.
"""

from __future__ import annotations

from typing import Any, Callable

import msgspec

from .envelope import Event, InvalidEvent
from .models import InventoryAdjustment, Order, Return, Shipment

__all__ = ["ENCODERS", "EncodeError", "Encoder", "encoder_names", "get_encoder"]

_json = msgspec.json.Encoder()


class EncodeError(InvalidEvent):
    """An event this encoder cannot turn into a record; the message is dead-lettered with it."""


def _cannot_encode(encoder: str, exc: Exception) -> EncodeError:
    text = str(exc)
    return EncodeError(f"encoder `{encoder}` cannot encode this event: {exc.__class__.__name__}: {text[:200]}")


class Encoder(msgspec.Struct, frozen=True):
    name: str
    encode: Callable[[Event], bytes]
    families: frozenset[str] | None = None  # None: any family
    description: str = ""


class CanonicalRecord(msgspec.Struct):
    idempotency_key: str
    correlation_id: str
    type: str
    source: str
    occurred_at: Any
    data: Any


def _canonical(ev: Event) -> bytes:
    try:
        return _json.encode(
            CanonicalRecord(ev.idempotency_key, ev.correlation_id, ev.type, ev.source, ev.occurred_at, ev.data)
        )
    except Exception as exc:  # `data` is free-form for unmodelled families
        raise _cannot_encode("canonical", exc) from None


class SalesOrderLine(msgspec.Struct):
    item_number: str
    quantity: int
    unit_price: float


class SalesOrderDocument(msgspec.Struct):
    idempotency_key: str
    correlation_id: str
    document_type: str
    action: str
    external_order_id: str
    sales_channel: str
    currency: str
    order_total: float
    lines: list[SalesOrderLine]
    customer_number: str | None


def _erp_sales_order(ev: Event) -> bytes:
    o: Order = ev.data
    return _json.encode(
        SalesOrderDocument(
            idempotency_key=ev.idempotency_key,
            correlation_id=ev.correlation_id,
            document_type="SALES_ORDER",
            action=ev.type.split(".", 1)[1].upper(),
            external_order_id=o.order_id,
            sales_channel=o.channel,
            currency=o.currency,
            order_total=o.total,
            lines=[SalesOrderLine(ln.sku, ln.quantity, ln.unit_price) for ln in o.lines],
            customer_number=o.customer_id,
        )
    )


class StockUpdate(msgspec.Struct):
    idempotency_key: str
    correlation_id: str
    seller_sku: str
    fulfillment_location: str
    quantity_delta: int
    available_quantity: int | None
    updated_at: Any


def _marketplace_stock(ev: Event) -> bytes:
    inv: InventoryAdjustment = ev.data
    return _json.encode(
        StockUpdate(ev.idempotency_key, ev.correlation_id, inv.sku, inv.location_id, inv.delta, inv.on_hand, ev.occurred_at)
    )


class LabelRequest(msgspec.Struct):
    idempotency_key: str
    correlation_id: str
    reference: str
    order_reference: str
    service: str
    parcels: list[Any]
    ship_to: Any
    label_kind: str


def _carrier_label_request(ev: Event) -> bytes:
    d = ev.data
    if isinstance(d, Shipment):
        return _json.encode(
            LabelRequest(ev.idempotency_key, ev.correlation_id, d.shipment_id, d.order_id,
                         d.service_level, d.packages, d.ship_to, "OUTBOUND")
        )
    r: Return = d
    return _json.encode(
        LabelRequest(ev.idempotency_key, ev.correlation_id, r.return_id, r.order_id,
                     "return", [], None, "RETURN")
    )


ENCODERS: dict[str, Encoder] = {
    e.name: e
    for e in (
        Encoder("canonical", _canonical, None, "the whole envelope, data as received (validated)"),
        Encoder("erp_sales_order", _erp_sales_order, frozenset({"order"}), "ERP sales-order document"),
        Encoder("marketplace_stock", _marketplace_stock, frozenset({"inventory"}), "marketplace stock update"),
        Encoder("carrier_label_request", _carrier_label_request, frozenset({"shipment", "return"}),
                "carrier label request (outbound shipment or return label)"),
    )
}


def encoder_names() -> list[str]:
    return sorted(ENCODERS)


def get_encoder(name: str) -> Encoder:
    return ENCODERS[name]
