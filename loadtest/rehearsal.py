"""``router rehearse``: a holiday-peak rehearsal, headless, with a go / no-go report.

Runs ``loadtest/locustfile.py`` headless in a subprocess (the load: a shape of retail events
published to JetStream), plays the scenario's fault windows against the destination emulators on
the load's clock, samples the source consumers' backlog, the router's stats and what the
emulators received every second, waits until everything sent is final, and then counts: what
each destination had to get (the route table applied to every acked publish, from the locust
users' journal) against what it received (by idempotency key, with first-receipt times).

Two targets:
- embedded (default): an embedded nats-server, the ERP / marketplace / carrier emulators, a
  local Ray and the router with the demo config (``router demo``'s), all started and stopped here;
- an existing deployment: its NATS URL, its router config (sources and routes; the router is
  already running it, with its HTTP destinations pointed at the emulators), the emulators' URL,
  and optionally the router's metrics URL for breakers, parking and replay figures.
"""

from __future__ import annotations

import asyncio
import csv
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

import aiohttp
import msgspec
import nats
import orjson

from router.config import Config
from router.control.demo import expected_deliveries, read_dead_letters
from router.jetstream.dead_letters import H
from router.loadtest.fault_timeline import FaultTimeline
from router.loadtest.report import RehearsalData, Sample, build_report, write_report
from router.loadtest.retail_events import GeneratedEvent
from router.loadtest.scenario import Scenario
from router.loadtest.rate_profile import make_profile

__all__ = ["Deployment", "RehearsalError", "rehearse", "run_rehearsal"]

LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
RouterStatsFn = Callable[[], Awaitable[dict[str, dict[str, Any]]]]


def _say(msg: str) -> None:
    print(msg, flush=True)


class RehearsalError(Exception):
    """The rehearsal could not run (unreachable NATS, locust failing): no report, exit code 3."""


class Deployment(msgspec.Struct):
    """What the rehearsal drives and watches."""

    nats_url: str
    cfg: Config
    emulator_url: str
    router_stats: RouterStatsFn | None = None  # destination -> stats (breaker_state, parked, ...)
    mode: str = "existing deployment"


def supervisor_stats(sup: Any) -> RouterStatsFn:
    """Router stats straight from an in-process ``Supervisor``."""

    async def get() -> dict[str, dict[str, Any]]:
        st = await sup.stats()
        return {d: msgspec.to_builtins(s) for d, s in st.destinations.items()}

    return get


_BREAKER_NAMES = {0: "closed", 1: "half_open", 2: "open"}
_METRIC = re.compile(r'^router_destination_(\w+?)(?:_total)?\{destination="([^"]+)"\}\s+(\S+)$')


def metrics_stats(url: str) -> RouterStatsFn:
    """Router stats scraped from its Prometheus endpoint (``metrics.port``) in an existing deployment."""

    async def get() -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        async with aiohttp.ClientSession() as http:
            async with http.get(url, timeout=aiohttp.ClientTimeout(total=3)) as r:
                text = await r.text()
        for line in text.splitlines():
            m = _METRIC.match(line)
            if m:
                field, dest, value = m.group(1), m.group(2), float(m.group(3))
                out.setdefault(dest, {})[field] = (_BREAKER_NAMES.get(int(value), "open") if field == "breaker_state"
                                                   else int(value))
        return out

    return get


class _Watcher:
    """Samples the running system: source backlog, router stats, emulator receipts."""

    def __init__(self, dep: Deployment, js: Any, http: aiohttp.ClientSession) -> None:
        self.dep, self.js, self.http = dep, js, http
        self.samples: list[Sample] = []
        self.router: dict[str, dict[str, Any]] = {}
        self._poll: asyncio.Task | None = None

    async def sample(self) -> Sample:
        """One look at all three at once (a slow one must not skew the others' time)."""
        s = Sample(time.time(), 0)
        await asyncio.gather(self._backlog(s), self._router(s), self._emulators(s))
        self.samples.append(s)
        return s

    async def _backlog(self, s: Sample) -> None:
        for src in self.dep.cfg.sources:
            try:
                for consumer in src.consumers:  # one per partition of a partitioned source
                    ci = await self.js.consumer_info(src.stream, consumer, timeout=2)
                    s.pending += ci.num_pending + ci.num_ack_pending
                s.published += (await self.js.stream_info(src.stream)).state.messages
            except Exception:  # the consumer is not there yet: nothing pending on it
                pass

    async def _router(self, s: Sample) -> None:
        """The latest router stats; they are polled on their own (a busy router answers late)."""
        if self.dep.router_stats is None:
            return
        if self._poll is None or self._poll.done():
            self._poll = asyncio.get_running_loop().create_task(self._poll_router())
        if self.router:
            s.park_backlog = sum(int(v.get("park_backlog", 0)) for v in self.router.values())
            s.breakers = {d: str(v.get("breaker_state", "closed")) for d, v in self.router.items()}

    async def _poll_router(self) -> None:
        try:
            self.router = await self.dep.router_stats()  # type: ignore[misc]
        except Exception:  # keep the last figures; the next sample asks again
            pass

    async def close(self) -> None:
        if self._poll is not None:
            await asyncio.gather(self._poll, return_exceptions=True)
        if self.dep.router_stats is not None:
            await self._poll_router()  # the final totals (parked, replayed, breaker openings)

    async def _emulators(self, s: Sample) -> None:
        try:
            async with self.http.get(f"{self.dep.emulator_url}/stats", timeout=aiohttp.ClientTimeout(total=3)) as r:
                s.received = {d: v["records"] for d, v in (await r.json()).items()}
        except Exception:
            pass


