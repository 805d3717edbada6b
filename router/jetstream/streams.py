"""Streams and consumers the router needs, created or brought up to date at start-up.

Done once by the supervisor, before any actor starts, so a misconfiguration (a stream that does
not exist with ``create_stream: false``, subjects that overlap another stream) fails at set-up
with a clear message rather than at the first message.
"""

from __future__ import annotations

import logging
from typing import Any

import nats.errors
import nats.js.errors
import orjson
from nats.js import JetStreamContext, api

from router.config import Config, Source
from router.jetstream.partitions import consumer_filter, describe, is_partition_transform, partition_transform
from router.wire import journal_subjects

__all__ = ["SetupError", "dedup_subjects", "ensure_router_streams", "ensure_source", "rewind_to_ack_floor"]


log = logging.getLogger(__name__)


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


async def ensure_source(js: JetStreamContext, src: Source) -> bool:
    """The source stream (when the router may create it) and its durable pull consumers (one per
    partition). True when the consumer from before the stream was partitioned still has messages
    to finish (the supervisor has them read before the partition consumers start)."""
    want = partition_transform(src)
    try:
        info = await js.stream_info(src.stream)
        stream_subjects = set(info.config.subjects or [])
        _check_transform(src, info.config.subject_transform, want)
    except nats.js.errors.NotFoundError:
        if not src.create_stream:
            raise SetupError(
                f"source `{src.name}`: stream {src.stream} does not exist and create_stream is false; "
                "create it or set create_stream: true"
                + (f", with the subject transform {describe(want)}" if want else "")) from None
        try:
            await js.add_stream(api.StreamConfig(
                name=src.stream, subjects=list(src.subjects), storage=api.StorageType.FILE,
                retention=api.RetentionPolicy.LIMITS, subject_transform=want,
            ))
        except nats.js.errors.APIError as exc:
            raise SetupError(f"source `{src.name}`: cannot create stream {src.stream}: {exc.description}") from None
        stream_subjects = set(src.subjects)

    if want is None:
        await _ensure_consumer(js, src, src.durable, None if set(src.subjects) == stream_subjects else src.subjects,
                               src.ingest_actors)
        return False
    for k, name in enumerate(src.consumers):
        await _ensure_consumer(js, src, name, [consumer_filter(src, k)], 1)
    return await _unpartitioned_left(js, src)


def _check_transform(src: Source, have: Any, want: api.SubjectTransform | None) -> None:
    """A partitioned source needs its stream to store subjects through the partition transform; an
    unpartitioned one cannot read a stream that does (every subject would carry a partition number)."""
    if want is None:
        if is_partition_transform(have):
            raise SetupError(
                f"source `{src.name}`: stream {src.stream} stores its subjects partitioned (subject transform "
                f"{describe(have)}); set partitions and partition_token to match it, or remove the transform")
        return
    if have is not None and (have.src or ">") == want.src and (have.dest or "").replace(" ", "") == want.dest:
        return
    raise SetupError(
        f"source `{src.name}`: partitions: {src.partitions} needs stream {src.stream} to have the subject transform "
        f"{describe(want)} (it has: {describe(have)}); set it, e.g. `nats stream edit {src.stream} "
        f"--transform-source '{want.src}' --transform-destination '{want.dest}'`, with the router stopped "
        "(README: Several ingest actors, in order)")


async def _ensure_consumer(js: JetStreamContext, src: Source, name: str, filters: list[str] | None,
                           actors: int) -> None:
    consumer = api.ConsumerConfig(
        durable_name=name,
        ack_policy=api.AckPolicy.ALL if src.ack == "watermark" else api.AckPolicy.EXPLICIT,
        ack_wait=src.ack_wait,
        max_deliver=-1,  # the router dead-letters by its own rules; never by silent max_deliver drop
        max_ack_pending=max(1000, src.fetch_batch * src.max_inflight_batches * actors * 2),
        max_waiting=512,
        deliver_policy=api.DeliverPolicy.ALL,
    )
    if filters and len(filters) == 1:
        consumer.filter_subject = filters[0]
    elif filters:
        consumer.filter_subjects = list(filters)
    try:
        info = await js.consumer_info(src.stream, name)
    except nats.js.errors.NotFoundError:
        info = None
    if info is not None and info.config.ack_policy != consumer.ack_policy:
        # Fixed for a consumer's life: a new one, from where this one was.
        floor = info.ack_floor.stream_seq if info.ack_floor else 0
        log.warning("consumer %s on %s acks %s, the source says ack: %s; creating it again from its ack floor "
                    "(sequence %d): messages acked above it come again and dedup drops them", name, src.stream,
                    api.AckPolicy(info.config.ack_policy).value, src.ack, floor + 1)
        await _create_again(js, src.stream, consumer, floor)
        return
    try:
        await js.add_consumer(src.stream, consumer)
    except nats.js.errors.BadRequestError:
        # Exists with other settings: keep its position, update what may change.
        info = await js.consumer_info(src.stream, name)
        cur = info.config
        cur.ack_wait, cur.max_ack_pending = consumer.ack_wait, consumer.max_ack_pending
        cur.filter_subject, cur.filter_subjects = consumer.filter_subject, consumer.filter_subjects
        try:
            await js.add_consumer(src.stream, cur)
        except nats.js.errors.APIError as exc:
            raise SetupError(f"source `{src.name}`: consumer {name} exists with incompatible settings: "
                             f"{exc.description}") from None


