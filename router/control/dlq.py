"""``router dlq``: list, show and replay dead letters.

Replaying a destination's dead letter puts the record into that destination's park (the shard
its key hashes to), so the running router delivers it through the same dedup: a record the
destination already has is not sent twice. Replaying an ingest dead letter publishes the
original bytes, with their original headers, to the original subject (after a fix to a producer,
a model or the routes). A replayed dead letter is removed from the dead-letter stream only once
its replay is stored.

Listing and showing only read: they never create or change a stream (a NATS without the
dead-letter stream simply has no dead letters). ``replay_plan`` says what a replay would do
without doing it (``router dlq replay --dry-run``).
"""

from __future__ import annotations

import asyncio
import re
import time
from datetime import datetime, timezone
from typing import Any, Callable, Iterator

import msgspec
import nats.errors
import nats.js.errors
from nats.js import JetStreamContext, api

from router.config import Config, Duration
from router.jetstream.dead_letters import H
from router.ingest.plan import shard_of
from router.jetstream.parking import parse_order_key
from router.wire import IDEMPOTENCY_KEY, ORDERING_KEY, ORIGIN, PARKED_REASON, park_subject

__all__ = ["DeadLetterFilter", "DeadLetterView", "dead_letter_stream_exists", "get_dead_letters",
           "iter_dead_letters", "parse_when", "replay", "replay_plan"]


class DeadLetterFilter(msgspec.Struct):
    destination: str | None = None
    stage: str | None = None  # ingest | destination
    since: float | None = None  # unix seconds
    until: float | None = None


class DeadLetterView(msgspec.Struct):
    seq: int
    time: float
    subject: str
    headers: dict[str, str]
    payload: bytes

    @property
    def stage(self) -> str:
        return self.headers.get(H.STAGE, "")

    @property
    def where(self) -> str:
        return self.headers.get(H.DESTINATION) or self.headers.get(H.SOURCE, "")


def parse_when(text: str | None, now: float | None = None) -> float | None:
    """``2026-11-27T10:00:00Z``, ``2026-11-27``, or an age: ``90m`` / ``2h`` / ``7d`` ago."""
    if not text:
        return None
    now = time.time() if now is None else now
    if re.fullmatch(r"\d+(\.\d+)?(ms|s|m|h|d)", text):
        return now - Duration.parse(text)
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"expected a time like 2026-11-27T10:00:00Z or an age like 2h, got {text!r}") from None
    return (dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)).timestamp()


async def dead_letter_stream_exists(js: JetStreamContext, cfg: Config) -> bool:
    try:
        await js.stream_info(cfg.dead_letter.stream)
    except nats.js.errors.NotFoundError:
        return False
    return True


async def get_dead_letters(js: JetStreamContext, cfg: Config,
                           seqs: list[int]) -> tuple[list[DeadLetterView], list[str]]:
    """The dead letters with these sequence numbers, and a problem for each one not found."""
    found: list[DeadLetterView] = []
    problems: list[str] = []
    for seq in dict.fromkeys(seqs):
        try:
            m = await js.get_msg(cfg.dead_letter.stream, seq)
        except nats.js.errors.NotFoundError:
            problems.append(f"seq {seq}: no dead letter with this sequence (replayed or expired?)")
            continue
        at = m.time.timestamp() if m.time else 0.0
        found.append(DeadLetterView(seq, at, m.subject or "", dict(m.headers or {}), m.data or b""))
    return found, problems


