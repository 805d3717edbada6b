"""Canonical retail event models, the envelope decoder and per-destination encoders.

Installed as ``router.codecs`` (a top-level ``codecs`` would shadow the standard library).
"""

from .envelope import Envelope, Event, EventDecoder, InvalidEvent
from .encoders import ENCODERS, Encoder, encoder_names, get_encoder

__all__ = [
    "ENCODERS",
    "Encoder",
    "Envelope",
    "Event",
    "EventDecoder",
    "InvalidEvent",
    "encoder_names",
    "get_encoder",
]