async def rewind_to_ack_floor(js: JetStreamContext, stream: str, durable: str) -> int:
    """For a consumer with one reader, started after its reader died: messages that reader had
    fetched and not acked would come back only after ``ack_wait``, behind later messages: a key's
    events would be handled out of order, and with acks by watermark an ack of a later message would
    ack them unseen. The consumer is read again from the first message not acked in order (its ack
    floor), so they come first; messages acked above the floor come again and the dedup state
    suppresses them. Returns how many were out (0: nothing done)."""
    info = await js.consumer_info(stream, durable)
    if not info.num_ack_pending:
        return 0
    floor = info.ack_floor.stream_seq if info.ack_floor else 0
    log.warning("consumer %s on %s: %d messages were out with a reader that stopped; reading again from "
                "sequence %d so they come before later ones", durable, stream, info.num_ack_pending,
                floor + 1)
    if not await _reset_to_ack_floor(js, stream, durable):
        await _create_again(js, stream, info.config, floor)
    return info.num_ack_pending


async def _reset_to_ack_floor(js: JetStreamContext, stream: str, durable: str) -> bool:
    """nats-server 2.14 and later reset a consumer to its ack floor in place, in one step (delete and
    create again, the older way, leaves no consumer at all if interrupted between the two). False:
    no answer (an older server does not answer it at all)."""
    try:
        # nats-py has no call for it yet: the request as the JetStream API defines it.
        reply = await js._nc.request(f"{js._prefix}.CONSUMER.RESET.{stream}.{durable}", b"", timeout=2.0)
    except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
        return False
    error = orjson.loads(reply.data).get("error")
    if error:
        raise nats.js.errors.APIError(description=error.get("description", str(error)))
    return True


async def _create_again(js: JetStreamContext, stream: str, config: api.ConsumerConfig, floor: int) -> None:
    """The consumer deleted and created with ``config``, delivering from the message after ``floor``."""
    config.deliver_policy, config.opt_start_seq = api.DeliverPolicy.BY_START_SEQUENCE, floor + 1
    await js.delete_consumer(stream, config.durable_name)
    await js.add_consumer(stream, config)


async def _unpartitioned_left(js: JetStreamContext, src: Source) -> bool:
    """Whether the source's consumer from before partitioning (``durable``) has messages stored before
    the transform that it has not acked. If so it is narrowed to those subjects (partitioned ones
    have a partition number in front), so it reads only them."""
    try:
        info = await js.consumer_info(src.stream, src.durable)
    except nats.js.errors.NotFoundError:
        try:
            first = await js.get_msg(src.stream, seq=1, subject=src.subjects[0], next=True)
        except nats.js.errors.NotFoundError:
            return False
        log.warning("source %s: stream %s holds messages stored before it was partitioned (from sequence %d) and "
                    "consumer %s, which would say which the router finished, does not exist: the partition "
                    "consumers do not read them", src.name, src.stream, first.seq, src.durable)
        return False
    floor = info.ack_floor.stream_seq if info.ack_floor else 0
    try:
        await js.get_msg(src.stream, seq=floor + 1, subject=src.subjects[0], next=True)
    except nats.js.errors.NotFoundError:
        return False
    if info.config.filter_subject != src.subjects[0] or info.config.filter_subjects:
        await _ensure_consumer(js, src, src.durable, [src.subjects[0]], 1)
    return True
