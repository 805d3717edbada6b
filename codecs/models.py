"""Typed payloads (the envelope's ``data``) for each retail event family.

Unknown fields are ignored so upstream systems can add fields without breaking the router;
missing required fields and wrong types are rejected (and dead-lettered with the reason).
"""

from __future__ import annotations

from typing import Annotated

import msgspec

__all__ = [
    "Address",
    "InventoryAdjustment",
    "Order",
    "OrderLine",
    "Package",
    "Refund",
    "Return",
    "ReturnLine",
    "Shipment",
    "MODEL_BY_FAMILY",
]

NonEmpty = Annotated[str, msgspec.Meta(min_length=1)]
Quantity = Annotated[int, msgspec.Meta(ge=1)]
Money = Annotated[float, msgspec.Meta(ge=0)]
Currency = Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{3}$")]


class Address(msgspec.Struct, omit_defaults=True):
    country: Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{2}$")]
    postal_code: str = ""
    city: str = ""
    line1: str = ""
    name: str = ""


class OrderLine(msgspec.Struct, omit_defaults=True):
    sku: NonEmpty
    quantity: Quantity
    unit_price: Money


class Order(msgspec.Struct, omit_defaults=True):
    """order.created / order.updated / order.cancelled"""

    order_id: NonEmpty
    channel: NonEmpty  # web, pos, marketplace, ...
    currency: Currency
    lines: list[OrderLine]
    total: Money
    customer_id: str | None = None
    ship_to: Address | None = None
    status: str | None = None


class InventoryAdjustment(msgspec.Struct, omit_defaults=True):
    """inventory.adjusted / inventory.counted"""

    sku: NonEmpty
    location_id: NonEmpty
    delta: int
    reason: NonEmpty
    on_hand: int | None = None


class Package(msgspec.Struct, omit_defaults=True):
    weight_kg: Annotated[float, msgspec.Meta(gt=0)]
    length_cm: float | None = None
    width_cm: float | None = None
    height_cm: float | None = None


class Shipment(msgspec.Struct, omit_defaults=True):
    """shipment.requested / shipment.dispatched / shipment.delivered"""

    shipment_id: NonEmpty
    order_id: NonEmpty
    carrier: NonEmpty
    service_level: str = "standard"
    packages: list[Package] = []
    ship_to: Address | None = None
    tracking_number: str | None = None


class ReturnLine(msgspec.Struct, omit_defaults=True):
    sku: NonEmpty
    quantity: Quantity
    reason: str = ""


class Return(msgspec.Struct, omit_defaults=True):
    """return.requested / return.received"""

    return_id: NonEmpty
    order_id: NonEmpty
    lines: list[ReturnLine]
    needs_label: bool = False


class Refund(msgspec.Struct, omit_defaults=True):
    """refund.issued"""

    refund_id: NonEmpty
    order_id: NonEmpty
    amount: Money
    currency: Currency
    reason: str = ""


# The part of `type` before the first dot selects the payload model.
MODEL_BY_FAMILY: dict[str, type[msgspec.Struct]] = {
    "order": Order,
    "inventory": InventoryAdjustment,
    "shipment": Shipment,
    "return": Return,
    "refund": Refund,
}
