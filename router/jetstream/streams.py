"""Streams and consumers the router needs, created or brought up to date at start-up.

Done once by the supervisor, before any actor starts, so a misconfiguration (a stream that does
not exist with ``create_stream: false``, subjects that overlap another stream) fails at set-up
with a clear message rather than at the first message.
"""

from __future__ import annotations

import nats.js.errors
from nats.js import JetStreamContext, api

from router.config import Config, Source
from router.wire import journal_subjects

__all__ = ["SetupError", "ensure_router_streams", "ensure_source", "dedup_subjects"]


class SetupError(RuntimeError):
    pass


def dedup_subjects(cfg: Config) -> list[str]:
    return [journal_subjects(cfg.dedup.stream)]


async def _ensure_stream(js: JetStreamContext, sc: api.StreamConfig) -> None:
    try:
        info = await js.stream_info(sc.name)
    except nats.js.errors.NotFoundError:
        try:
            await js.add_stream(sc)
        except nats.js.errors.APIError as exc:
            raise SetupError(f"cannot create stream {sc.name} for {sc.subjects}: {exc.description}") from None
        return
    cur = info.config
    if set(cur.subjects or []) != set(sc.subjects or []) or cur.max_age != sc.max_age:
        cur.subjects = sorted(set(cur.subjects or []) | set(sc.subjects or []))
        cur.max_age = sc.max_age
        await js.update_stream(cur)


async def ensure_router_streams(js: JetStreamContext, cfg: Config) -> None:
    """The dead-letter stream, the dedup journal and the parking stream."""
    await _ensure_stream(js, api.StreamConfig(
        name=cfg.parking.stream, subjects=[f"{cfg.parking.subject_prefix}.>"],
        # A work queue: a replayed (acked) record leaves the stream.
        storage=api.StorageType.FILE, retention=api.RetentionPolicy.WORK_QUEUE, max_age=cfg.parking.max_age,
    ))
    await _ensure_stream(js, api.StreamConfig(
        name=cfg.dead_letter.stream, subjects=[f"{cfg.dead_letter.subject_prefix}.>"],
        storage=api.StorageType.FILE, retention=api.RetentionPolicy.LIMITS, max_age=cfg.dead_letter.max_age,
    ))
    await _ensure_stream(js, api.StreamConfig(
        name=cfg.dedup.stream, subjects=dedup_subjects(cfg),
        storage=api.StorageType.FILE, retention=api.RetentionPolicy.LIMITS, max_age=cfg.dedup.window,
    ))


async def ensure_source(js: JetStreamContext, src: Source) -> None:
    """The source stream (when the router may create it) and its durable pull consumer."""
    try:
        info = await js.stream_info(src.stream)
        stream_subjects = set(info.config.subjects or [])
    except nats.js.errors.NotFoundError:
        if not src.create_stream:
            raise SetupError(
                f"source `{src.name}`: stream {src.stream} does not exist and create_stream is false; "
                "create it or set create_stream: true") from None
        try:
            await js.add_stream(api.StreamConfig(
                name=src.stream, subjects=list(src.subjects), storage=api.StorageType.FILE,
                retention=api.RetentionPolicy.LIMITS,
            ))
        except nats.js.errors.APIError as exc:
            raise SetupError(f"source `{src.name}`: cannot create stream {src.stream}: {exc.description}") from None
        stream_subjects = set(src.subjects)

    consumer = api.ConsumerConfig(
        durable_name=src.durable,
        ack_policy=api.AckPolicy.EXPLICIT,
        ack_wait=src.ack_wait,
        max_deliver=-1,  # the router dead-letters by its own rules; never by silent max_deliver drop
        max_ack_pending=max(1000, src.fetch_batch * src.max_inflight_batches * src.ingest_actors * 2),
        max_waiting=512,
        deliver_policy=api.DeliverPolicy.ALL,
    )
    if set(src.subjects) != stream_subjects:
        if len(src.subjects) == 1:
            consumer.filter_subject = src.subjects[0]
        else:
            consumer.filter_subjects = list(src.subjects)
    try:
        await js.add_consumer(src.stream, consumer)
    except nats.js.errors.BadRequestError:
        # Exists with other settings: keep its position, update what may change.
        info = await js.consumer_info(src.stream, src.durable)
        cur = info.config
        cur.ack_wait, cur.max_ack_pending = consumer.ack_wait, consumer.max_ack_pending
        cur.filter_subject, cur.filter_subjects = consumer.filter_subject, consumer.filter_subjects
        try:
            await js.add_consumer(src.stream, cur)
        except nats.js.errors.APIError as exc:
            raise SetupError(f"source `{src.name}`: consumer {src.durable} exists with incompatible settings: "
                             f"{exc.description}") from None
