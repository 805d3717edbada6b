"""``router bench``: the router's throughput against the machine's JetStream ceiling, in one run.

On one embedded nats-server, with the same backlog for each path:
  (a) ceiling  - the fastest Python JetStream consumer we know: one pull request per 5,000
                 messages over a core subscription, AckAll per batch, no processing;
  (b) plain    - nats-py ``pull_subscribe`` + ``fetch(1000)``, msgspec decode, ack per message;
  (c) router   - the whole router: decode, durable dedup, routing, fan-out to three
                 destinations, counted at the destinations: once to NATS streams, once to the
                 HTTP emulators with batching; timed from the router started (every actor up), as
                 (a) and (b) are timed from their consumers bound;
  (d) ordering - the same fan-out as one route per event family, with ordering keys and
                 priority lanes off and then on: what they cost.
Then a backlog drain for memory, and end-to-end latency (p50 / p99) at half the router's rate.
Memory is also measured for Ray alone (its daemons and as many idle actors as the router runs),
so the router's share above Ray's own baseline is a figure too.
Every phase also counts the CPU seconds each role spent per 1,000 source events (nats-server,
ingest actors, sink actors, the HTTP emulators, the benchmark's own process, the rest of Ray), so
where the time goes is a figure, and the emulators' share is not charged to the router. Last, the
dedup index's memory per key held, filled with a million keys (more if the run has more events).
Prints progress and the figures, and writes ``bench.json`` and ``bench.png``.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import msgspec
import nats
import numpy as np
import orjson
import psutil
import ray
from nats.js import api

from router.codecs.envelope import Envelope
from router.config import Config, parse_config
from router.delivery.dedup_index import DedupIndex
from router.jetstream.embedded_server import EmbeddedNats, nats_server_binary
from router.jetstream.pull_consumer import PullConsumer
from router.control.gc_tuning import tune_gc
from router.control.supervisor import Supervisor, init_ray

from .fast_publisher import publish_pipelined
from .retail_events import RetailEventFactory
from .sink_emulator import EmulatorProcess

__all__ = ["run_bench"]

DESTS = ("erp", "marketplace", "carrier")


def _say(msg: str) -> None:
    print(msg, flush=True)


class MemorySampler:
    """Peak of the summed memory of this process and everything it started, except ``exclude``:
    RSS, and PSS (Linux), which counts a page shared by several processes once in all (each Ray
    process maps the same libraries: summed RSS counts them once per process)."""

    # Reading PSS makes the kernel walk each process's page tables, and listing the process tree
    # reads every process's stat file: on two shared cores that is CPU taken from the router, so
    # the tree is listed every few samples and sampled once a second (the peaks last longer).
    INTERVAL, RELIST_EVERY = 1.0, 3

    def __init__(self, exclude: Callable[[], set[int]]) -> None:
        self.exclude = exclude
        self.peak = 0
        self.peak_pss = 0
        self.at_peak: dict[str, float] = {}  # role -> MiB of PSS, when the summed PSS peaked
        self._task: asyncio.Task | None = None
        self._procs: list[psutil.Process] = []
        self._samples = 0

    def sample(self) -> int:
        if self._samples % self.RELIST_EVERY == 0:
            me = psutil.Process()
            self._procs = [me, *me.children(recursive=True)]
        self._samples += 1
        total = pss = 0
        roles: dict[str, float] = {}
        skip = self.exclude()
        for p in self._procs:
            if p.pid in skip:
                continue
            try:
                mem = p.memory_full_info()
                total += mem.rss
                share = getattr(mem, "pss", mem.rss)
                pss += share
                role = process_role(p, {})[0]
                roles[role] = roles.get(role, 0.0) + share / 2**20
            except psutil.Error:
                pass
        self.peak = max(self.peak, total)
        if pss > self.peak_pss:
            self.peak_pss, self.at_peak = pss, roles
        return total

    async def _loop(self) -> None:
        while True:
            await asyncio.to_thread(self.sample)
            await asyncio.sleep(self.INTERVAL)

    def __enter__(self) -> "MemorySampler":
        self.peak, self._samples = 0, 0
        self._task = asyncio.get_running_loop().create_task(self._loop())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._task:
            self._task.cancel()


ROLES = {  # key in bench.json -> column in the printed table
    "nats_server": "nats-server",
    "ingest_actors": "ingest",
    "sink_actors": "sinks",
    "emulators": "emulators",
    "bench_process": "bench",  # the publisher in the publishing phases, the consumer in (a) and (b), the driver
    "ray_other": "ray other",  # raylet, GCS and idle workers
}


ACTORS = {"IngestActor": "ingest_actors", "DestinationWorker": "sink_actors"}  # class name in Ray's process title


def process_role(p: psutil.Process, fixed: dict[int, str]) -> tuple[str, bool]:
    """The process's role in the bench, and whether it is past start-up."""
    if p.pid in fixed:
        return fixed[p.pid], True
    if p.pid == os.getpid():
        return "bench_process", True
    try:
        cmdline = p.cmdline() or [""]
    except psutil.Error:
        cmdline = [""]
    title = cmdline[0]
    for cls, role in ACTORS.items():
        if cls in title:
            return role, "__init__" not in title
    # A Ray worker still booting (its command line, not yet a title) or idle may yet become an actor.
    return "ray_other", not (title.startswith("ray::IDLE") or any("default_worker.py" in a for a in cmdline))


