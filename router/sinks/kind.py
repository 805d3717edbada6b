"""What a destination kind registers: its config Struct and how to build its sink."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

__all__ = ["SinkKind"]


class SinkKind(NamedTuple):
    name: str  # the `kind:` value in the config, and the config Struct's tag
    config: type  # a ``DestinationBase`` subclass with ``tag=name``
    create: Callable[[str, Any, Any], Any]  # (destination name, its config, the NATS client) -> a started-later Sink
