"""A sink actor: one shard (by idempotency-key hash) of one destination's pool.

It owns the shard's dedup index (rebuilt from the JetStream journal when it starts, so a Ray
restart loses nothing), the sink (HTTP or NATS) and the delivery loop. Start-up is lazy and
happens inside the first call, so an actor that Ray restarts is ready again by itself.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import ray

from router.config import Config
from router.control.gc_tuning import tune_gc
from router.jetstream.dead_letters import DeadLetterPublisher
from router.delivery.call_order import CallOrder
from router.delivery.dedup_index import DedupIndex
from router.jetstream.dedup_journal import DedupJournal
from router.delivery.shard import DestinationShard, ShardPorts
from router.delivery.stats import DestinationStats, SubmitResult
from router.jetstream.connection import connect
from router.jetstream.parking import ParkingLot
from router.record_batch import RecordBatch
from router.policies.rate_limit import TokenBucket
from router.policies.shared_limits import LeasedTokenBucket, SharedLimitsClient, SharedRetryAfterGate, lease_size
from router.sinks import SINK_KINDS
from router.actors.destination_limits import RayLimits

__all__ = ["DestinationWorker"]

_TURN_WAIT = 5.0  # seconds a call waits for an earlier call of the same ingest actor that has not come


@ray.remote(num_cpus=0, max_restarts=-1, max_concurrency=10_000)
class DestinationWorker:
    def __init__(self, cfg: Config, destination: str, shard: int, revision: int = 0,
                 limits: str | None = None) -> None:
        self.cfg = cfg
        # The name of the destination's ``DestinationLimits`` actor when the pool shares its rate
        # limit and Retry-After (``scope: destination``); none: each shard keeps its own.
        self._limits_actor = RayLimits(limits) if limits is not None else None
        self.limits = SharedLimitsClient(self._limits_actor, None) if self._limits_actor is not None else None
        self.name = destination
        self.dest = cfg.destinations[destination]
        self.shard = shard
        self._lock = asyncio.Lock()
        self._shard: DestinationShard | None = None
        self._nc = None
        self.loaded_keys = 0
        self.revision = revision  # of the live config whose settings ``dest`` holds
        self._call_order = CallOrder(f"{destination}/{shard}", _TURN_WAIT)  # per ingest actor, its calls in order

    async def _ready(self) -> DestinationShard:
        if self._shard is not None:
            return self._shard
        async with self._lock:
            if self._shard is None:
                cfg, dest = self.cfg, self.dest
                self._nc = await connect(cfg.nats, f"router-sink-{self.name}-{self.shard}")
                js = self._nc.jetstream()
                index = DedupIndex(cfg.dedup.window, cfg.dedup.max_keys_per_shard)
                journal = DedupJournal(js, cfg.dedup.stream, self.name)
                pool, shard = dest.pool_size, self.shard
                self.loaded_keys = await journal.load(index, lambda h: pool == 1 or h % pool == shard)
                sink = SINK_KINDS[dest.kind].create(self.name, dest, self._nc)
                await sink.start()
                dlq = DeadLetterPublisher(js, cfg.dead_letter.stream, cfg.dead_letter.subject_prefix)
                parking = ParkingLot(self._nc, cfg.parking.stream, cfg.parking.subject_prefix, self.name, shard)
                gate = (SharedRetryAfterGate(self.limits)
                        if self.limits is not None and dest.retry_after_scope == "destination" else None)
                started = DestinationShard(self.name, dest, ShardPorts(sink, journal, dlq, parking), index,
                                           gate=gate, make_limiter=self._limiter)
                await started.start()
                self._shard = started
                tune_gc()  # what start-up built (modules, Ray, the shard) stays for the life of the process
        return self._shard

    def _limiter(self, dest: Any) -> Any:
        """The shard's rate limiter: leases from the pool's bucket, or a bucket of its own."""
        rate = dest.rate_limit
        if rate is None:
            return None
        if rate.scope == "destination" and self.limits is not None:
            self.limits.lease_size = lease_size(rate.per_second)
            return LeasedTokenBucket(self.limits)
        return TokenBucket(rate.per_second, rate.burst)

    async def ready(self) -> int:
        """Start (load the dedup shard); returns how many keys it remembered."""
        await self._ready()
        return self.loaded_keys

    async def submit(self, batch: bytes, sender: str = "", seq: int = 0, floor: int | None = None) -> SubmitResult:
        """A ``RecordBatch`` in its wire form; returns once every record in it is final.

        ``sender`` / ``seq``: the ingest actor and its count of calls to this shard. Ray does not keep
        the order of calls to an async actor, so calls take their place in the queue in ``seq`` order
        (records with an ordering key depend on it); a gap waits at most ``_TURN_WAIT`` seconds.
        ``floor``: the sender's oldest call to this shard still open; a sender not seen here yet starts
        there, so its first call waits for an earlier one that arrives after it."""
        shard = await self._ready()
        records = RecordBatch.decode(batch)
        if not sender:
            return await shard.submit(records, records.revision)
        await self._call_order.wait_turn(sender, seq, seq if floor is None else min(floor, seq))
        admitted = asyncio.get_running_loop().create_future()
        task = asyncio.get_running_loop().create_task(shard.submit(records, records.revision, admitted))
        try:
            await asyncio.wait([admitted, task], return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._call_order.done(sender, seq)
        return await task

    async def reconfigure(self, dest: Any, revision: int) -> None:
        """New settings for this destination, applied in place (see ``DestinationShard.reconfigure``)."""
        self.dest, self.revision = dest, revision
        if self.limits is not None and self.shard == 0:  # one shard retunes the pool's bucket
            rate = dest.rate_limit
            await self._limits_actor.configure(rate.per_second if rate else None, rate.burst if rate else 1)
        if self._shard is not None:
            await self._shard.reconfigure(dest)

    async def stats(self) -> DestinationStats:
        st = self._shard.snapshot() if self._shard is not None else DestinationStats()
        st.config_revision = self.revision
        return st

    async def pid(self) -> int:
        return os.getpid()

    async def close(self) -> DestinationStats:
        """Deliver what is queued, close connections; the final stats."""
        if self._shard is None:
            return DestinationStats()
        await self._shard.close()
        await self._shard.ports.sink.close()
        if self._nc is not None:
            await self._nc.close()  # everything was awaited above; a drain would wait on idle pull requests
        return self._shard.snapshot()
