"""What every ``router`` command shares: failing with a clear, redacted message, and running an
action on a fresh NATS connection that fails fast."""

from __future__ import annotations

import asyncio
import sys
from typing import Any, Awaitable, Callable, NoReturn

import click

from router.redaction import redact

__all__ = ["fail", "run_on_nats"]


def fail(msg: str, code: int = 2) -> NoReturn:
    click.echo(f"error: {redact(msg)}", err=True)
    sys.exit(code)


def run_on_nats(cfg: Any, client: str, doing: str, action: Callable[[Any], Awaitable[Any]]) -> Any:
    """``action(js)`` on a fresh connection; exit 3 when NATS refuses us at start, 1 when the work
    fails on the way, saying what failed."""
    import nats.errors

    from router.jetstream.connection import NatsStartupError, connect

    async def go() -> Any:
        nc = await connect(cfg.nats, client, fail_fast=True)
        try:
            return await action(nc.jetstream())
        finally:
            await nc.close()

    try:
        return asyncio.run(go())
    except NatsStartupError as exc:
        fail(str(exc), 3)
    except (nats.errors.Error, OSError, asyncio.TimeoutError) as exc:
        fail(f"{doing} failed: {exc.__class__.__name__}: {exc}", 1)
