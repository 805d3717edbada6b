"""HTTP destinations: ``POST`` a JSON array of records (the HTTP contract in DESIGN.md).

Redirects are never followed: aiohttp would re-send a 302/303 as a GET without the body (the
2xx that follows would count records as delivered that nobody received), and a 307/308 would
send them, with our credentials, to a host nobody configured. A 3xx is a permanent failure of
the whole batch, dead-lettered with the status and the ``Location``.

Whatever the destination answers (a body may echo our request headers) and every exception
text pass through the redactor before they become a reason, a dead-letter header or a log line.

aiohttp rather than httpx: it is the faster asyncio client for many small requests, keeps a
pooled connector per destination, and already ships with Ray's dependencies.
"""

from __future__ import annotations

import asyncio
import email.utils
import os
import time
from typing import Annotated

import aiohttp
import msgspec

from router.config_base import AuthConfig, DestinationBase
from router.redaction import destination_secrets, install_log_redaction
from router.sinks.kind import SinkKind
from router.wire import IDEMPOTENCY_KEY, ROUTES_REVISION
from router.sinks.outcome import Delivered, Outcome, Permanent, Transient

__all__ = ["HTTP", "HttpDestination", "HttpSink", "parse_retry_after"]

# Statuses that blame the records rather than the request as a whole: a split batch isolates them.
_RECORD_LEVEL = {400, 409, 413, 422}


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as delay-seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class HttpDestination(DestinationBase, tag="http", kw_only=True):
    """`kind: http`: each batch is one POST of a JSON array of records."""

    url: Annotated[str, msgspec.Meta(pattern=r"^https?://")]  # the endpoint that takes a JSON array of records
    auth: AuthConfig | None = None
    headers: dict[str, str] = {}  # extra static request headers


class HttpSink:
    def __init__(self, name: str, cfg: HttpDestination) -> None:
        self.name = name
        self._session: aiohttp.ClientSession | None = None
        self.reconfigure(cfg)

    def reconfigure(self, cfg: HttpDestination) -> None:
        """Settings from the config, also on a live reload (url, headers, auth, timeout)."""
        self.cfg = cfg
        headers = {"Content-Type": "application/json", **cfg.headers}
        if cfg.auth:
            token = os.environ[cfg.auth.token_env]
            headers[cfg.auth.header] = f"{cfg.auth.scheme} {token}".strip()
        # This process (a Ray actor) redacts its logs and outcomes from here on.
        self._redactor = install_log_redaction(destination_secrets(cfg))
        self._headers = headers
        self._timeout = aiohttp.ClientTimeout(total=cfg.timeout)

    async def start(self) -> None:
        # No connection cap of aiohttp's own: the shard's concurrency limit decides, and it can change live.
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300)
        self._session = aiohttp.ClientSession(connector=connector)

    async def close(self) -> None:
        if self._session:
            await self._session.close()

    async def send(self, batch_id: str, keys: list[str], payloads: list[bytes], revision: int = 0,
                   correlation_ids: list[str] | None = None) -> Outcome:
        # Each record carries its correlation id (the contract); the ids beside them are for headers.
        assert self._session is not None, "start() first"
        body = b"[" + b",".join(payloads) + b"]"
        headers = dict(self._headers)
        headers[IDEMPOTENCY_KEY] = batch_id
        if revision:
            headers[ROUTES_REVISION] = str(revision)
        try:
            async with self._session.post(self.cfg.url, data=body, headers=headers, timeout=self._timeout,
                                          allow_redirects=False) as resp:
                status = resp.status
                if 200 <= status < 300:
                    await resp.read()
                    return Delivered()
                # Redact before cutting: a secret cut in two would no longer match.
                excerpt = self._redactor.redact(await resp.text(errors="replace"))[:512]
                if 300 <= status < 400:
                    location = self._redactor.redact(resp.headers.get("Location", "(none)"))
                    return Permanent(f"HTTP {status} redirect from {self.name} to {location}; "
                                     f"redirects are not followed: configure the final URL",
                                     status, excerpt, record_level=False)
                reason = f"HTTP {status} from {self.name}"
                if status in (408, 429) or status >= 500:
                    return Transient(reason, parse_retry_after(resp.headers.get("Retry-After")))
                return Permanent(reason, status, excerpt, status in _RECORD_LEVEL)
        except asyncio.TimeoutError:
            return Transient(f"timeout after {self.cfg.timeout:g}s from {self.name}")
        except aiohttp.ClientError as exc:
            return Transient(self._redactor.redact(
                f"connection error to {self.name}: {exc.__class__.__name__}: {exc}"))


HTTP = SinkKind("http", HttpDestination, lambda name, cfg, nc: HttpSink(name, cfg))
