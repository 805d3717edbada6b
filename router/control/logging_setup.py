"""Log output for the ``router`` command: ``--log-format text`` (default) or ``json``.

JSON: one object per line (orjson), with ``ts``, ``level``, ``logger``, ``msg`` and whatever
structured fields the call passed in ``extra`` (``event``, ``destination``, ``correlation_id``,
``idempotency_key``, ``route``, ``reason``, ``count``...). The events that matter log such
fields: breaker transitions (``breaker``), dead letters (``dead_letter``), SLO breaches
(``slo_breach``), live reloads and actor restarts. Nothing is logged per message at info level.

The secrets filter (``router/redaction.py``) rewrites a record's message before any formatter
sees it, so both formats stay redacted; string fields in ``extra`` are redacted here too.
"""

from __future__ import annotations

import logging
import os
import sys
from datetime import datetime, timezone
from typing import Any

import orjson

from router.redaction import redact

__all__ = ["JsonFormatter", "LOG_FORMAT_ENV", "configure_from_environment", "setup_logging"]

LOG_FORMAT_ENV = "ROUTER_LOG_FORMAT"  # set by the CLI; the actor processes (a local Ray's) inherit it

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Attributes every LogRecord has: anything else on a record came from ``extra``.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = redact(value) if isinstance(value, str) else value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exception"] = redact(record.exc_text)
        return orjson.dumps(out, default=str).decode()


def setup_logging(log_format: str = "text", level: int = logging.INFO) -> None:
    """Configure the root logger once for this process (the CLI calls it before any command)."""
    os.environ[LOG_FORMAT_ENV] = log_format
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level)


def configure_from_environment() -> None:
    """In an actor process: JSON lines too when the router was started with ``--log-format json``
    (the actor's output reaches the driver's through Ray, one line per record, behind Ray's
    ``(ActorName pid=...)`` prefix). Does nothing where logging is already set up that way."""
    if os.environ.get(LOG_FORMAT_ENV) != "json":
        return
    root = logging.getLogger()
    if any(isinstance(h.formatter, JsonFormatter) for h in root.handlers):
        return
    setup_logging("json", logging.INFO)