async def _quiet(_exc: Exception) -> None:
    """nats-py logs each failed connect attempt with a traceback; the rehearsal says it once."""


def _locust_cmd(sc: Scenario, nats_url: str, out: Path, journal: Path) -> list[str]:
    return [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--only-summary",
            "--csv", str(out / "locust"), "--loglevel", "WARNING", "--nats-url", nats_url,
            "--load-shape", sc.shape, "--base-rate", f"{sc.base_rate:g}", "--peak-duration", f"{sc.duration_s:g}",
            "--per-user-rate", f"{sc.per_user_rate:g}", "--duplicate-ratio", f"{sc.duplicate_ratio:g}",
            "--malformed-ratio", f"{sc.malformed_ratio:g}", "--sent-journal", str(journal),
            "--stop-timeout", "15"]  # users stopped on a ramp-down finish the publish they are in


def _locust_summary(out: Path) -> dict[str, Any]:
    try:
        with open(out / "locust_stats.csv") as fh:
            row = next(r for r in csv.DictReader(fh) if r["Name"] == "Aggregated")
    except (OSError, StopIteration):
        return {}
    return {"publish_failures": int(row["Failure Count"]), "publish_ack_p50_ms": float(row["50%"]),
            "publish_ack_p99_ms": float(row["99%"])}


def _read_journal(journal: Path) -> list[dict[str, Any]]:
    rows = []
    for f in sorted(journal.glob("sent-*.jsonl")):
        rows += [orjson.loads(line) for line in f.read_bytes().splitlines() if line.strip()]
    rows.sort(key=lambda r: r["t"])
    return rows


def _progress(s: Sample, t0: float, sc: Scenario, timeline: FaultTimeline, phase: str) -> str:
    t = s.t - t0
    profile = make_profile(sc.shape, sc.base_rate, sc.duration_s)
    got = " ".join(f"{d} {n:,}" for d, n in sorted(s.received.items()))
    faults = ", ".join(a.name for a in timeline.active()) or "none"
    parked = f"  parked {s.park_backlog:,}" if s.park_backlog else ""
    return (f"  [{t:5.0f}s/{sc.duration_s:.0f}s] {phase:<16} target {profile.rate(t):6.0f}/s  published "
            f"{s.published:,}  received {got}  backlog {s.pending:,}{parked}  faults: {faults}")


