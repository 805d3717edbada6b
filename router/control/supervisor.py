"""The supervisor: sets up JetStream, starts the actors, keeps them running, drains on stop.

Start order follows the data flow backwards: streams and consumers first, then the sink actors
(each loads its dedup shard before it takes a record), then the ingest actors. Stop order is
the data flow forwards: ingest stops fetching and sees its open batches through (acked or
NAKed), then the sink actors deliver what they hold and close.

Live config: the route table and the destinations' settings come in revisions from a NATS KV
bucket (``live.bucket`` / ``live.key``). At start the config file's live part becomes a new
revision unless the latest one already equals it; from then on the supervisor watches the key
and applies each newer revision (``apply``), or refuses it and keeps the one running.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from typing import Any

import msgspec
import ray

from router.actors.destination_worker import DestinationWorker
from router.actors.ingest import IngestActor, IngestStats
from router.actors.destination_limits import DestinationLimits

from router.config import Config, ConfigError, load_config
from router.control.reload import Change, compare, decode_live, encode_live, live_part, with_live
from router.control.actor_env import actor_options
from router.control.ingest_autoscale import IngestScaler
from router.delivery.stats import DestinationStats
from router.histogram import Histogram, merge_into
from router.jetstream.streams import ensure_router_streams, ensure_source
from router.jetstream.connection import connect
from router.jetstream.revisions import RevisionStore

__all__ = ["RefusedChange", "RouterStats", "Supervisor", "init_ray"]

log = logging.getLogger(__name__)


class RouterStats(msgspec.Struct):
    sources: dict[str, IngestStats]
    destinations: dict[str, DestinationStats]
    routes_revision: int = 0  # the live config revision running
    reload_failures: int = 0  # revisions refused since start (the one running stayed)
    last_reload_error: str = ""
    # Per source, from the durable consumer's info (the service fills them in; -1: not known)
    consumer_pending: dict[str, int] = {}  # messages in the stream not yet delivered to the router
    consumer_ack_pending: dict[str, int] = {}  # delivered, not yet acked
    # Per partitioned source, the same for each partition's consumer (index: partition)
    partition_pending: dict[str, list[int]] = {}
    partition_ack_pending: dict[str, list[int]] = {}
    actors_down: list[str] = []  # actors that did not answer the last stats call (dead or restarting)


DIRECT_CALL_BYTES = 4 * 1024 * 1024
START_PROGRESS_EVERY = 30.0  # seconds between "not up yet" lines while actors start


async def wait_until_up(ready: dict[str, Any], every: float = START_PROGRESS_EVERY) -> None:
    """Wait for every actor's ``ready`` call (name -> its awaitable); the first start error is
    raised. No deadline: a sink actor loading a large dedup shard is slow, not stuck. While some
    are not up, say which every ``every`` seconds and where to look."""
    waiting = {asyncio.ensure_future(r): name for name, r in ready.items()}
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        while waiting:
            done, _ = await asyncio.wait(waiting, timeout=every, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                waiting.pop(task)
                task.result()
            if waiting:  # the wait timed out (an error would have been raised above)
                names = sorted(waiting.values())
                log.warning("%d actor(s) not up after %.0f s: %s%s. An actor Ray cannot place waits for "
                            "resources without an error (`ray status` shows what is pending); a sink actor "
                            "loading a large dedup shard takes longer (its log shows the load).",
                            len(names), loop.time() - started, ", ".join(names[:5]),
                            f" and {len(names) - 5} more" if len(names) > 5 else "")
    finally:
        for task in waiting:
            task.cancel()


def init_ray(cfg: Config) -> None:
    if ray.is_initialized():
        return
    kwargs: dict[str, Any] = {
        "namespace": cfg.ray.namespace,
        "include_dashboard": False,
        "logging_level": logging.WARNING,
        "log_to_driver": True,
    }
    if cfg.ray.address:
        kwargs["address"] = cfg.ray.address
    else:
        kwargs["object_store_memory"] = cfg.ray.object_store_memory or 256 * 1024 * 1024
        # Ray runs workers at nice 15 by default; here the actors are the workload, and they
        # should not lose the CPU to the NATS server and publishers they keep pace with.
        os.environ.setdefault("RAY_worker_niceness", "0")
        # A batch of records for a sink actor (a few hundred KB) goes inside the call, not through
        # the object store: above Ray's 100 KB default each call was a put, a raylet round trip and
        # a copy (ingest CPU -8%, Ray's own -80%, +7% events/s in the NATS benchmark). A cluster sets
        # the same with RAY_max_direct_call_object_size on its nodes (the Helm chart does).
        kwargs["_system_config"] = {"max_direct_call_object_size": DIRECT_CALL_BYTES}
        _local_ray_on_loopback(kwargs)
    ray.init(**kwargs)


def _local_ray_on_loopback(kwargs: dict[str, Any]) -> None:
    """A local Ray serves only this process: its ports (GCS, raylet, object manager, workers,
    agents) listen on loopback instead of every interface.

    Ray turns a loopback ``_node_ip_address`` into the machine's routable address unless its
    single-machine switch ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` is set (default on macOS and
    Windows); the switch is read by Ray's child processes from the environment, and by this
    process from a constant Ray set when it was imported.
    """
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    try:
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False
    except (ImportError, AttributeError):  # a Ray without the switch: it picks its own address
        return
    kwargs["_node_ip_address"] = "127.0.0.1"


_SEVERITY = {"closed": 0, "half_open": 1, "open": 2}
# What a live reload cannot change: a new value here takes a restart.
_STATIC_SECTIONS = ("sources", "nats", "dedup", "dead_letter", "parking", "metrics", "ray", "live", "on_unrouted", "slo")


def _sum_structs(items: list[Any], cls: type) -> Any:
    """Counters add up across a pool; a breaker state reports the pool's worst, a revision the oldest."""
    out = cls()
    for n, it in enumerate(items):
        for f in cls.__struct_fields__:
            v = getattr(it, f)
            if f.endswith("_revision"):
                setattr(out, f, v if n == 0 else min(v, getattr(out, f)))
            elif isinstance(v, Histogram):
                getattr(out, f).merge(v)
            elif isinstance(v, dict):
                merged = getattr(out, f)
                for k, x in v.items():
                    if isinstance(x, Histogram):
                        merge_into(merged, {k: x})
                    else:
                        merged[k] = merged.get(k, 0) + x
            elif isinstance(v, int):
                setattr(out, f, getattr(out, f) + v)
            elif f == "breaker_state" and _SEVERITY.get(v, 0) > _SEVERITY.get(getattr(out, f), 0):
                setattr(out, f, v)
    return out


class RefusedChange(Exception):
    """A revision the running router cannot take as it stands (the message says what to do)."""


class Supervisor:
    def __init__(self, cfg: Config, watch_revisions: bool = True) -> None:
        self.cfg = cfg
        self.workers: dict[str, list[Any]] = {}
        self.names: dict[str, list[str]] = {}  # destination -> its sink actors' names, by shard
        self.ingest: list[tuple[str, Any]] = []
        self._runs: dict[str, asyncio.Task] = {}  # ingest actor name -> its keep-running loop
        self.limits: dict[str, Any] = {}  # destination -> its DestinationLimits actor (pools of 2 or more)
        self._ingest_serial = 0  # ingest actor names stay unique as autoscaling adds and removes them
        self._autoscaler: asyncio.Task | None = None
        self._ingest_names: dict[str, tuple[str, Any]] = {}  # ingest actor name -> (source, actor)
        self._retired_ingest: list[tuple[str, IngestStats]] = []  # final stats of actors autoscaling removed
        self._stopping = False
        self.run_id = uuid.uuid4().hex[:8]  # actor names are unique per Ray namespace
        self._generation = 0  # a rebuilt destination's new sink actors get new names
        self.revision = 0
        self.reload_failures = 0
        self.last_reload_error = ""
        self._watch_revisions = watch_revisions
        self._watcher: asyncio.Task | None = None
        self._watch_stop = asyncio.Event()
        self._apply_lock = asyncio.Lock()
        self._last_stats: dict[str, Any] = {}  # actor -> its last answer to `stats` (see `_answer`)

    async def start(self) -> None:
        cfg = self.cfg
        nc = await connect(cfg.nats, "router-supervisor")
        try:
            js = nc.jetstream()
            await ensure_router_streams(js, cfg)
            unpartitioned_left = [src for src in cfg.sources if await ensure_source(js, src)]
            self.revision = await self._seed_revision(js)
        finally:
            await nc.close()
        init_ray(cfg)
        # Fail at start-up, not at the first record, if a sink actor cannot load its dedup shard.
        await self._start_sinks(cfg, list(cfg.destinations))
        started = []
        for src in cfg.sources:
            if src in unpartitioned_left:
                self._runs[f"unpartitioned-{src.name}"] = asyncio.get_running_loop().create_task(
                    self._finish_unpartitioned(src))
            elif src.partitions > 1:
                started += [self._add_ingest(src.name, k) for k in range(src.partitions)]
            else:
                started += [self._add_ingest(src.name) for _ in range(src.ingest_actors)]
        # Started means every actor is up: an ingest actor's process takes a second or so to start and
        # import on a small machine, and one that cannot start fails here, like a sink actor.
        await wait_until_up({name: self._ingest_names[name][1].ready.remote() for name in started})
        scalers = {src.name: s for src in cfg.sources if (s := IngestScaler.for_source(src)) is not None}
        if scalers:
            self._autoscaler = asyncio.get_running_loop().create_task(self._autoscale(scalers))
        if self._watch_revisions:
            self._watcher = asyncio.get_running_loop().create_task(self._watch())

    async def _start_sinks(self, cfg: Config, destinations: list[str], revision: int | None = None) -> None:
        """Start the sink actors of these destinations and wait until each has loaded its dedup shard."""
        self._generation += 1
        # Secrets the config names reach the actors on whichever node Ray places them.
        secrets = actor_options(cfg, kind="sink")
        for dest in destinations:
            d = cfg.destinations[dest]
            limits = None  # the sink actors find it by name
            if d.pool_size > 1:  # one bucket and one Retry-After for the whole pool, wherever its shards run
                rate = d.rate_limit
                limits = f"router-{self.run_id}-limits-{dest}-g{self._generation}"
                self.limits[dest] = DestinationLimits.options(name=limits).remote(  # no secrets, no CPU
                    rate.per_second if rate else None, rate.burst if rate else 1)
            self.names[dest] = [f"router-{self.run_id}-sink-{dest}-g{self._generation}-{shard}"
                                for shard in range(d.pool_size)]
            self.workers[dest] = [DestinationWorker.options(name=n, **secrets).remote(
                                      cfg, dest, shard, self.revision if revision is None else revision, limits)
                                  for shard, n in enumerate(self.names[dest])]
        await wait_until_up({n: w.ready.remote() for dest in destinations
                             for n, w in zip(self.names[dest], self.workers[dest])})

    async def _stop_sinks(self, destinations: list[str]) -> None:
        """Deliver what they hold, then stop them (ingest no longer sends to them)."""
        workers = [w for dest in destinations for w in self.workers.pop(dest, [])]
        for dest in destinations:
            self.names.pop(dest, None)
        await asyncio.gather(*(w.close.remote() for w in workers), return_exceptions=True)
        for w in workers + [self.limits.pop(d) for d in destinations if d in self.limits]:
            ray.kill(w, no_restart=True)

    # -- live config --------------------------------------------------------------------------------

    def _store(self, js: Any) -> RevisionStore:
        return RevisionStore(js, self.cfg.live.bucket, self.cfg.live.key)

    async def _seed_revision(self, js: Any) -> int:
        """The file's live part, as the latest revision (a new one unless the latest equals it)."""
        store = await self._store(js).open()
        mine = encode_live(live_part(self.cfg))
        latest = await store.latest()
        if latest is not None and latest.value == mine:
            return latest.number
        number = await store.put(mine)
        if latest is not None:
            log.info("live config: the config file differs from revision %d; it is revision %d now",
                     latest.number, number)
        return number

    async def _watch(self) -> None:
        """Apply each newer revision of the live config as it is stored; survive NATS restarts."""
        while not self._watch_stop.is_set():
            try:
                nc = await connect(self.cfg.nats, "router-live-config")
                try:
                    store = await self._store(nc.jetstream()).open()
                    async for rev in store.watch(self._watch_stop):
                        if rev.number > self.revision:
                            await self.apply_revision(rev.number, rev.value)
                finally:
                    await nc.close()
            except Exception as exc:
                if self._watch_stop.is_set():
                    return
                log.warning("live config: watching revisions failed (%s); retrying in 2s", exc)
                await asyncio.sleep(2.0)

    async def reload_file(self, path: str) -> int | None:
        """Store the live part of the config file at ``path`` as a new revision (the watcher applies it);
        a file that does not load or does not fit the running config is refused and counted."""
        try:
            new = load_config(path)
            with_live(self.cfg, live_part(new), path)
        except ConfigError as exc:
            self.reload_failures += 1
            self.last_reload_error = str(exc)
            log.error("live config: %s refused, revision %d keeps running: %s", path, self.revision, exc,
                      extra={"event": "reload_refused", "revision": self.revision, "reason": str(exc)})
            return None
        static = [k for k in _STATIC_SECTIONS if getattr(new, k) != getattr(self.cfg, k)]
        if static:
            log.warning("live config: %s: `%s` changed; that takes a restart, the rest applies now",
                        path, "`, `".join(static))
        nc = await connect(self.cfg.nats, "router-live-config-put")
        try:
            store = await self._store(nc.jetstream()).open()
            value = encode_live(live_part(new))
            latest = await store.latest()
            if latest is not None and latest.value == value:
                log.info("live config: %s: routes and destinations unchanged (revision %d)", path, latest.number)
                return latest.number
            number = await store.put(value)
        finally:
            await nc.close()
        log.info("live config: %s stored as revision %d", path, number)
        return number

    async def apply_revision(self, number: int, value: bytes) -> bool:
        """Check a stored revision against the running config and apply it; on any problem keep the
        running revision, log why and count it (``reload_failures``)."""
        where = f"{self.cfg.live.bucket}/{self.cfg.live.key} revision {number}"
        try:
            new = with_live(self.cfg, decode_live(value, where), where)
            change = await self.apply(new, number)
        except Exception as exc:  # refused, or failed half-way: say so and count it; the watcher goes on
            self.reload_failures += 1
            self.last_reload_error = str(exc)
            log.error("live config: %s refused, revision %d keeps running: %s", where, self.revision, exc,
                      extra={"event": "reload_refused", "revision": self.revision, "reason": str(exc)})
            return False
        log.info("live config: revision %d applied (%s)", number, change.describe(),
                 extra={"event": "reload", "revision": number})
        return True

    async def apply(self, new: Config, revision: int) -> Change:
        """Switch the running router to ``new`` (same static parts, a new live part); see
        ``router/control/reload.py`` for what each kind of change costs."""
        async with self._apply_lock:
            if revision <= self.revision:
                raise RefusedChange(f"revision {revision} is not newer than the running {self.revision}")
            change = compare(self.cfg, new)
            await self._refuse_orphaned_parks(change, new)
            pause = change.needs_pause
            if pause:
                await asyncio.gather(*(a.pause.remote() for _, a in self.ingest))
            try:
                for dest in change.retuned:
                    await asyncio.gather(*(w.reconfigure.remote(new.destinations[dest], revision)
                                           for w in self.workers[dest]))
                await self._stop_sinks(change.removed + change.rebuilt)
                if change.added or change.rebuilt:
                    await self._start_sinks(new, change.added + change.rebuilt, revision)
                await asyncio.gather(*(a.use_revision.remote(new, self.names, revision) for _, a in self.ingest))
                self.cfg, self.revision = new, revision
            finally:
                if pause:
                    await asyncio.gather(*(a.resume.remote() for _, a in self.ingest))
            return change

    async def _refuse_orphaned_parks(self, change: Change, new: Config) -> None:
        """Parked records live per (destination, shard), placed by the old pool size: a destination
        removed or rebuilt (pool size, parking) must have none, or they would be stranded or read by
        a shard that does not hold their keys."""
        for dest in change.removed + change.rebuilt:
            parked = sum(s.park_backlog for s in await asyncio.gather(*(w.stats.remote() for w in self.workers[dest])))
            if parked:
                raise RefusedChange(f"destination `{dest}`: {parked} records are parked; let them drain (the breaker "
                                    "closes and they are replayed), then apply again (`router routes apply --force`)")

    async def _keep_running(self, source: str, actor: Any) -> None:
        """``run`` returns only on stop; if the actor dies, Ray restarts it and we start it again."""
        while not self._stopping:
            try:
                # A restarted actor comes back with the config it was created with: the running revision first.
                await actor.use_revision.remote(self.cfg, self.names, self.revision)
                await actor.run.remote()
                return
            except ray.exceptions.RayActorError as exc:
                if self._stopping:
                    return
                log.warning("ingest actor for %s died (%s); restarting its loop", source, str(exc).splitlines()[0],
                            extra={"event": "actor_restart", "source": source})
                await asyncio.sleep(1.0)
            except Exception as exc:  # e.g. NATS unreachable when the loop started: say so, try again
                if self._stopping:
                    return
                log.error("ingest for %s stopped: %s; restarting it in 5s", source, str(exc).splitlines()[-1],
                          extra={"event": "actor_restart", "source": source})
                await asyncio.sleep(5.0)

    async def _answer(self, who: str, actor: Any, empty: Any, down: list[str]) -> Any:
        """An actor's stats, or (when it does not answer within 5s: dead or restarting) its last
        known ones, so the exported counters do not drop; ``who`` is added to ``down``."""
        try:
            st = await asyncio.wait_for(actor.stats.remote(), 5.0)
        except Exception:  # noqa: BLE001 - any failure means: not answering
            down.append(who)
            return self._last_stats.get(who, empty)
        self._last_stats[who] = st
        return st

    async def stats(self) -> RouterStats:
        down: list[str] = []
        actors = self.ingest  # autoscaling replaces the list; the answers below pair with this one
        ingest = await asyncio.gather(*(self._answer(f"ingest {name}#{i}", a, IngestStats(), down)
                                        for i, (name, a) in enumerate(actors)))
        per_source: dict[str, list[IngestStats]] = {}
        for name, st in [*((n, st) for (n, _), st in zip(actors, ingest)), *self._retired_ingest]:
            per_source.setdefault(name, []).append(st)  # with the removed actors': counters never go down
        sources = {}
        for name, sts in per_source.items():
            agg = _sum_structs(sts, IngestStats)
            agg.source = name
            sources[name] = agg
        dests = {}
        for name, ws in list(self.workers.items()):
            per_shard = await asyncio.gather(*(self._answer(f"sink {name}#{i}", w, DestinationStats(), down)
                                               for i, w in enumerate(ws)))
            behind = [w for w, s in zip(ws, per_shard) if s.config_revision < self.revision]
            if behind and not self._apply_lock.locked():  # Ray restarted them with the settings they were created with
                await asyncio.gather(*(w.reconfigure.remote(self.cfg.destinations[name], self.revision)
                                       for w in behind))
            dests[name] = _sum_structs(per_shard, DestinationStats)
        return RouterStats(sources, dests, self.revision, self.reload_failures, self.last_reload_error,
                           actors_down=down)

    async def stop(self, timeout: float = 60.0) -> None:
        """Drain: stop fetching, see open batches through, deliver queued records, then stop actors."""
        self._stopping = True
        self._watch_stop.set()
        if self._autoscaler is not None:
            self._autoscaler.cancel()
            await asyncio.gather(self._autoscaler, return_exceptions=True)
        try:
            if self._watcher is not None:
                await asyncio.wait_for(asyncio.gather(self._watcher, return_exceptions=True), 5.0)
            await asyncio.wait_for(asyncio.gather(*(a.stop.remote() for _, a in self.ingest)), timeout)
            if self._runs:
                await asyncio.wait_for(asyncio.gather(*self._runs.values(), return_exceptions=True), timeout)
            await asyncio.wait_for(
                asyncio.gather(*(w.close.remote() for ws in self.workers.values() for w in ws),
                               return_exceptions=True), timeout)
        except asyncio.TimeoutError:
            log.warning("drain did not finish within %.0fs; unacked messages will be redelivered", timeout)
        finally:
            for _, a in self.ingest:
                ray.kill(a, no_restart=True)
            for ws in [*self.workers.values(), self.limits.values()]:
                for w in ws:
                    ray.kill(w, no_restart=True)

    # -- ingest actors: placement and autoscaling -----------------------------------------------------

    def _add_ingest(self, source: str, partition: int | None = None) -> str:
        """Start one more ingest actor on ``source`` (on the durable consumer it shares, or on one
        partition's consumer) and its loop; returns its name."""
        self._ingest_serial += 1
        name = f"router-{self.run_id}-ingest-{source}-{self._ingest_serial}"
        actor = IngestActor.options(name=name, **actor_options(self.cfg, kind="ingest")).remote(
            self.cfg, source, self.names, self._ingest_serial - 1, self.revision, partition)
        self.ingest = [*self.ingest, (source, actor)]  # a new list: a stats call in progress keeps its own
        self._ingest_names[name] = (source, actor)
        self._runs[name] = asyncio.get_running_loop().create_task(self._keep_running(source, actor))
        return name

    async def _remove_ingest(self, source: str) -> None:
        """Stop the source's newest ingest actor: it stops fetching and sees its open batches through."""
        name = next((n for n, (src, _) in reversed(self._ingest_names.items()) if src == source), None)
        if name is not None:
            await self._retire_ingest(name)

    async def _retire_ingest(self, name: str) -> None:
        """Stop one ingest actor (it sees its open batches through); its counters stay in the stats."""
        source, actor = self._ingest_names.pop(name)
        self.ingest = [e for e in self.ingest if e[1] is not actor]
        await actor.stop.remote()
        await asyncio.gather(self._runs.pop(name), return_exceptions=True)
        final = await actor.stats.remote()
        final.in_flight = 0
        self._retired_ingest.append((source, final))
        ray.kill(actor, no_restart=True)

    async def _finish_unpartitioned(self, src: Any, every: float = 1.0) -> None:
        """The source's stream was partitioned after the router had read from it: one ingest actor
        finishes, on the old consumer, the messages stored before; only then do the partition actors
        start, so each key's older events go first."""
        log.warning("source %s: consumer %s has messages from before the stream was partitioned; one ingest actor "
                    "finishes them before the %d partition actors start", src.name, src.durable, src.partitions,
                    extra={"event": "unpartitioned_backlog", "source": src.name})
        name = self._add_ingest(src.name)
        while not self._stopping:
            try:
                nc = await connect(self.cfg.nats, "router-unpartitioned-backlog")
                try:
                    while not self._stopping:
                        info = await nc.jetstream().consumer_info(src.stream, src.durable)
                        if not info.num_pending and not info.num_ack_pending:
                            break
                        await asyncio.sleep(every)
                finally:
                    await nc.close()
                break
            except Exception as exc:  # NATS restarting: the actor goes on; ask again
                log.warning("source %s: reading consumer %s failed (%s); retrying in 2s", src.name, src.durable, exc)
                await asyncio.sleep(2.0)
        if self._stopping:
            return
        async with self._apply_lock:  # the partition actors start with the revision running
            await self._retire_ingest(name)
            if not self._stopping:
                log.info("source %s: messages from before partitioning finished; starting its partition actors",
                         src.name)
                for k in range(src.partitions):
                    self._add_ingest(src.name, k)

    async def _autoscale(self, scalers: dict[str, IngestScaler], every: float = 2.0) -> None:
        """Each poll, per autoscaled source: its consumer's lag -> add or remove an ingest actor."""
        loop = asyncio.get_running_loop()
        sources = {s.name: s for s in self.cfg.sources}
        while not self._stopping:
            try:
                nc = await connect(self.cfg.nats, "router-ingest-autoscale")
                try:
                    js = nc.jetstream()
                    while not self._stopping:
                        for name, scaler in scalers.items():
                            src = sources[name]
                            pending = sum([(await js.consumer_info(src.stream, c)).num_pending for c in src.consumers])
                            actors = sum(1 for s, _ in self.ingest if s == name)
                            step = scaler.decide(pending, actors, loop.time())
                            if step:
                                await self._scale_ingest(name, step, pending, actors)
                        await asyncio.sleep(every)
                finally:
                    await nc.close()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("ingest autoscaling: reading consumer lag failed (%s); retrying in 5s", exc)
                await asyncio.sleep(5.0)

    async def _scale_ingest(self, source: str, step: int, pending: int, actors: int) -> None:
        async with self._apply_lock:  # a new actor starts with the revision running, not one half applied
            if self._stopping:
                return
            log.info("ingest autoscaling: source %s has %d messages pending on %d ingest actors: %s one",
                        source, pending, actors, "adding" if step > 0 else "removing")
            if step > 0:
                self._add_ingest(source)
            else:
                await self._remove_ingest(source)