class CpuPhase:
    """CPU seconds (user + system) of every process of the bench, by role, from now to ``end()``.

    Ray's actor processes are told apart by the title Ray gives them (``ray::IngestActor.run``);
    ``fixed`` names the roles of the processes the bench starts itself (nats-server, emulators).
    An actor process that starts inside the phase spends its first second or so booting Ray and
    importing the router; that CPU (up to the first time it is seen past ``__init__``) is counted
    apart as start-up, so the per-event figures do not depend on the run's length.
    """

    def __init__(self, fixed: dict[int, str]) -> None:
        self.fixed = fixed
        self.start = self._read()
        # Where each process's work starts counting: now, or for an actor not yet working, when it is.
        self.base = {k: cpu for k, (_, working, cpu) in self.start.items() if working}
        self._watch = asyncio.get_running_loop().create_task(self._watch_actors_start())

    def _read(self, skip: Any = ()) -> dict[tuple[int, float], tuple[str, bool, float]]:
        """(pid, start time) -> (role, working, CPU seconds so far); the start time tells a reused pid apart."""
        me = psutil.Process()
        out = {}
        for p in [me, *me.children(recursive=True)]:
            try:
                with p.oneshot():
                    key = (p.pid, p.create_time())
                    if key in skip:
                        continue
                    t = p.cpu_times()
                    out[key] = (*process_role(p, self.fixed), t.user + t.system)
            except psutil.Error:
                continue
        return out

    async def _watch_actors_start(self) -> None:
        t0 = time.monotonic()
        while True:
            await asyncio.sleep(0.1 if time.monotonic() - t0 < 10 else 0.5)  # actors start early in a phase
            for key, (role, working, cpu) in (await asyncio.to_thread(self._read, set(self.base))).items():
                if working:
                    self.base[key] = cpu if role in ACTORS.values() else self.start.get(key, (0, 0, 0.0))[2]

    def end(self) -> tuple[dict[str, float], dict[str, float]]:
        """CPU seconds by role: (the work, the actors' start-up)."""
        self._watch.cancel()
        work, startup = dict.fromkeys(ROLES, 0.0), dict.fromkeys(ROLES, 0.0)
        for key, (role, _, cpu) in self._read().items():
            begin = self.start.get(key, (role, False, 0.0))[2]  # a process started since counts from 0
            base = self.base.get(key, cpu if role in ACTORS.values() else begin)
            work[role] += cpu - base
            startup[role] += base - begin
        return work, startup


async def ray_idle_baseline(cfg: Config, sampler: MemorySampler) -> dict[str, float]:
    """Ray's own memory in this run: its daemons, as many idle actors as ``cfg`` starts and this
    process, sampled like the router's runs. The router's memory is its share above this."""
    init_ray(cfg)
    actors = sum(s.ingest_actors for s in cfg.sources) + sum(d.pool_size for d in cfg.destinations.values())

    # Defined here, not at module level: pickled by value, so an idle worker imports nothing of the router.
    @ray.remote(num_cpus=0)
    class IdleActor:
        def ready(self) -> bool:
            return True

    idle = [IdleActor.remote() for _ in range(actors)]
    await asyncio.gather(*(a.ready.remote() for a in idle))
    sampler.peak = sampler.peak_pss = sampler._samples = 0
    for _ in range(3):  # a worker settles in a second or two after its first call
        await asyncio.sleep(1.0)
        await asyncio.to_thread(sampler.sample)
    for a in idle:
        ray.kill(a)
    return {"actors": actors, "rss_mib": sampler.peak / 2**20, "pss_mib": sampler.peak_pss / 2**20}


def _per_1000(cpu: dict[str, float], events: int) -> dict[str, float]:
    per = {role: 1000 * cpu[role] / max(events, 1) for role in ROLES}
    per["total"] = sum(per.values())
    return per


