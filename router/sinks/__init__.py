"""Destination kinds, and the registry that names them.

A kind is one file here: its config Struct (a ``DestinationBase`` subclass tagged with the
kind's name), its sink (``start`` / ``send`` / ``close``, answering each batch with an
``Outcome``) and a ``SinkKind`` that ties them together. Add the ``SinkKind`` to ``_KINDS``
below and the config accepts `kind: <name>`, its JSON Schema documents it, and every sink
actor can build it.
"""

from typing import Union

from router.sinks.http_sink import HTTP
from router.sinks.kind import SinkKind
from router.sinks.nats_sink import NATS
from router.sinks.outcome import Delivered, Outcome, Permanent, Transient

__all__ = ["SINK_KINDS", "Delivered", "DestinationConfig", "Outcome", "Permanent", "SinkKind", "Transient"]

_KINDS = (HTTP, NATS)

SINK_KINDS: dict[str, SinkKind] = {k.name: k for k in _KINDS}

# The `destinations.<name>` entry of the config: one of the kinds' Structs, chosen by `kind`.
DestinationConfig = Union[tuple(k.config for k in _KINDS)]  # type: ignore[valid-type]
