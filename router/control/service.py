"""``router run``: the pipeline against an external NATS until SIGINT / SIGTERM, then drain."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path
from typing import Any, Callable

import ray

from router.config import Config
from router.control.metrics import MetricsServer, serve_metrics
from router.control.signals import on_signals, on_stop_signals
from router.control.supervisor import RouterStats, Supervisor
from router.jetstream.connection import connect

__all__ = ["Readiness", "consumer_lag", "poll_stats", "run_service", "status_line"]

log = logging.getLogger("router")


def status_line(st: RouterStats) -> str:
    src = ", ".join(f"{n}: {s.acked} acked/{s.in_flight} open" for n, s in st.sources.items())
    dst = ", ".join(f"{n}: {d.delivered} delivered/{d.duplicates} dup/{d.dead_lettered} dlq/"
                    f"{d.park_backlog} parked, breaker {d.breaker_state}" for n, d in st.destinations.items())
    return f"sources [{src}] destinations [{dst}]"


def _watched_files(config_path: str) -> list[Path]:
    """The config file and, when it names one, its routes file."""
    files = [Path(config_path)]
    try:
        import yaml

        raw = yaml.safe_load(files[0].read_text())
        if isinstance(raw, dict) and isinstance(raw.get("routes"), str):
            files.append(files[0].parent / raw["routes"])
    except (OSError, ValueError, ImportError):
        pass
    return files


async def _watch_files(config_path: str, reload: Callable[[], None], stop: asyncio.Event) -> None:
    """``reload`` once the config file or its routes file has changed (checked every second)."""

    def stamp() -> tuple:
        out = []
        for f in _watched_files(config_path):
            try:
                st = os.stat(f)
                out.append((str(f), st.st_mtime_ns, st.st_size))
            except OSError:
                out.append((str(f), None, None))
        return tuple(out)

    last = stamp()
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), 1.0)
        except asyncio.TimeoutError:
            pass
        now = stamp()
        if now != last:
            last = now
            log.info("live config: %s changed; reloading", config_path)
            reload()


class Readiness:
    """What ``/readyz`` reports: ready once NATS is connected, the routes are loaded and the
    actors are up, and until the drain starts."""

    def __init__(self) -> None:
        self.nc = None  # the driver's own NATS connection; it reconnects like every other
        self.started = False
        self.draining = False
        self.actors_down: list[str] = []  # from the last stats poll

    def __call__(self) -> str | None:
        if self.draining:
            return "draining: stopping, not taking new work"
        if self.nc is None or not self.started:
            return "starting: routes and actors not up yet"
        if not self.nc.is_connected:
            return "NATS not connected (reconnecting)"
        if self.actors_down:
            return f"actors not answering (dead or restarting): {', '.join(self.actors_down)}"
        return None


async def poll_stats(sup: Supervisor, cfg: Config, ready: Readiness, server: MetricsServer | None) -> RouterStats:
    """One round of the driver's poll: every actor's stats (merged), the consumers' lag; what
    ``/metrics`` and ``/readyz`` answer from until the next round."""
    st = await sup.stats()
    ready.actors_down = st.actors_down
    if server:
        await consumer_lag(ready.nc, cfg, st)
        server.collector.latest = st
    return st


async def consumer_lag(nc: Any, cfg: Config, st: RouterStats) -> None:
    """Fill in each source's consumer pending / ack-pending (one consumer info call per consumer: a
    partitioned source adds up its partitions' and has them one by one too); a source whose info
    cannot be read now is left out rather than reported as zero."""
    js = nc.jetstream()
    for src in cfg.sources:
        try:
            infos = [await js.consumer_info(src.stream, c, timeout=2.0) for c in src.consumers]
        except Exception:  # noqa: BLE001 - NATS down or reconnecting: no figure this round
            continue
        pending = [i.num_pending or 0 for i in infos]
        ack_pending = [i.num_ack_pending or 0 for i in infos]
        st.consumer_pending[src.name] = sum(pending)
        st.consumer_ack_pending[src.name] = sum(ack_pending)
        if src.partitions > 1:
            st.partition_pending[src.name] = pending
            st.partition_ack_pending[src.name] = ack_pending


async def run_service(cfg: Config, status_every: float = 10.0, drain_timeout: float = 60.0,
                      config_path: str | None = None, watch: bool = False) -> None:
    """``config_path``: the file to reload on SIGHUP (and, with ``watch``, when it or its routes file
    changes): its routes and destinations become a new live revision; a file that fails to load
    or check is refused and the running revision stays."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    ready = Readiness()

    # Fails within nats.connect_timeout, saying why, when NATS refuses us (NatsStartupError).
    ready.nc = await connect(cfg.nats, "router-driver", fail_fast=True)
    server: MetricsServer | None = None
    sup: Supervisor | None = None
    try:
        if cfg.metrics.port:
            server = serve_metrics(cfg.metrics.host, cfg.metrics.port, ready)
            log.info("metrics and health on http://%s:%d/metrics, /healthz, /readyz",
                     cfg.metrics.host, cfg.metrics.port)
        on_stop_signals(stop.set)  # a Ctrl-C while starting: stop (drain) as soon as it is up
        sup = Supervisor(cfg)
        await sup.start()
        ready.started = True
        # Again after start: ray.init installs its own SIGTERM handler in the driver, which would kill
        # the process without a drain.
        on_stop_signals(stop.set)
        reloads: set[asyncio.Task] = set()
        if config_path:
            def reload() -> None:
                task = loop.create_task(sup.reload_file(config_path))
                reloads.add(task)
                task.add_done_callback(reloads.discard)

            on_signals((signal.SIGHUP,), reload)
            if watch:
                reloads.add(loop.create_task(_watch_files(config_path, reload, stop)))
        log.info("router running: %d source(s), %d destination(s); Ctrl-C drains and stops",
                 len(cfg.sources), len(cfg.destinations))
        last_log = 0.0
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), 2.0)
            except asyncio.TimeoutError:
                pass
            st = await poll_stats(sup, cfg, ready, server)
            if loop.time() - last_log >= status_every:
                last_log = loop.time()
                log.info("%s", status_line(st))
        log.info("stopping: draining in-flight batches (up to %.0fs)", drain_timeout)
    finally:
        ready.draining = True
        try:
            if sup is not None:
                await sup.stop(timeout=drain_timeout)
                ray.shutdown()
                log.info("drained and stopped")
        finally:
            if server:
                server.close()
            await ready.nc.close()
