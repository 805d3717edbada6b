"""``router run``: the pipeline against an external NATS until SIGINT / SIGTERM, then drain."""

from __future__ import annotations

import asyncio
import logging

import ray

from router.config import Config
from router.control.metrics import StatsCollector, serve_metrics
from router.control.signals import on_stop_signals
from router.control.supervisor import RouterStats, Supervisor

__all__ = ["run_service", "status_line"]

log = logging.getLogger("router")


def status_line(st: RouterStats) -> str:
    src = ", ".join(f"{n}: {s.acked} acked/{s.in_flight} open" for n, s in st.sources.items())
    dst = ", ".join(f"{n}: {d.delivered} delivered/{d.duplicates} dup/{d.dead_lettered} dlq/"
                    f"{d.park_backlog} parked, breaker {d.breaker_state}" for n, d in st.destinations.items())
    return f"sources [{src}] destinations [{dst}]"


async def run_service(cfg: Config, status_every: float = 10.0, drain_timeout: float = 60.0) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    collector: StatsCollector | None = None
    if cfg.metrics.port:
        collector = serve_metrics(cfg.metrics.host, cfg.metrics.port)
        log.info("metrics on http://%s:%d/metrics", cfg.metrics.host, cfg.metrics.port)

    sup = Supervisor(cfg)
    await sup.start()
    # After start: ray.init installs its own SIGTERM handler in the driver, which would kill the
    # process without a drain.
    on_stop_signals(stop.set)
    log.info("router running: %d source(s), %d destination(s); Ctrl-C drains and stops",
             len(cfg.sources), len(cfg.destinations))
    try:
        last_log = 0.0
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), 2.0)
            except asyncio.TimeoutError:
                pass
            st = await sup.stats()
            if collector:
                collector.latest = st
            if loop.time() - last_log >= status_every:
                last_log = loop.time()
                log.info("%s", status_line(st))
        log.info("stopping: draining in-flight batches (up to %.0fs)", drain_timeout)
    finally:
        await sup.stop(timeout=drain_timeout)
        ray.shutdown()
        log.info("drained and stopped")
