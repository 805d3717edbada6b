"""Destination kinds: each sink sends one batch and says what happened (``outcome``)."""

from router.sinks.outcome import Delivered, Outcome, Permanent, Transient

__all__ = ["Delivered", "Outcome", "Permanent", "Transient"]