async def rehearse(sc: Scenario, dep: Deployment, out: Path, say: Callable[[str], None] = _say,
                   progress_every: float = 5.0) -> dict[str, Any]:
    """Run the scenario against ``dep`` and return the report (also written to ``out``)."""
    out.mkdir(parents=True, exist_ok=True)
    journal = out / "sent"
    shutil.rmtree(journal, ignore_errors=True)
    profile = make_profile(sc.shape, sc.base_rate, sc.duration_s)
    try:
        nc = await asyncio.wait_for(nats.connect(dep.nats_url, name="router-rehearsal", error_cb=_quiet), 15)
    except (asyncio.TimeoutError, OSError, nats.errors.Error) as exc:
        raise RehearsalError(f"cannot reach NATS at {dep.nats_url}: {type(exc).__name__} {exc}".strip()) from None
    js = nc.jetstream()
    timeline = FaultTimeline(dep.emulator_url, sc.faults, say)
    log = open(out / "locust.log", "wb")
    proc = subprocess.Popen(_locust_cmd(sc, dep.nats_url, out, journal), stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    faults_task: asyncio.Task | None = None
    try:
        async with aiohttp.ClientSession() as http:
            watcher = _Watcher(dep, js, http)
            started = journal / "started"
            deadline = time.monotonic() + 60
            while not (started.exists() and started.read_text()):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RehearsalError(f"locust did not start: see {out / 'locust.log'}:\n"
                                       + (out / "locust.log").read_text(errors="replace")[-2000:])
                await asyncio.sleep(0.1)
            t0 = float(started.read_text())
            say(f"load started: {sc.shape}, base {sc.base_rate:g} events/s for {sc.duration_s:g}s "
                f"(about {profile.total_events():,.0f} events), {len(sc.faults)} fault window(s)")
            faults_task = asyncio.get_running_loop().create_task(timeline.play(t0))
            last = 0.0
            while proc.poll() is None:
                s = await watcher.sample()
                if time.monotonic() - last >= progress_every:
                    last = time.monotonic()
                    say(_progress(s, t0, sc, timeline, profile.phase_at(s.t - t0)))
                await asyncio.sleep(1.0)
            load_ended = time.time()
            await faults_task
            if proc.returncode not in (0, 1):  # 1: some publishes failed, which the report counts
                errors = [ln for ln in (out / "locust.log").read_text(errors="replace").splitlines()
                          if "/ERROR/router" in ln or "/CRITICAL/" in ln]
                raise RehearsalError(f"locust exited with {proc.returncode}"
                                     + (f": {errors[-1].split(': ', 1)[-1]}" if errors else "")
                                     + f" (log: {out / 'locust.log'})")

            say(f"load done after {load_ended - t0:.0f}s; waiting until everything is final "
                f"(at most {sc.drain_timeout_s:g}s) ...")
            drained, stable, prev = False, 0, None
            deadline = time.monotonic() + sc.drain_timeout_s
            while time.monotonic() < deadline:
                s = await watcher.sample()
                busy = any(int(v.get("queued", 0)) + int(v.get("in_flight_keys", 0)) for v in watcher.router.values())
                stable = stable + 1 if (s.received == prev and s.pending == 0 and not s.park_backlog
                                        and not busy) else 0
                prev = s.received
                if stable >= 3:
                    drained = True
                    break
                if time.monotonic() - last >= progress_every:
                    last = time.monotonic()
                    say(_progress(s, t0, sc, timeline, "draining"))
                await asyncio.sleep(1.0)
            finished = time.time()
            await watcher.close()

            sent_rows = _read_journal(journal)
            events = [GeneratedEvent(r["s"], r["p"].encode("latin-1"), r["k"], "", r["h"]) for r in sent_rows]
            sent_keys = {r["k"] for r in sent_rows if r["k"]}
            expected = expected_deliveries(dep.cfg, events)
            received: dict[str, dict[str, int]] = {}
            receipts: dict[str, dict[str, float]] = {}
            for dest in dep.cfg.destinations:
                async with http.get(f"{dep.emulator_url}/received/{dest}") as r:
                    if r.status == 404:
                        continue
                    received[dest] = {k: c for k, c in (await r.json()).items() if k in sent_keys}
                async with http.get(f"{dep.emulator_url}/receipts/{dest}") as r:
                    receipts[dest] = {k: t for k, t in (await r.json()).items() if k in sent_keys}
        letters = [x for x in await read_dead_letters(js, dep.cfg.dead_letter.stream)
                   if float(x.get(H.FAILED_AT, 0) or 0) >= t0 - 1]
        dead: dict[str, list[str]] = {}
        for x in letters:
            if x.get(H.STAGE) == "destination" and x.get(H.KEY) in sent_keys:
                dead.setdefault(x.get(H.DESTINATION, ""), []).append(x[H.KEY])
        data = RehearsalData(
            scenario=sc, mode=dep.mode, started_at=t0, load_ended_at=load_ended, finished_at=finished,
            sent=[(r["t"], r["k"], not r["k"]) for r in sent_rows],
            expected={d: sorted(v) for d, v in expected.items()}, received=received, receipts=receipts,
            dead_lettered=dead, ingest_dead_letters=sum(1 for x in letters if x.get(H.STAGE) == "ingest"),
            samples=watcher.samples, faults=[msgspec.to_builtins(a) for a in timeline.applied],
            router_totals={d: {k: v for k, v in st.items() if isinstance(v, int)} for d, st in watcher.router.items()},
            locust=_locust_summary(out), drained=drained)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        log.close()
        if faults_task and not faults_task.done():
            faults_task.cancel()
            await asyncio.gather(faults_task, return_exceptions=True)
        await nc.close()
    (out / "data.json").write_bytes(msgspec.json.encode(data))  # the raw figures: rebuild a report from them
    report = build_report(data)
    paths = write_report(report, out)
    report["files"] = {k: str(v) for k, v in paths.items()}
    return report


def print_summary(r: dict[str, Any], say: Callable[[str], None] = _say) -> None:
    s, bl = r["sent"], r["backlog"]
    say("")
    say(f"sent {s['events']:,} events ({s['unique_keys']:,} unique keys, {s['resent_duplicates']:,} re-sent, "
        f"{s['malformed']:,} malformed; {s['ingest_dead_letters']:,} dead-lettered at ingest)")
    say(f"{'destination':<12} {'expected':>9} {'delivered':>10} {'lost':>5} {'dup':>4} {'dlq':>4} {'parked':>7} "
        f"{'replayed':>9} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}")
    for d, x in r["destinations"].items():
        lat = x["latency_ms"]
        say(f"{d:<12} {x['expected']:>9,} {x['delivered']:>10,} {x['lost']:>5,} {x['duplicated']:>4,} "
            f"{x['dead_lettered']:>4,} {x.get('parked', '-'):>7} {x.get('replayed', '-'):>9} "
            + " ".join(f"{(lat[q] if lat[q] is not None else float('nan')):>8,.0f}" for q in ("p50", "p95", "p99")))
    say(f"peak backlog {bl['peak']:,} at {bl['peak_at_s']}s, drained after {bl['drained_after_s']}s; "
        f"breaker transitions: " + (", ".join(f"{t['destination']} {t['to']} at {t['t_s']:g}s"
                                              for t in r["breaker_transitions"]) or "none"))
    for c in r["slo_checks"]:
        say(f"  {'pass' if c['ok'] else 'FAIL'}  {c['name']} (actual {c['actual']})")
    say(f"verdict: {r['verdict'].upper()}" + (f" ({', '.join(r['failed_slos'])})" if r["failed_slos"] else ""))
    say("report: " + ", ".join(r.get("files", {}).values()))


async def _embedded(sc: Scenario, out: Path, workdir: str) -> dict[str, Any]:
    from router.config import parse_config
    from router.control.demo import demo_config_dict
    from router.control.signals import on_stop_signals
    from router.control.supervisor import Supervisor
    from router.jetstream.embedded_server import EmbeddedNats
    from router.loadtest.sink_emulator import EmulatorProcess

    task = asyncio.current_task()
    server = EmbeddedNats(store_dir=os.path.join(workdir, "jetstream")).start()
    emulator = EmulatorProcess(workdir).start()
    sup = None
    try:
        _say(f"embedded nats-server on {server.url}, emulators on {emulator.url}; starting Ray and the router ...")
        cfg = parse_config(demo_config_dict(server.url, emulator.url), "<rehearsal>")
        sup = Supervisor(cfg)
        await sup.start()
        if task:
            on_stop_signals(task.cancel)  # after ray.init, which replaces the handlers
        dep = Deployment(server.url, cfg, emulator.url, supervisor_stats(sup), mode="embedded")
        return await rehearse(sc, dep, out)
    finally:
        if sup:
            await sup.stop()
        emulator.stop()
        server.cleanup()


def run_rehearsal(sc: Scenario, out: str, nats_url: str | None = None, cfg: Config | None = None,
                  emulator_url: str | None = None, metrics_url: str | None = None) -> int:
    """The command: 0 when every SLO holds (go), 1 when one fails (no-go), 3 when it could not run,
    130 when interrupted."""
    import ray

    out_dir = Path(out)
    workdir = tempfile.mkdtemp(prefix="router-rehearsal-")
    try:
        if nats_url:
            assert cfg is not None and emulator_url
            dep = Deployment(nats_url, cfg, emulator_url.rstrip("/"),
                             metrics_stats(metrics_url) if metrics_url else None)
            report = asyncio.run(rehearse(sc, dep, out_dir))
        else:
            report = asyncio.run(_embedded(sc, out_dir, workdir))
    except (KeyboardInterrupt, asyncio.CancelledError):
        _say("\ninterrupted: stopped everything the rehearsal started (no report)")
        return 130
    except RehearsalError as exc:
        _say(f"error: {exc}")
        return 3
    finally:
        if ray.is_initialized():
            ray.shutdown()
        shutil.rmtree(workdir, ignore_errors=True)
    print_summary(report)
    return 0 if report["verdict"] == "go" else 1
