"""What a sink says about one batch: delivered, worth retrying, or never going to work."""

from __future__ import annotations

from typing import Union

import msgspec

__all__ = ["Delivered", "Outcome", "Permanent", "Transient"]


class Delivered(msgspec.Struct, frozen=True):
    pass


class Transient(msgspec.Struct, frozen=True):
    """408, 429, 5xx, timeouts, connection errors: retry with backoff."""

    reason: str
    retry_after: float | None = None  # seconds the destination asked us to wait


class Permanent(msgspec.Struct, frozen=True):
    """Other 4xx: retrying will not help; dead-letter with the response."""

    reason: str
    status: int | None = None
    response: str = ""
    record_level: bool = True  # the content is at fault (400, 409, 413, 422): worth splitting the batch


Outcome = Union[Delivered, Transient, Permanent]