async def iter_dead_letters(js: JetStreamContext, cfg: Config, flt: DeadLetterFilter,
                            limit: int | None = None) -> list[DeadLetterView]:
    prefix = cfg.dead_letter.subject_prefix
    subject = f"{prefix}.{flt.destination}" if flt.destination else f"{prefix}.>"
    info = await js.stream_info(cfg.dead_letter.stream)
    if not info.state.messages:
        return []
    cc = api.ConsumerConfig(ack_policy=api.AckPolicy.NONE, inactive_threshold=30.0, mem_storage=True,
                            deliver_policy=api.DeliverPolicy.ALL)
    if flt.since:
        cc.deliver_policy = api.DeliverPolicy.BY_START_TIME
        cc.opt_start_time = datetime.fromtimestamp(flt.since, timezone.utc).isoformat().replace("+00:00", "Z")
    sub = await js.pull_subscribe(subject, stream=cfg.dead_letter.stream, config=cc)
    out: list[DeadLetterView] = []
    try:
        while limit is None or len(out) < limit:
            try:
                msgs = await sub.fetch(500, timeout=1.0)
            except (asyncio.TimeoutError, nats.errors.TimeoutError):
                break
            for m in msgs:
                md = m.metadata
                at = md.timestamp.timestamp()
                if flt.until and at > flt.until:
                    return out
                headers = dict(m.headers or {})
                if flt.stage and headers.get(H.STAGE) != flt.stage:
                    continue
                out.append(DeadLetterView(md.sequence.stream, at, m.subject, headers, m.data))
                if limit is not None and len(out) >= limit:
                    break
            if not msgs or msgs[-1].metadata.num_pending == 0:
                break
    finally:
        await sub.unsubscribe()
    return out


def _replay_target(cfg: Config, dl: DeadLetterView) -> tuple[str, dict[str, str]] | str:
    """(subject, headers) to publish the payload to, or why this dead letter cannot be replayed."""
    h = dl.headers
    if H.TRUNCATED in h:  # only a prefix was kept: replaying it would publish a different message
        where = f"{h.get(H.SOURCE, '?')} stream sequence {h.get(H.STREAM_SEQ, '?')}"
        return (f"its payload was cut to fit ({h[H.TRUNCATED]}, {h.get(H.ORIGINAL_DIGEST, '')}); "
                f"republish the original from {where} after fixing it")
    if dl.stage == "destination":
        dest = h.get(H.DESTINATION, "")
        if dest not in cfg.destinations:
            return f"destination `{dest}` is not in this config"
        key = h.get(H.KEY, "")
        okey = parse_order_key(h.get(ORDERING_KEY))
        shard = shard_of(key, cfg.destinations[dest].pool_size, okey)
        return (park_subject(cfg.parking.subject_prefix, dest, shard),
                {IDEMPOTENCY_KEY: key, ORIGIN: h.get(H.SOURCE, ""), PARKED_REASON: f"replay of dead letter {dl.seq}",
                 **({ORDERING_KEY: h[ORDERING_KEY]} if okey else {})})
    if dl.stage == "ingest":
        subject = h.get(H.SUBJECT)
        if not subject:
            return "no original subject recorded"
        headers = {k: v for k, v in h.items() if k in (H.CONTENT_TYPE, H.KEY)}
        if "Router-Original-Msg-Id" in h:
            headers["Nats-Msg-Id"] = f"{h['Router-Original-Msg-Id']}-replay-{dl.seq}"
        return subject, headers
    return f"unknown stage `{dl.stage}`"


def replay_plan(cfg: Config, letters: list[DeadLetterView]) -> list[str]:
    """One line per dead letter: where its replay would go, or why it cannot be replayed."""
    out = []
    for dl in letters:
        t = _replay_target(cfg, dl)
        out.append(f"seq {dl.seq}: not replayable: {t}" if isinstance(t, str) else f"seq {dl.seq}: -> {t[0]}")
    return out


async def replay(js: JetStreamContext, cfg: Config, letters: list[DeadLetterView],
                 progress: Callable[[int, int], None] = lambda done, total: None) -> tuple[int, list[str]]:
    """Replay, then delete each replayed dead letter; returns (replayed, problems)."""
    problems: list[str] = []
    done = 0
    for chunk in _chunks(letters, 200):
        targets = [(dl, _replay_target(cfg, dl)) for dl in chunk]
        ok = [(dl, t) for dl, t in targets if not isinstance(t, str)]
        problems += [f"seq {dl.seq}: {t}" for dl, t in targets if isinstance(t, str)]
        await asyncio.gather(*(js.publish(t[0], dl.payload, headers=t[1], timeout=10) for dl, t in ok))
        await asyncio.gather(*(js.delete_msg(cfg.dead_letter.stream, dl.seq) for dl, _ in ok))
        done += len(ok)
        progress(done, len(letters))
    return done, problems


def _chunks(items: list[Any], n: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), n):
        yield items[i:i + n]
