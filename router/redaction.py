"""Keep configured secrets out of everything the router writes: logs, errors, dead letters.

The config names secrets by environment variable (destination auth tokens, the NATS token, user
and password) or by file (NATS credentials); URLs may carry a password in their user part.
``secrets_from_config`` collects those values, ``Redactor.redact`` replaces each of them (and
the forms they take when echoed back in JSON or URL-encoded) with ``[REDACTED]``.

One redactor per process (``register`` adds to it): the CLI registers the whole config; the
NATS connection and the HTTP sink register what they read themselves, so Ray actor processes,
which never run the CLI, redact too. ``install_log_redaction`` makes every log record of the
process pass through it, whichever logger or handler writes it, and an uncaught exception too.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
import traceback
from typing import Any, Iterable
from urllib.parse import quote, quote_plus, unquote, urlsplit

__all__ = ["REDACTED", "RedactingFilter", "Redactor", "install_log_redaction", "redact", "register",
           "secrets_from_config"]

REDACTED = "[REDACTED]"

# A credential in an Authorization-style value, redacted even when its secret was not configured
# here (``router dlq show`` run without the destination's environment, say).
_CREDENTIAL = re.compile(r"\b(Bearer|Basic|Token)(\s+)[A-Za-z0-9._~+/=-]{8,}", re.IGNORECASE)


class Redactor:
    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._lock = threading.Lock()
        self._secrets: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        forms: set[str] = set()
        for s in secrets:
            if not s:
                continue
            # The value as configured, and as a destination may echo it back: JSON-escaped,
            # URL-encoded (a query string, a form), and decoded if it was configured encoded.
            # (JSON may escape `/` as `\/`.)
            escaped = json.dumps(s)[1:-1]
            forms |= {s, escaped, escaped.replace("/", "\\/"), quote(s, safe=""), quote_plus(s), unquote(s)}
        with self._lock:
            if forms <= self._secrets:
                return
            self._secrets |= {f for f in forms if f}
            # Longest first, so a secret that contains another is replaced whole.
            alternatives = sorted(self._secrets, key=len, reverse=True)
            self._pattern = re.compile("|".join(re.escape(a) for a in alternatives))

    def redact(self, text: Any) -> str:
        text = text if isinstance(text, str) else str(text)
        pattern = self._pattern
        if pattern is not None:
            text = pattern.sub(REDACTED, text)
        return _CREDENTIAL.sub(rf"\1\2{REDACTED}", text)


_process_redactor = Redactor()


def register(secrets: Iterable[str]) -> Redactor:
    """Add secrets to this process's redactor; returns it."""
    _process_redactor.add(secrets)
    return _process_redactor


def redact(text: Any) -> str:
    """``text`` with every secret this process knows replaced by ``[REDACTED]``."""
    return _process_redactor.redact(text)


def url_secrets(url: str) -> list[str]:
    """The password (and user) in a URL's user part, e.g. ``nats://user:secret@host``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return []
    return [v for v in (parts.password, parts.username if parts.password else None) if v]


def credentials_secrets(content: str) -> list[str]:
    """The JWT and the nkey seed of a NATS ``.creds`` file's content: every line between its markers."""
    lines = [line.strip() for line in content.splitlines()]
    return [line for line in lines if len(line) >= 16 and " " not in line and not line.startswith(("-", "*"))]


def credentials_file_secrets(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return credentials_secrets(fh.read())
    except OSError:
        return []


def nats_secrets(nats_cfg: Any) -> list[str]:
    out: list[str] = []
    for key in ("token_env", "user_env", "password_env"):
        var = getattr(nats_cfg, key, None)
        if var and os.environ.get(var):
            out.append(os.environ[var])
    urls = [nats_cfg.url] if isinstance(nats_cfg.url, str) else list(nats_cfg.url)
    for u in urls:
        out += url_secrets(u)
    if getattr(nats_cfg, "credentials", None):
        out += credentials_file_secrets(nats_cfg.credentials)
        # On a Ray node without the file, the supervisor hands its content over in the environment.
        from router.control.actor_env import CREDENTIALS_CONTENT_ENV

        out += credentials_secrets(os.environ.get(CREDENTIALS_CONTENT_ENV, ""))
    return out


def destination_secrets(dest: Any) -> list[str]:
    # Not every destination kind has auth or a URL.
    out: list[str] = []
    auth = getattr(dest, "auth", None)
    if auth and os.environ.get(auth.token_env):
        out.append(os.environ[auth.token_env])
    url = getattr(dest, "url", None)
    if isinstance(url, str):
        out += url_secrets(url)
    return out


def secrets_from_config(cfg: Any) -> list[str]:
    """Every secret value the config names, read from the environment and files now."""
    out = nats_secrets(cfg.nats)
    for dest in cfg.destinations.values():
        out += destination_secrets(dest)
    return out


class RedactingFilter(logging.Filter):
    """Rewrites a record's message (arguments merged in) and its traceback text, redacted."""

    def __init__(self, redactor: Redactor | None = None) -> None:
        super().__init__()
        self.redactor = redactor or _process_redactor

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: keep the parts rather than lose the line
            message = f"{record.msg} {record.args}"
        record.msg, record.args = self.redactor.redact(message), ()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redactor.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redactor.redact(record.stack_info)
        return True


_installed = False


def install_log_redaction(secrets: Iterable[str] = ()) -> Redactor:
    """Register ``secrets`` and redact every log record this process creates from now on.

    A filter on the root logger alone would miss records of child loggers (logging applies a
    logger's filters only to records logged on it) and handlers added later (Ray adds its own);
    so the filter runs where every record is made, and is also put on the root logger's handlers.
    """
    global _installed
    redactor = register(secrets)
    if not _installed:
        _installed = True
        flt = RedactingFilter(redactor)
        make_record = logging.getLogRecordFactory()

        def redacting_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = make_record(*args, **kwargs)
            flt.filter(record)
            return record

        logging.setLogRecordFactory(redacting_record)
        root = logging.getLogger()
        root.addFilter(flt)
        for h in root.handlers:
            h.addFilter(flt)
        # An exception nobody caught is printed by sys.excepthook, not by logging.
        sys.excepthook = _redacting_excepthook(redactor)
    return redactor


def _redacting_excepthook(redactor: Redactor) -> Any:
    def print_redacted(kind: type[BaseException], value: BaseException, tb: Any) -> None:
        sys.stderr.write(redactor.redact("".join(traceback.format_exception(kind, value, tb))))

    return print_redacted
