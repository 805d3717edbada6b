"""One way to connect to NATS from the config, used by the supervisor and by every actor.

Startup fails fast: a process an operator starts (``fail_fast=True``: ``router run``, ``router
dlq``) gives up after ``nats.connect_timeout`` when the first connection does not succeed, and
says what went wrong (authorization, TLS, nothing listening, no answer) and what to check. An
authorization or certificate error ends the wait at once: retrying will not fix it.

After a good first connection it reconnects forever: a restarted nats-server must never need a
restarted router. Actors connect without ``fail_fast`` (the supervisor's connection has already
proved the config; an actor Ray restarts while NATS is down waits for it). Connection errors
are logged at warning level, the same one at most every 30 s.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
import time

import nats
import nats.errors
from nats.aio.client import Client, RawCredentials

from router.config import NatsConfig
from router.control.actor_env import CREDENTIALS_CONTENT_ENV
from router.redaction import install_log_redaction, nats_secrets, redact

__all__ = ["NatsStartupError", "connect", "describe_connect_error"]

log = logging.getLogger(__name__)

_REPEAT_EVERY = 30.0  # seconds between two logs of the same connection error


class NatsStartupError(Exception):
    """The first connection to NATS failed; the message says what went wrong and what to check."""


def _urls(cfg: NatsConfig) -> list[str]:
    return [cfg.url] if isinstance(cfg.url, str) else list(cfg.url)


def _is_auth_error(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, nats.errors.AuthorizationError) or "authorization" in text or "authentication" in text


def _is_certificate_error(exc: BaseException) -> bool:
    return isinstance(exc, ssl.SSLCertVerificationError)


def _unwrap(exc: BaseException) -> BaseException:
    """nats-py wraps some socket errors; the cause says more."""
    while exc.__cause__ is not None and isinstance(exc, nats.errors.Error):
        exc = exc.__cause__
    return exc


def describe_connect_error(cfg: NatsConfig, exc: BaseException | None) -> str:
    """What went wrong connecting to NATS, and what to check, in one paragraph."""
    where = redact(", ".join(_urls(cfg)))
    timeout = f"{cfg.connect_timeout:g}s"
    if exc is not None:
        exc = _unwrap(exc)
    if exc is None or isinstance(exc, (asyncio.TimeoutError, TimeoutError, nats.errors.TimeoutError)):
        what = f"no answer from NATS at {where} within nats.connect_timeout ({timeout})"
        check = "check nats.url, that nats-server is running and reachable from here (firewall, DNS)"
    elif _is_auth_error(exc):
        what = f"NATS at {where} refused the connection: authorization violation"
        given = [k for k in ("token_env", "user_env", "password_env", "credentials") if getattr(cfg, k)]
        check = ("check the credentials the config gives: " + (", ".join(f"nats.{k}" for k in given)
                 if given else "none are configured (nats.token_env, user_env / password_env or credentials)")
                 + "; and that the environment variables they name hold the values the server expects")
    elif _is_certificate_error(exc):
        assert isinstance(exc, ssl.SSLCertVerificationError)
        what = f"TLS to NATS at {where} failed: the server's certificate is not trusted ({exc.verify_message})"
        ca = cfg.tls.ca_file if cfg.tls and cfg.tls.ca_file else None
        check = ((f"check that nats.tls.ca_file ({ca}) is the CA that signed the server's certificate"
                  if ca else "the server requires TLS and no nats.tls.ca_file is set, so the system's CAs were "
                             "used: set nats.tls.ca_file to the CA that signed the server's certificate")
                 + "; check too that the host in nats.url is one the certificate names")
    elif isinstance(exc, ssl.SSLError):
        what = f"TLS to NATS at {where} failed: {exc.reason or exc}"
        check = "check nats.tls (CA, client certificate and key) against the server's TLS settings"
    elif isinstance(exc, ConnectionRefusedError):
        what = f"connection refused: nothing listens at {where}"
        check = "check nats.url and that nats-server is running (`router demo` starts an embedded one)"
    elif isinstance(exc, socket.gaierror):
        what = f"cannot resolve the host of {where} ({exc})"
        check = "check the host name in nats.url"
    else:
        what = f"cannot connect to NATS at {where}: {exc.__class__.__name__}: {exc}"
        check = "check nats.url, nats.tls and the credentials in the config"
    return redact(f"{what}. {check[:1].upper()}{check[1:]}.")


def _credentials(path: str) -> str | RawCredentials:
    """The ``.creds`` file where it exists; on a Ray node without it, the content the supervisor
    handed the actor (``router/control/actor_env.py``)."""
    content = os.environ.get(CREDENTIALS_CONTENT_ENV)
    if content and not os.path.exists(path):
        return RawCredentials(content)
    return path


def _connect_options(cfg: NatsConfig, name: str) -> dict:
    kwargs: dict = {
        "servers": _urls(cfg),
        "name": name,
        "connect_timeout": cfg.connect_timeout,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.5,
        "allow_reconnect": True,
        "pending_size": 64 * 1024 * 1024,
    }
    if cfg.credentials:
        kwargs["user_credentials"] = _credentials(cfg.credentials)
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
    return kwargs


async def connect(cfg: NatsConfig, name: str, *, fail_fast: bool = False) -> Client:
    # Whatever this process logs from here on is redacted of the NATS secrets.
    install_log_redaction(nats_secrets(cfg))
    kwargs = _connect_options(cfg, name)
    nc = Client()
    errors: list[BaseException] = []
    fatal = asyncio.Event()
    last_logged: dict[str, float] = {}

    def warn(message: str) -> None:
        now = time.monotonic()
        if now - last_logged.get(message, -_REPEAT_EVERY) >= _REPEAT_EVERY:
            last_logged[message] = now
            log.warning("%s", message)

    async def on_disconnect() -> None:
        if not (nc.is_closed or nc.is_draining):
            warn(f"{name}: disconnected from NATS; reconnecting")

    async def on_reconnect() -> None:
        log.warning("%s: reconnected to NATS", name)

    async def on_error(exc: Exception) -> None:
        if fail_fast and not nc.is_connected and not nc.is_reconnecting:  # still on the first connection
            errors.append(exc)
            if _is_auth_error(exc) or _is_certificate_error(_unwrap(exc)):
                fatal.set()
            return  # reported once, when startup gives up
        if nc.is_connected or nc.is_reconnecting:  # after a good start: the config was right
            warn(redact(f"{name}: NATS error: {exc.__class__.__name__}: {exc}"))
        else:
            warn(f"{name}: cannot connect yet, retrying: {describe_connect_error(cfg, exc)}")

    kwargs.update(disconnected_cb=on_disconnect, reconnected_cb=on_reconnect, error_cb=on_error)
    if not fail_fast:
        await nc.connect(**kwargs)
        return nc

    attempt = asyncio.ensure_future(nc.connect(**kwargs))
    gave_up = asyncio.ensure_future(fatal.wait())
    try:
        await asyncio.wait({attempt, gave_up}, timeout=cfg.connect_timeout,
                           return_when=asyncio.FIRST_COMPLETED)
    finally:
        gave_up.cancel()
    if attempt.done() and not attempt.cancelled() and attempt.exception() is None and nc.is_connected:
        return nc
    if not attempt.done():
        attempt.cancel()
    try:
        await attempt
    except asyncio.CancelledError:  # the cancel we asked for
        pass
    except Exception as exc:  # noqa: BLE001 - the error to report
        errors.append(exc)
    try:
        await nc.close()
    except Exception:  # noqa: BLE001 - half-open client; nothing more to release
        pass
    # An authorization or certificate error says more than the refusals or timeouts around it.
    telling = [e for e in errors if _is_auth_error(e) or isinstance(_unwrap(e), ssl.SSLError)]
    raise NatsStartupError(describe_connect_error(cfg, (telling or errors or [None])[-1]))