def dedup_memory(keys: int, window: float, batch: int = 500) -> dict[str, float]:
    """A dedup index as a sink actor holds one: filled with ``keys`` random key hashes in delivered
    batches over an hour; its bytes per key held and the batch lookup time per key."""
    rng = np.random.default_rng(16)
    clock = [time.time()]
    idx = DedupIndex(window, max(keys, 1), clock=lambda: clock[0])
    step = 3600 / (keys / batch)
    t0 = time.process_time()
    for _ in range(0, keys, batch):
        idx.add_many(rng.integers(0, 2**64 - 1, batch, dtype=np.uint64, endpoint=True))
        clock[0] += step
    fill = time.process_time() - t0
    probe = [rng.integers(0, 2**64 - 1, batch, dtype=np.uint64, endpoint=True).tolist() for _ in range(200)]
    t0 = time.process_time()
    for q in probe:
        idx.contains_many(q)
    lookup = (time.process_time() - t0) / (len(probe) * batch)
    held = len(idx)
    return {"keys_held": held, "bytes_per_key": idx.memory_bytes() / held, "memory_mib": idx.memory_bytes() / 2**20,
            "add_us_per_key": 1e6 * fill / keys, "lookup_us_per_key": 1e6 * lookup}


def _machine() -> dict[str, Any]:
    model = ""
    try:
        model = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "")
    except OSError:
        pass
    version = subprocess.run([nats_server_binary(), "--version"], capture_output=True, text=True).stdout.strip()
    return {"cpus": os.cpu_count(), "cpu_model": model, "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(), "nats_server": version, "platform": platform.platform()}


async def _fill(nc: Any, subject_prefix: str, n: int, seed: int, label: str) -> None:
    """Publish ``n`` retail events under ``subject_prefix``, generated as they go (memory stays flat)."""
    factory = RetailEventFactory(seed=seed)

    def gen():
        for _ in range(n):
            ev = factory.mix()
            yield f"{subject_prefix}.{ev.subject}", ev.payload

    t0 = time.monotonic()
    await publish_pipelined(nc, gen(), progress=lambda k: _say(f"  {label}: published {k:,}/{n:,}"))
    _say(f"  {label}: {n:,} events published in {time.monotonic() - t0:.1f}s")


async def _consumer(js: Any, stream: str, durable: str, ack: Any = api.AckPolicy.EXPLICIT) -> None:
    await js.add_consumer(stream, api.ConsumerConfig(durable_name=durable, ack_policy=ack, max_ack_pending=-1,
                                                     deliver_policy=api.DeliverPolicy.ALL, ack_wait=60))


async def bench_ceiling(nc: Any, js: Any, stream: str, n: int) -> float:
    await _consumer(js, stream, "ceiling", api.AckPolicy.ALL)
    pc = PullConsumer(nc, stream, "ceiling")
    await pc.start()
    got = 0
    t0 = time.monotonic()
    while got < n:
        msgs = await pc.fetch(5000, expires=1.0)
        if msgs:
            got += len(msgs)
            await pc.ack(msgs[-1])  # AckAll: one ack per batch (in order, one consumer)
    await nc.flush()
    rate = got / (time.monotonic() - t0)
    await pc.stop()
    return rate


async def bench_plain(js: Any, stream: str, n: int) -> float:
    await _consumer(js, stream, "plain")
    sub = await js.pull_subscribe_bind("plain", stream)
    decoder = msgspec.json.Decoder(Envelope)
    got = 0
    t0 = time.monotonic()
    while got < n:
        for m in await sub.fetch(1000, timeout=5):
            decoder.decode(m.data)
            await m.ack()
            got += 1
    return got / (time.monotonic() - t0)


def _router_config(nats_url: str, stream: str, subjects: list[str], durable: str, dest_kind: str,
                   emulator_url: str = "", tag: str = "", routes: list[dict[str, Any]] | None = None,
                   ingest_actors: int = 1) -> Config:
    # One ingest actor: at about 25 us of CPU an event it keeps up with three sink actors here; a
    # second one on two cores added CPU and an actor process's memory, not events/s. Every pull
    # costs a Ray call and a submit per destination, about a millisecond of a sink actor's CPU
    # whatever its size: pulls of 3,000 with 4 in hand carried 15% more events/s here than 1,000
    # with 8 (2,000 and 4: 10%), for 4,000 more events in hand. Its one reader acks by watermark:
    # one ack per batch instead of one per message (README "Acks by watermark").
    if dest_kind == "nats":
        dests = {d: {"kind": "nats", "subject": f"out{tag}.{d}", "batch": {"max_records": 1000},
                     "concurrency": 16} for d in DESTS}
    else:
        dests = {d: {"kind": "http", "url": f"{emulator_url}/{d}", "batch": {"max_records": 500},
                     "concurrency": 16} for d in DESTS}
    return parse_config({
        "nats": {"url": nats_url},
        "sources": [{"name": "bench", "stream": stream, "subjects": subjects, "durable": durable,
                     "create_stream": False, "fetch_batch": 3000, "max_inflight_batches": 4,
                     "ingest_actors": ingest_actors,
                     "ack": "watermark" if ingest_actors == 1 else "message"}],
        "destinations": dests,
        "routes": routes or [{"name": "fan-out", "destinations": list(DESTS)}],
        "dedup": {"stream": f"BENCH_DEDUP{tag.upper()}"},
        "metrics": {"port": 0},
    }, "<bench>")


def _family_routes(ordered: bool) -> list[dict[str, Any]]:
    """The fan-out as one route per event family; ``ordered``: orders in sequence per order and first
    (priority high), stock updates in sequence per SKU and location and last (low)."""
    routes: list[dict[str, Any]] = [
        {"name": "orders", "match": {"types": ["order.*"]}, "destinations": list(DESTS)},
        {"name": "inventory", "match": {"types": ["inventory.*"]}, "destinations": list(DESTS)},
        {"name": "other", "match": {"types": ["shipment.*", "return.*", "refund.*"]}, "destinations": list(DESTS)},
    ]
    if ordered:
        routes[0].update(ordering_key=["data.order_id"], priority="high")
        routes[1].update(ordering_key=["data.sku", "data.location_id"], priority="low")
    return routes


async def _dest_counts_nats(js: Any, tag: str) -> int:
    total = 0
    for d in DESTS:
        total += (await js.stream_info(f"OUT{tag.upper()}_{d.upper()}")).state.messages
    return total


async def _dest_last_nats(js: Any, tag: str) -> float:
    """When the last record of the destination streams was stored (Unix time)."""
    last = 0.0
    for d in DESTS:
        stream = f"OUT{tag.upper()}_{d.upper()}"
        seq = (await js.stream_info(stream)).state.last_seq
        if seq:
            last = max(last, (await js.get_msg(stream, seq=seq)).time.timestamp())
    return last


async def _run_router(cfg: Config, n: int, count: Callable[[], Any], label: str, sampler: MemorySampler,
                      fixed: dict[int, str], last_at: Callable[[], Any] | None = None,
                      ) -> tuple[float, Supervisor, tuple[dict[str, float], dict[str, float]]]:
    """Events/s from the router started (``Supervisor.start`` returns once every actor is up) to the
    last record at the destinations, and the CPU seconds by role over the same span. The start-up
    (actor processes, imports, dedup shards loaded) is timed and counted apart, as (a) and (b) bind
    their consumers before their clocks start (the ingest actor's connecting and binding, a few ms,
    still fall inside). ``last_at``: the Unix time the destinations got their last new record; the
    clock stops there rather than at the poll that saw the count complete (up to 0.2 s later, 0.1 s
    on average: 3% of a 3-second run)."""
    sup = Supervisor(cfg)
    started, boot = time.monotonic(), CpuPhase(fixed)
    await sup.start()
    boot_work, boot_startup = boot.end()
    _say(f"  {label}: router started in {time.monotonic() - started:.1f}s (every actor up); counting from here")
    target = n * len(DESTS)
    cpu = CpuPhase(fixed)
    t0, t0_unix = time.monotonic(), time.time()
    last = t0
    with sampler:
        while (done := await count()) < target:
            if time.monotonic() - last >= 2.0:
                last = time.monotonic()
                _say(f"  {label}: {done:,}/{target:,} records at the destinations")
            await asyncio.sleep(0.2)  # polling costs CPU the router would use
    elapsed = time.monotonic() - t0
    work, startup = cpu.end()  # startup: an actor Ray restarted inside the run
    if last_at is not None:
        end = await last_at()
        if end > t0_unix:  # (0 or earlier: no time to go by; the poll's stands)
            elapsed = min(elapsed, end - t0_unix)
    return n / elapsed, sup, (work, {role: boot_work[role] + boot_startup[role] + startup[role] for role in ROLES})


async def _add_dest_streams(js: Any, tag: str) -> None:
    for d in DESTS:
        await js.add_stream(name=f"OUT{tag.upper()}_{d.upper()}", subjects=[f"out{tag}.{d}"])


async def _latency(nc: Any, js: Any, url: str, rate: float, seconds: float,
                   fixed: dict[int, str]) -> tuple[dict[str, float], tuple[dict[str, float], dict[str, float]]]:
    """Publish at ``rate`` for ``seconds`` to a fresh stream; latency = stored at the destination - sent.
    Also the CPU seconds by role from the router's start to the last record delivered."""
    tag = "lat"
    await js.add_stream(name="BENCH_LAT", subjects=["lat.>"])
    await _add_dest_streams(js, tag)
    cfg = _router_config(url, "BENCH_LAT", ["lat.>"], "router-lat", "nats", tag=tag)
    sup = Supervisor(cfg)
    await sup.start()
    n = int(rate * seconds)
    factory = RetailEventFactory(seed=99)
    events = [factory.mix() for _ in range(n)]
    sent_at: dict[str, float] = {}
    # The publisher shares this process with all the earlier phases left in it: full collections of
    # that heap (60-100 ms each, four in one run) held the publishing back, and the records sent late
    # counted as the router's latency. Frozen out of the collector, as the router's actors do.
    tune_gc()
    cpu = CpuPhase(fixed)
    try:
        tick = 0.02
        per_tick = max(1, int(rate * tick))
        t0 = time.monotonic()
        for k, i in enumerate(range(0, n, per_tick)):
            chunk = events[i:i + per_tick]
            now = time.time()
            for e in chunk:
                sent_at[e.key] = now
            await publish_pipelined(nc, ((f"lat.{e.subject}", e.payload) for e in chunk), window=per_tick + 1)
            await asyncio.sleep(max(0.0, t0 + (k + 1) * tick - time.monotonic()))
        deadline = time.monotonic() + 60
        while await _dest_counts_nats(js, tag) < n * len(DESTS) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        used = cpu.end()
    finally:
        gc.unfreeze()
        await sup.stop()
    warm_up = {e.key for e in events[: n // 4]}  # the first quarter warms Ray and the concurrency limits up
    lat: list[float] = []
    sub = await js.pull_subscribe(f"out{tag}.erp", stream=f"OUT{tag.upper()}_ERP",
                                  config=api.ConsumerConfig(ack_policy=api.AckPolicy.NONE))
    while True:
        try:
            msgs = await sub.fetch(1000, timeout=2)
        except Exception:
            break
        for m in msgs:
            key = orjson.loads(m.data)["idempotency_key"]
            if key not in warm_up:
                lat.append(m.metadata.timestamp.timestamp() - sent_at[key])
        if len(lat) >= n - len(warm_up):
            break
    lat.sort()
    return {"rate": rate, "events": n, "p50_ms": 1000 * lat[len(lat) // 2],
            "p99_ms": 1000 * lat[min(len(lat) - 1, int(len(lat) * 0.99))], "measured": len(lat)}, used


PHASES = {  # key in bench.json -> row in the printed table
    "publish": "publish the events",
    "a_ceiling": "(a) ceiling",
    "b_plain": "(b) plain nats-py",
    "c_router_nats": "(c) router, 3 NATS destinations",
    "c_router_http": "(c) router, 3 HTTP destinations",
    "ordering_off": "(d) families, no order",
    "ordering_on": "(d) the same, ordering + lanes",
    "publish_backlog": "publish the backlog",
    "backlog_drain": "backlog drain",
    "latency": "latency run (publish + route)",
}


async def _bench(events: int, backlog: int, latency_seconds: float, out: Path) -> dict[str, Any]:
    results: dict[str, Any] = {"machine": _machine(), "events": events, "backlog": backlog}
    _say(f"machine: {results['machine']['cpus']} cores, {results['machine']['cpu_model']}, "
         f"{results['machine']['memory_gib']} GiB; {results['machine']['nats_server']}")
    workdir = tempfile.mkdtemp(prefix="router-bench-")
    server = EmbeddedNats(store_dir=os.path.join(workdir, "js")).start()
    emulator = EmulatorProcess(workdir).start()
    excluded = lambda: {p for p in (server.proc.pid if server.proc else 0, emulator.proc.pid if emulator.proc else 0)}  # noqa: E731
    fixed = {pid: role for pid, role in ((server.proc.pid if server.proc else 0, "nats_server"),
                                         (emulator.proc.pid if emulator.proc else 0, "emulators")) if pid}
    cpu: dict[str, Any] = {}

    def phase(name: str, n: int, used: tuple[dict[str, float], dict[str, float]]) -> None:
        work, startup = used
        cpu[name] = {"events": n, "cpu_s": {role: round(v, 3) for role, v in work.items()},
                     "per_1000_events": {role: round(v, 4) for role, v in _per_1000(work, n).items()},
                     "actor_startup_cpu_s": {role: round(v, 3) for role, v in startup.items() if v}}

    try:
        nc = await nats.connect(server.url, pending_size=256 * 1024 * 1024)
        js = nc.jetstream()
        await js.add_stream(name="BENCH", subjects=["bench.>"])
        _say(f"filling the backlog: {events:,} retail events")
        cpu_phase = CpuPhase(fixed)
        await _fill(nc, "bench", events, 1, "backlog")
        phase("publish", events, cpu_phase.end())

        _say("(a) JetStream consume ceiling from Python ...")
        cpu_phase = CpuPhase(fixed)
        a = await bench_ceiling(nc, js, "BENCH", events)
        phase("a_ceiling", events, cpu_phase.end())
        _say(f"    {a:,.0f} msgs/s")
        _say("(b) plain nats-py pull_subscribe + fetch(1000) + decode + ack ...")
        cpu_phase = CpuPhase(fixed)
        b = await bench_plain(js, "BENCH", events)
        phase("b_plain", events, cpu_phase.end())
        _say(f"    {b:,.0f} msgs/s")

        cfg = _router_config(server.url, "BENCH", ["bench.>"], "router-nats", "nats")
        _say("Ray's idle baseline: its daemons and as many idle actors as the router starts ...")
        baseline = await ray_idle_baseline(cfg, MemorySampler(excluded))
        _say(f"    {baseline['rss_mib']:,.0f} MiB RSS, {baseline['pss_mib']:,.0f} MiB PSS "
             f"({baseline['actors']} idle actors and this process)")

        _say("(c) router end to end, three NATS destinations ...")
        await _add_dest_streams(js, "")
        sampler = MemorySampler(excluded)
        c_nats, sup, used = await _run_router(cfg, events, lambda: _dest_counts_nats(js, ""), "(c) nats", sampler,
                                              fixed, lambda: _dest_last_nats(js, ""))
        phase("c_router_nats", events, used)
        st = await sup.stats()
        await sup.stop()
        mem_c = sampler.peak
        _say(f"    {c_nats:,.0f} msgs/s ({c_nats * 3:,.0f} records/s delivered), peak RSS {mem_c / 2**20:,.0f} MiB, "
             f"PSS {sampler.peak_pss / 2**20:,.0f} MiB")

        _say("(c) router end to end, three HTTP destinations (batches of 500) ...")

        async def http_stats() -> dict[str, Any]:
            import aiohttp

            async with aiohttp.ClientSession() as s:
                async with s.get(f"{emulator.url}/stats") as r:
                    return await r.json()

        async def http_count() -> int:
            stats = await http_stats()
            return sum(stats[d]["unique"] for d in DESTS)

        async def http_last() -> float:
            stats = await http_stats()
            return max(stats[d]["last_new_at"] for d in DESTS)

        cfg_http = _router_config(server.url, "BENCH", ["bench.>"], "router-http", "http", emulator.url, tag="h")
        c_http, sup, used = await _run_router(cfg_http, events, http_count, "(c) http", MemorySampler(excluded), fixed,
                                              http_last)
        phase("c_router_http", events, used)
        await sup.stop()
        _say(f"    {c_http:,.0f} msgs/s ({c_http * 3:,.0f} records/s delivered)")

        # (d) What ordering keys and priority lanes cost: the same routes with them off and on. Ordering
        # keys need one reader per consumer (or partitions), so both runs use one ingest actor.
        ordering: dict[str, float] = {}
        for on in (False, True):
            tag, label = ("o1", "ordering_on") if on else ("o0", "ordering_off")
            _say(f"(d) router, one ingest actor, ordering keys and priority lanes {'on' if on else 'off'} ...")
            await _add_dest_streams(js, tag)
            cfg_o = _router_config(server.url, "BENCH", ["bench.>"], f"router-{tag}", "nats", tag=tag,
                                   routes=_family_routes(on), ingest_actors=1)
            rate, sup, used = await _run_router(cfg_o, events, lambda t=tag: _dest_counts_nats(js, t), f"(d) {label}",
                                                MemorySampler(excluded), fixed, lambda t=tag: _dest_last_nats(js, t))
            phase(label, events, used)
            await sup.stop()
            ordering[label] = rate
            _say(f"    {rate:,.0f} msgs/s")

        _say(f"backlog drain: {backlog:,} events published before the router starts ...")
        await js.add_stream(name="BENCH_BACKLOG", subjects=["backlog.>"])
        cpu_phase = CpuPhase(fixed)
        await _fill(nc, "backlog", backlog, 2, "backlog")
        phase("publish_backlog", backlog, cpu_phase.end())
        await _add_dest_streams(js, "b")
        sampler_b = MemorySampler(excluded)
        cfg_b = _router_config(server.url, "BENCH_BACKLOG", ["backlog.>"], "router-backlog", "nats", tag="b")
        c_backlog, sup, used = await _run_router(cfg_b, backlog, lambda: _dest_counts_nats(js, "b"), "backlog",
                                                 sampler_b, fixed, lambda: _dest_last_nats(js, "b"))
        phase("backlog_drain", backlog, used)
        st_b = await sup.stats()
        await sup.stop()
        _say(f"    drained at {c_backlog:,.0f} msgs/s; peak RSS {sampler_b.peak / 2**20:,.0f} MiB, "
             f"PSS {sampler_b.peak_pss / 2**20:,.0f} MiB (vs {mem_c / 2**20:,.0f} MiB RSS for {events:,})")

        # Last of the router runs: its publisher and the records it reads back stay in this process's
        # memory, which the memory runs above count (this process is the router's driver too).
        _say(f"latency at half the router's rate ({c_nats / 2:,.0f} events/s for {latency_seconds:g}s) ...")
        latency, used = await _latency(nc, js, server.url, c_nats / 2, latency_seconds, fixed)
        phase("latency", latency["events"], used)
        _say(f"    p50 {latency['p50_ms']:.1f} ms, p99 {latency['p99_ms']:.1f} ms")
        await nc.close()
        keys_b = sum(d.known_keys for d in st_b.destinations.values())
        keys_c = sum(d.known_keys for d in st.destinations.values())
        dedup_keys = max(1_000_000, events)
        _say(f"dedup index memory: {dedup_keys:,} keys ...")
        dedup = dedup_memory(dedup_keys, cfg.dedup.window)
        _say(f"    {dedup['bytes_per_key']:.1f} bytes per key held")
        results.update({
            "a_ceiling_msgs_per_s": a,
            "b_plain_msgs_per_s": b,
            "c_router_nats_msgs_per_s": c_nats,
            "c_router_http_msgs_per_s": c_http,
            "d_ordering_msgs_per_s": {"off": ordering["ordering_off"], "on": ordering["ordering_on"]},
            "ratios": {"nats_to_a": c_nats / a, "nats_to_b": c_nats / b, "http_to_a": c_http / a, "http_to_b": c_http / b},
            "latency_at_half_load": latency,
            "peak_rss_mib": {"router_nats_run": mem_c / 2**20, "backlog_run": sampler_b.peak / 2**20},
            "peak_pss_mib": {"router_nats_run": sampler.peak_pss / 2**20, "backlog_run": sampler_b.peak_pss / 2**20},
            "pss_by_role_at_peak_mib": {"router_nats_run": sampler.at_peak, "backlog_run": sampler_b.at_peak},
            "ray_idle_baseline_mib": baseline,
            "above_ray_baseline_mib": {
                run: {"rss": rss / 2**20 - baseline["rss_mib"], "pss": pss / 2**20 - baseline["pss_mib"]}
                for run, rss, pss in (("router_nats_run", mem_c, sampler.peak_pss),
                                      ("backlog_run", sampler_b.peak, sampler_b.peak_pss))},
            "dedup_keys_held": {"router_nats_run": keys_c, "backlog_run": keys_b},
            "dedup_index": dedup,
            "backlog_drain_msgs_per_s": c_backlog,
            "cpu_by_role": cpu,
        })
    finally:
        emulator.stop()
        server.cleanup()
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    return results


def _chart(r: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    labels = ["(a) ceiling", "(b) plain nats-py", "(c) router → NATS ×3", "(c) router → HTTP ×3"]
    values = [r["a_ceiling_msgs_per_s"], r["b_plain_msgs_per_s"], r["c_router_nats_msgs_per_s"],
              r["c_router_http_msgs_per_s"]]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    bars = ax.barh(labels[::-1], values[::-1], color=["#4a7", "#4a7", "#888", "#bbb"])
    for bar, v in zip(bars, values[::-1]):
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {v:,.0f}", va="center")
    m, lat = r["machine"], r["latency_at_half_load"]
    ax.set_xlabel("source messages per second")
    ax.set_title(f"{m['cpus']} cores, {m['cpu_model'][:40]} - latency at half load: "
                 f"p50 {lat['p50_ms']:.0f} ms, p99 {lat['p99_ms']:.0f} ms", fontsize=9)
    ax.set_xlim(0, max(values) * 1.2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def run_bench(events: int = 200_000, backlog: int = 1_000_000, latency_seconds: float = 10.0,
              out: str = "bench-results") -> int:
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    r = asyncio.run(_bench(events, backlog, latency_seconds, out_dir))
    (out_dir / "bench.json").write_text(json.dumps(r, indent=2))
    png = _chart(r, out_dir / "bench.png")
    rt = r["ratios"]
    _say("")
    _say(f"{'path':<40} {'msgs/s':>10} {'vs (a)':>8} {'vs (b)':>8}")
    for label, v in (("(a) JetStream ceiling", r["a_ceiling_msgs_per_s"]), ("(b) plain nats-py", r["b_plain_msgs_per_s"]),
                     ("(c) router, 3 NATS destinations", r["c_router_nats_msgs_per_s"]),
                     ("(c) router, 3 HTTP destinations", r["c_router_http_msgs_per_s"])):
        _say(f"{label:<40} {v:>10,.0f} {v / r['a_ceiling_msgs_per_s']:>7.0%} {v / r['b_plain_msgs_per_s']:>7.1f}x")
    d = r["d_ordering_msgs_per_s"]
    _say(f"(d) ordering keys + priority lanes, one ingest actor: {d['off']:,.0f} msgs/s off, {d['on']:,.0f} on "
         f"({d['on'] / d['off'] - 1:+.0%})")
    lat = r["latency_at_half_load"]
    _say(f"latency at {lat['rate']:,.0f} events/s: p50 {lat['p50_ms']:.1f} ms, p99 {lat['p99_ms']:.1f} ms")
    mem, pss = r["peak_rss_mib"], r["peak_pss_mib"]
    _say(f"peak memory of the router's processes, summed RSS / PSS: {mem['router_nats_run']:,.0f} / "
         f"{pss['router_nats_run']:,.0f} MiB ({r['events']:,} events), {mem['backlog_run']:,.0f} / "
         f"{pss['backlog_run']:,.0f} MiB (backlog of {r['backlog']:,})")
    base, above = r["ray_idle_baseline_mib"], r["above_ray_baseline_mib"]
    _say(f"  Ray's idle baseline in this run ({base['actors']} idle actors, its daemons, this process): "
         f"{base['rss_mib']:,.0f} / {base['pss_mib']:,.0f} MiB; the router above it: "
         f"{above['router_nats_run']['rss']:,.0f} / {above['router_nats_run']['pss']:,.0f} MiB ({r['events']:,} events), "
         f"{above['backlog_run']['rss']:,.0f} / {above['backlog_run']['pss']:,.0f} MiB (backlog)")
    for run, roles in r["pss_by_role_at_peak_mib"].items():
        _say(f"  PSS at the peak, {run}: " + ", ".join(f"{ROLES.get(k, k)} {v:,.0f}" for k, v in sorted(roles.items()))
             + " MiB (bench: this process, the router's driver and the publisher before each run)")
    _say(f"ratios: nats/a {rt['nats_to_a']:.2f}, nats/b {rt['nats_to_b']:.2f}, http/a {rt['http_to_a']:.2f}, "
         f"http/b {rt['http_to_b']:.2f}")
    dd = r["dedup_index"]
    _say(f"dedup index: {dd['bytes_per_key']:.1f} bytes per key held ({dd['keys_held']:,} keys, "
         f"{dd['memory_mib']:,.1f} MiB); {dd['lookup_us_per_key']:.2f} us a key to look up in batches of 500")
    _say("")
    _say("CPU seconds per 1,000 source events, by role (user + system; the router's start-up, every process")
    _say("until its actors are up, and actors started inside a phase until their first work, is the last")
    _say("column, in CPU seconds):")
    _say(f"{'phase':<32} {'events':>9}" + "".join(f" {label:>10}" for label in ROLES.values())
         + f" {'total':>8} {'start-up':>9}")
    for name, label in PHASES.items():
        ph = r["cpu_by_role"].get(name)
        if ph:
            per = ph["per_1000_events"]
            _say(f"{label:<32} {ph['events']:>9,}" + "".join(f" {per[role]:>10.3f}" for role in ROLES)
                 + f" {per['total']:>8.3f} {sum(ph['actor_startup_cpu_s'].values()):>9.2f}")
    _say(f"wrote {out_dir / 'bench.json'}" + (f" and {out_dir / 'bench.png'}" if png else
                                               " (no chart: `pip install matplotlib`)"))
    return 0
