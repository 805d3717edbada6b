"""One way to connect to NATS from the config, used by the supervisor and by every actor.

Reconnects forever: a restarted nats-server must never need a restarted router.
"""

from __future__ import annotations

import logging
import os
import ssl

import nats
from nats.aio.client import Client

from router.config import NatsConfig

__all__ = ["connect"]

log = logging.getLogger(__name__)


async def connect(cfg: NatsConfig, name: str) -> Client:
    kwargs: dict = {
        "servers": [cfg.url] if isinstance(cfg.url, str) else list(cfg.url),
        "name": name,
        "connect_timeout": cfg.connect_timeout,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.5,
        "allow_reconnect": True,
        "pending_size": 64 * 1024 * 1024,
    }
    if cfg.credentials:
        kwargs["user_credentials"] = cfg.credentials
    if cfg.user_env:
        kwargs["user"] = os.environ[cfg.user_env]
    if cfg.password_env:
        kwargs["password"] = os.environ[cfg.password_env]
    if cfg.token_env:
        kwargs["token"] = os.environ[cfg.token_env]
    if cfg.tls:
        ctx = ssl.create_default_context(cafile=cfg.tls.ca_file)
        if cfg.tls.cert_file:
            ctx.load_cert_chain(cfg.tls.cert_file, cfg.tls.key_file)
        kwargs["tls"] = ctx

    client: list[Client] = []

    async def on_disconnect() -> None:
        if client and not (client[0].is_closed or client[0].is_draining):
            log.warning("%s: disconnected from NATS; reconnecting", name)

    async def on_reconnect() -> None:
        log.warning("%s: reconnected to NATS", name)

    async def on_error(exc: Exception) -> None:
        log.debug("%s: NATS error: %s", name, exc)

    kwargs.update(disconnected_cb=on_disconnect, reconnected_cb=on_reconnect, error_cb=on_error)
    nc = await nats.connect(**kwargs)
    client.append(nc)
    return nc
