"""The ingest actor: pull batches from a source's durable consumer and see each one through.

For every fetched batch: plan it (decode, route, encode, group by destination shard), send one
call per (destination, shard) to the sink actors, dead-letter what cannot be decoded or routed,
then ack each message whose destinations are all final, and NAK (with delay) the ones a
destination could not take yet. At most ``max_inflight_batches`` batches are open at once; that
window is the backpressure.

A consumer with ``ack_policy: all`` (the source's ``ack: watermark``; this actor is its one reader)
is acked by watermark instead: batches finish out of order, so ``AckWatermark`` holds each settled
batch until those before it are settled too, then one ack covers them all. A NAKed message holds
the watermark until it comes back and is settled; settled batches waiting meanwhile get progress
acks like open ones.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from typing import Any

import msgspec
import nats.errors
import ray
from nats.js import api

from router.config import Config
from router.control.gc_tuning import tune_gc
from router.control.logging_setup import configure_from_environment
from router.jetstream.ack_watermark import AckWatermark
from router.jetstream.dead_letters import DeadLetterPublisher
from router.ingest.plan import IngestPlanner
from router.jetstream.connection import connect
from router.jetstream.pull_consumer import PullConsumer, seqs_and_published
from router.jetstream.streams import rewind_to_ack_floor
from router.ingest.routing import RouteTable
from router.slo import WorkflowTagger, parse_slos

__all__ = ["IngestActor", "IngestStats"]

log = logging.getLogger(__name__)
# The sink actors import this module too (router.actors): both log as the CLI was told to.
configure_from_environment()


class IngestStats(msgspec.Struct):
    source: str = ""
    fetched: int = 0
    acked: int = 0
    nacked: int = 0
    dead_lettered: int = 0
    unrouted: int = 0
    in_flight: int = 0
    watermark_held: int = 0  # ack: watermark: settled messages waiting for an earlier one to be settled
    watermark_awaited: int = 0  # ack: watermark: NAKed messages not delivered again yet
    fetch_errors: int = 0
    routes_revision: int = 0  # the route table revision this actor routes with
    routed: dict[str, int] = {}  # "<route>/<destination>" -> records that route sent there


@ray.remote(num_cpus=0, max_restarts=-1, max_concurrency=1000)
class IngestActor:
    def __init__(self, cfg: Config, source: str, sink_actor_names: dict[str, list[str]], index: int = 0,
                 revision: int = 0, partition: int | None = None) -> None:
        self.cfg = cfg
        self.src = next(s for s in cfg.sources if s.name == source)
        self.index = index
        # The one partition whose consumer this actor reads; None: the source's `durable` (not partitioned,
        # or the messages stored before the stream was partitioned)
        self.partition = partition
        self.stats_ = IngestStats(source=source)
        self._sender = uuid.uuid4().hex  # per incarnation: a restarted actor counts its calls from 0 again
        self._seqs: dict[tuple[str, int], int] = {}
        self._unanswered: dict[tuple[str, int], set[int]] = {}  # per sink actor, this actor's calls still open
        self.workers: dict[str, list[Any]] = {}
        self._gc_tuned = False
        try:
            self._use(cfg, sink_actor_names, revision)
        except ValueError:  # restarted by Ray after a reload replaced those sink actors: the supervisor
            pass            # hands it the running revision (``use_revision``) before it runs again
        self._stopping = asyncio.Event()
        self._running = asyncio.Event()  # cleared while paused for a reload
        self._running.set()
        self._fetching = False
        self._open: dict[int, tuple[float, list[Any]]] = {}  # batch id -> (fetched at, messages)
        self._batch_ids = 0
        self.consumer: PullConsumer | None = None
        self.watermark: AckWatermark | None = None  # acks by watermark (the consumer acks all below)

    def _next_seq(self, dest: str, shard: int) -> tuple[int, int]:
        """This actor's count of calls to one sink actor: it puts them in order at the other end; and
        the oldest call to it still open, where a sink actor that has not seen this one yet starts
        (the first two calls can arrive in either order)."""
        n = self._seqs.get((dest, shard), 0)
        self._seqs[(dest, shard)] = n + 1
        open_calls = self._unanswered.setdefault((dest, shard), set())
        open_calls.add(n)
        return n, min(open_calls)

    def _submit(self, workers: dict[str, list[Any]], dest: str, shard: int, records: Any,
                encoded: dict[int, bytes]) -> tuple[Any, Any]:
        """``encoded``: the batches encoded for this plan so far, by id (shards that get the same
        records share one batch, and its encoding)."""
        seq, floor = self._next_seq(dest, shard)
        blob = encoded.get(id(records))
        if blob is None:
            blob = encoded[id(records)] = records.encode()
        return (dest, shard, seq), workers[dest][shard].submit.remote(blob, self._sender, seq, floor)

    def _use(self, cfg: Config, sink_actor_names: dict[str, list[str]], revision: int) -> None:
        # By name, not by handle: a restarted ingest actor finds the sink actors again by itself.
        workers = {d: [ray.get_actor(n) for n in names] for d, names in sink_actor_names.items()}
        slos = [s for s in parse_slos(cfg.slo, None, lambda path, msg: ValueError(f"{path}: {msg}"))
                if s.destination in workers]
        planner = IngestPlanner(self.src.name, RouteTable(cfg.route_list), {d: len(ws) for d, ws in workers.items()},
                                revision, WorkflowTagger(slos))
        # One assignment each, between two batches: a batch is planned and sent with one table.
        self.cfg, self.workers, self.planner = cfg, workers, planner
        self.stats_.routes_revision = revision

    async def use_revision(self, cfg: Config, sink_actor_names: dict[str, list[str]], revision: int) -> bool:
        """Route with a new revision of the live config from the next batch on; an older revision than
        the one in use is ignored (False)."""
        if revision < self.stats_.routes_revision:
            return False
        self._use(cfg, sink_actor_names, revision)
        return True

    async def pause(self) -> None:
        """Stop fetching and return once every open batch is settled (acked or NAKed)."""
        self._running.clear()
        while self._open or self._fetching:
            await asyncio.sleep(0.01)

    async def resume(self) -> None:
        self._running.set()

    async def ready(self) -> bool:
        """Answered once the actor is up: its process started, the sink actors found and reached
        once (the first batch does not wait for Ray to open a channel to each), and what start-up
        built frozen out of the collector (nor for that full collection, about 40 ms)."""
        await asyncio.gather(*(w.pid.remote() for shards in self.workers.values() for w in shards))
        self._tune_gc()
        return True

    def _tune_gc(self) -> None:
        if not self._gc_tuned:  # once a process: ``ready`` or, in a process Ray restarted, ``run``
            self._gc_tuned = True
            tune_gc()

    async def pid(self) -> int:
        return os.getpid()

    async def stats(self) -> IngestStats:
        self.stats_.in_flight = sum(len(m) for _, m in self._open.values())
        mark = self.watermark
        self.stats_.watermark_held = sum(map(len, mark.held())) if mark is not None else 0
        self.stats_.watermark_awaited = mark.awaited if mark is not None else 0
        return msgspec.structs.replace(self.stats_)

    async def stop(self) -> None:
        """Stop fetching; ``run`` returns once every open batch is acked or NAKed."""
        self._stopping.set()
        self._running.set()  # a paused loop wakes up to see that it stops

    async def run(self) -> IngestStats:
        src = self.src
        nc = await connect(self.cfg.nats, f"router-ingest-{src.name}-{self.index}")
        js = nc.jetstream()
        dlq = DeadLetterPublisher(js, self.cfg.dead_letter.stream, self.cfg.dead_letter.subject_prefix)
        durable = src.durable if self.partition is None else src.consumers[self.partition]
        # The consumer's own ack policy decides: the config may have changed since it was made.
        by_watermark = (await js.consumer_info(src.stream, durable)).config.ack_policy == api.AckPolicy.ALL
        if by_watermark or any(r.ordering_key for r in self.cfg.route_list):  # this actor is its one reader
            await rewind_to_ack_floor(js, src.stream, durable)
        self.watermark = await self._new_watermark(js, durable) if by_watermark else None
        consumer = self.consumer = PullConsumer(nc, src.stream, durable, partitioned=self.partition is not None)
        await consumer.start()
        self._tune_gc()
        window = asyncio.Semaphore(src.max_inflight_batches)
        tasks: set[asyncio.Task] = set()  # batches in hand; with none, a fetch need not wait to fill

        def settled(task: asyncio.Task) -> None:
            tasks.discard(task)
            if not tasks:
                consumer.hurry()

        keepalive = asyncio.get_running_loop().create_task(self._progress_acks())
        try:
            while not self._stopping.is_set():
                await self._running.wait()
                if self.watermark is not None and self.watermark.overdue(time.monotonic()):
                    await self._read_again_from_ack_floor(js, durable, tasks)
                    continue
                await window.acquire()
                if self._stopping.is_set():
                    window.release()
                    break
                if not self._running.is_set():  # paused while waiting for a slot
                    window.release()
                    continue
                self._fetching = True
                try:
                    msgs = await consumer.fetch(src.fetch_batch, expires=src.fetch_wait, fill=bool(tasks))
                except (nats.errors.Error, OSError) as exc:
                    # NATS restarting or unreachable: the client reconnects by itself.
                    self._fetching = False
                    window.release()
                    self.stats_.fetch_errors += 1
                    log.warning("ingest %s: fetch failed (%r); retrying", src.name, exc)
                    await asyncio.sleep(0.5)
                    continue
                if not msgs:
                    self._fetching = False
                    window.release()  # nothing to fetch right now
                    continue
                self.stats_.fetched += len(msgs)
                bid = self._batch_ids = self._batch_ids + 1
                self._open[bid] = (time.monotonic(), msgs)  # open before the fetch counts as over (pause)
                self._fetching = False
                seqs, published, dseqs = seqs_and_published(m.reply for m in msgs)
                mark = self.watermark  # the batch settles with the one it was fetched under
                if mark is not None:
                    mark.fetched(bid, seqs, dseqs, msgs)
                task = asyncio.get_running_loop().create_task(
                    self._see_through(bid, msgs, seqs, published, mark, dlq, window))
                tasks.add(task)
                task.add_done_callback(settled)
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            keepalive.cancel()
            try:
                await consumer.stop()
                await nc.drain()
            except Exception:  # closing on a dead connection: nothing left to flush
                pass
        return await self.stats()

    async def _see_through(self, bid: int, msgs: list[Any], seqs: list[int], published: list[int],
                           mark: AckWatermark | None, dlq: DeadLetterPublisher, window: asyncio.Semaphore) -> None:
        try:
            try:
                failed = await self._route_and_deliver(msgs, seqs, published, dlq)
            except Exception:
                # A bug past the per-message guards: NAK the whole batch (with delay) rather than leave
                # it unsettled until ack_wait; dedup stops a second delivery of what already went out.
                log.exception("ingest %s: a batch of %d failed; NAKing it", self.src.name, len(msgs))
                failed = set(range(len(msgs)))
            await self._settle(bid, msgs, seqs, failed, mark)
        finally:
            self._open.pop(bid, None)
            window.release()

    async def _route_and_deliver(self, msgs: list[Any], seqs: list[int], published: list[int],
                                 dlq: DeadLetterPublisher) -> set[int]:
        """Plan the batch, dead-letter what cannot go, deliver the rest; the indexes of the messages
        not final yet (to be redelivered)."""
        planner, workers = self.planner, self.workers  # one revision for the whole batch
        try:
            plan = planner.plan(msgs, seqs, published)
        except Exception:
            # The planner rejects failing messages itself; should it still raise, find the message
            # at fault one by one (slow, but only for this batch) instead of losing the batch.
            log.exception("ingest %s: planning a batch of %d failed; planning message by message",
                          self.src.name, len(msgs))
            plan = planner.plan_each(msgs, seqs, published)

        rejected = list(plan.rejected)
        if self.cfg.on_unrouted == "dead_letter":
            rejected += [(i, "no route matches this event") for i in plan.unrouted]
        letters = [dlq.ingest_failure(self.src.name, msgs[i].data, reason, subject=msgs[i].subject,
                                      stream_seq=seqs[i], headers=msgs[i].headers)
                   for i, reason in rejected]
        encoded: dict[int, bytes] = {}
        calls = [(idx, *self._submit(workers, dest, shard, records, encoded))
                 for (dest, shard), (records, idx) in plan.work.items()]
        try:
            return await self._finish(msgs, plan, rejected, letters, calls, dlq)
        finally:
            for _, (dest, shard, seq), _ in calls:
                self._unanswered[(dest, shard)].discard(seq)

    async def _finish(self, msgs: list[Any], plan: Any, rejected: list[tuple[int, str]], letters: list[Any],
                      calls: list[tuple[Any, Any, Any]], dlq: DeadLetterPublisher) -> set[int]:
        failed: set[int] = set()
        # Letter by letter: one that cannot be stored is NAKed alone (redelivered later), the
        # others are acked. An oversized one is cut to fit by the publisher, never refused for size.
        outcomes = await dlq.publish_each(letters)
        not_stored = [(i, err) for (i, _), err in zip(rejected, outcomes) if err is not None]
        if not_stored:
            log.warning("ingest %s: %d dead letters not stored (%r); those messages will be redelivered",
                        self.src.name, len(not_stored), not_stored[0][1])
            failed.update(i for i, _ in not_stored)
        self.stats_.dead_lettered += sum(1 for i, _ in plan.rejected if i not in failed)
        self.stats_.unrouted += sum(1 for i in plan.unrouted if i not in failed)
        routed = self.stats_.routed
        for (route, dest), n in plan.routed.items():
            routed[f"{route}/{dest}"] = routed.get(f"{route}/{dest}", 0) + n

        results = await asyncio.gather(*(self._answer(call, ref) for _, call, ref in calls), return_exceptions=True)
        for (idx, _, _), res in zip(calls, results):
            if isinstance(res, BaseException):
                log.warning("ingest %s: %d records not final, will be redelivered: %s",
                            self.src.name, len(idx), str(res).splitlines()[-1][:300])
                failed.update(idx)
        return failed

    async def _answer(self, call: tuple[str, int, int], ref: Any) -> Any:
        """A sink actor's answer to one call; from then on the call is not open (the floor a sink
        actor that restarts starts from moves past it at once, not when the whole batch is done)."""
        dest, shard, seq = call
        try:
            return await ref
        finally:
            self._unanswered[(dest, shard)].discard(seq)

    async def _settle(self, bid: int, msgs: list[Any], seqs: list[int], failed: set[int],
                      mark: AckWatermark | None) -> None:
        delay, consumer = self.src.redelivery_delay, self.consumer
        if mark is not None:
            back = [msgs[i] for i in sorted(failed)]
            if back:  # before the NAK goes out: no ack may pass them
                mark.given_back(bid, [seqs[i] for i in failed], [m for i, m in enumerate(msgs) if i not in failed],
                                time.monotonic())
            point = mark.settled(bid)
            self.stats_.nacked += len(back)
            self.stats_.acked += len(msgs) - len(back)  # acked, or held to be acked with a later batch
            try:
                if back:
                    await consumer.nak_many(back, delay)
                if point is not None:
                    await consumer.ack_all(point)
            except nats.errors.Error as exc:
                # Not sent: a later ack covers these; a lost NAK means a redelivery after ack_wait.
                log.warning("ingest %s: ack failed (%s)", self.src.name, exc)
            return
        try:
            if not failed:  # the usual case: the whole batch at once
                await consumer.ack_many(msgs)
                self.stats_.acked += len(msgs)
                return
            await consumer.settle_each(msgs, failed, delay)
            self.stats_.nacked += len(failed)
            self.stats_.acked += len(msgs) - len(failed)
        except nats.errors.Error as exc:
            # Not acked: JetStream redelivers after ack_wait, and dedup stops a second delivery.
            log.warning("ingest %s: ack failed (%s)", self.src.name, exc)

    async def _read_again_from_ack_floor(self, js: Any, durable: str, tasks: set[asyncio.Task]) -> None:
        """A delivery went missing (lost with a broken connection, or taken by another reader), or a
        NAKed message did not come back (``AckWatermark.broken``): no ack is safe any more. The
        batches in hand finish, then the consumer is read again from its ack floor; what comes twice,
        dedup drops."""
        log.warning("ingest %s: a delivery of consumer %s went missing or did not come back; reading it again "
                    "from its ack floor", self.src.name, durable)
        if tasks:
            await asyncio.gather(*list(tasks), return_exceptions=True)
        assert self.consumer is not None
        self.consumer.discard_buffered()
        await rewind_to_ack_floor(js, self.src.stream, durable)
        self.watermark = await self._new_watermark(js, durable)

    async def _new_watermark(self, js: Any, durable: str) -> AckWatermark:
        # A NAKed message comes back after redelivery_delay, or after ack_wait if the NAK was lost;
        # much later than both, it is gone (e.g. past the stream's limits).
        info = await js.consumer_info(self.src.stream, durable)
        return AckWatermark(info.delivered.consumer_seq + 1,
                            patience=self.src.ack_wait + self.src.redelivery_delay + 30.0)

    async def _progress_acks(self) -> None:
        """Tell JetStream that batches still open are being worked on, before ``ack_wait`` runs out."""
        every = max(self.src.ack_wait / 3.0, 0.5)
        while True:
            await asyncio.sleep(every)
            horizon = time.monotonic() - every
            waiting = [msgs for fetched_at, msgs in list(self._open.values()) if fetched_at <= horizon]
            mark = self.watermark
            if mark is not None:  # and the settled ones waiting for an ack, never a NAKed message
                waiting = [mark.without_awaited(msgs) for msgs in waiting + mark.held()]
            for msgs in waiting:
                try:
                    await self.consumer.in_progress_many(msgs)
                except Exception:  # best effort; redelivery is still safe
                    pass
