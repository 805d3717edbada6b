"""The supervisor: sets up JetStream, starts the actors, keeps them running, drains on stop.

Start order follows the data flow backwards: streams and consumers first, then the sink actors
(each loads its dedup shard before it takes a record), then the ingest actors. Stop order is
the data flow forwards: ingest stops fetching and sees its open batches through (acked or
NAKed), then the sink actors deliver what they hold and close.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from typing import Any

import msgspec
import ray

from router.actors import DestinationWorker, IngestActor
from router.actors.ingest import IngestStats

from router.config import Config
from router.control.actor_env import actor_options
from router.delivery.stats import DestinationStats
from router.jetstream.streams import ensure_router_streams, ensure_source
from router.jetstream.connection import connect

__all__ = ["RouterStats", "Supervisor", "init_ray"]

log = logging.getLogger(__name__)


class RouterStats(msgspec.Struct):
    sources: dict[str, IngestStats]
    destinations: dict[str, DestinationStats]


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


def _sum_structs(items: list[Any], cls: type) -> Any:
    """Counters add up across a pool; a breaker state reports the pool's worst."""
    out = cls()
    for it in items:
        for f in cls.__struct_fields__:
            v = getattr(it, f)
            if isinstance(v, int):
                setattr(out, f, getattr(out, f) + v)
            elif f == "breaker_state" and _SEVERITY.get(v, 0) > _SEVERITY.get(getattr(out, f), 0):
                setattr(out, f, v)
    return out


class Supervisor:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.workers: dict[str, list[Any]] = {}
        self.ingest: list[tuple[str, Any]] = []
        self._runs: dict[int, asyncio.Task] = {}
        self._stopping = False
        self.run_id = uuid.uuid4().hex[:8]  # actor names are unique per Ray namespace

    async def start(self) -> None:
        cfg = self.cfg
        nc = await connect(cfg.nats, "router-supervisor")
        try:
            js = nc.jetstream()
            await ensure_router_streams(js, cfg)
            for src in cfg.sources:
                await ensure_source(js, src)
        finally:
            await nc.close()
        init_ray(cfg)
        names = {
            dest: [f"router-{self.run_id}-sink-{dest}-{shard}" for shard in range(d.pool_size)]
            for dest, d in cfg.destinations.items()
        }
        # Secrets the config names reach the actors on whichever node Ray places them.
        secrets = actor_options(cfg)
        self.workers = {
            dest: [DestinationWorker.options(name=n, **secrets).remote(cfg, dest, shard)
                   for shard, n in enumerate(ns)]
            for dest, ns in names.items()
        }
        # Fail at start-up, not at the first record, if a sink actor cannot load its dedup shard.
        await asyncio.gather(*(w.ready.remote() for ws in self.workers.values() for w in ws))
        self.ingest = [
            (src.name, IngestActor.options(name=f"router-{self.run_id}-ingest-{src.name}-{i}", **secrets)
             .remote(cfg, src.name, names, i))
            for src in cfg.sources for i in range(src.ingest_actors)
        ]
        for i, (name, actor) in enumerate(self.ingest):
            self._runs[i] = asyncio.get_running_loop().create_task(self._keep_running(name, actor))

    async def _keep_running(self, source: str, actor: Any) -> None:
        """``run`` returns only on stop; if the actor dies, Ray restarts it and we start it again."""
        while not self._stopping:
            try:
                await actor.run.remote()
                return
            except ray.exceptions.RayActorError as exc:
                if self._stopping:
                    return
                log.warning("ingest actor for %s died (%s); restarting its loop", source, str(exc).splitlines()[0])
                await asyncio.sleep(1.0)
            except Exception as exc:  # e.g. NATS unreachable when the loop started: say so, try again
                if self._stopping:
                    return
                log.error("ingest for %s stopped: %s; restarting it in 5s", source, str(exc).splitlines()[-1])
                await asyncio.sleep(5.0)

    async def stats(self) -> RouterStats:
        ingest = await asyncio.gather(*(a.stats.remote() for _, a in self.ingest))
        per_source: dict[str, list[IngestStats]] = {}
        for (name, _), st in zip(self.ingest, ingest):
            per_source.setdefault(name, []).append(st)
        sources = {}
        for name, sts in per_source.items():
            agg = _sum_structs(sts, IngestStats)
            agg.source = name
            sources[name] = agg
        dests = {}
        for name, ws in self.workers.items():
            dests[name] = _sum_structs(await asyncio.gather(*(w.stats.remote() for w in ws)), DestinationStats)
        return RouterStats(sources, dests)

    async def stop(self, timeout: float = 60.0) -> None:
        """Drain: stop fetching, see open batches through, deliver queued records, then stop actors."""
        self._stopping = True
        try:
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
            for ws in self.workers.values():
                for w in ws:
                    ray.kill(w, no_restart=True)
