"""The ``router`` command line.

click rather than argparse: nested commands with typed options and consistent ``--help`` for a
tool that grows (run, demo, check, schema; dlq and bench later) at no cost in code.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from typing import Any

import click

from router.config import ConfigError, check_environment, config_schema, load_config, routes_schema

__all__ = ["main"]


def _fail(msg: str, code: int = 2) -> None:
    click.echo(f"error: {msg}", err=True)
    sys.exit(code)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def main(verbose: bool) -> None:
    """Route retail events from NATS JetStream to ERP, marketplace and carrier destinations."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@main.command()
@click.option("-c", "--config", "config_path", required=True, type=click.Path(dir_okay=False),
              help="The router config (YAML); see router.example.yaml.")
@click.option("--drain-timeout", default=60.0, show_default=True, help="Seconds to finish in-flight work on stop.")
def run(config_path: str, drain_timeout: float) -> None:
    """Run the router until SIGINT/SIGTERM, then drain in-flight work and ack before exiting."""
    try:
        cfg = load_config(config_path)
        check_environment(cfg, config_path)
    except ConfigError as exc:
        _fail(str(exc))
    from router.jetstream.streams import SetupError
    from router.control.service import run_service

    try:
        asyncio.run(run_service(cfg, drain_timeout=drain_timeout))
    except SetupError as exc:
        _fail(f"{config_path}: {exc}", 3)
    except OSError as exc:
        _fail(f"cannot reach NATS at {cfg.nats.url}: {exc}. Is nats-server running? "
              "(`router demo` starts an embedded one)", 3)


@main.command()
@click.option("--events", default=5000, show_default=True, help="Events in the burst.")
@click.option("--duplicates", default=0.05, show_default=True, help="Share re-sent with the same idempotency key.")
@click.option("--malformed", default=6, show_default=True, help="Malformed events mixed in.")
@click.option("--timeout", default=180.0, show_default=True, help="Seconds to wait for the burst to be final.")
def demo(events: int, duplicates: float, malformed: int, timeout: float) -> None:
    """Run the whole pipeline locally: embedded NATS, local Ray, emulated destinations."""
    logging.getLogger().setLevel(logging.WARNING)
    from router.control.demo import run_demo

    sys.exit(run_demo(events, duplicates, malformed, timeout))


@main.command()
@click.option("-c", "--config", "config_path", required=True, type=click.Path(dir_okay=False))
def check(config_path: str) -> None:
    """Validate a config (and its routes file) without starting anything."""
    try:
        cfg = load_config(config_path)
    except ConfigError as exc:
        _fail(str(exc))
    click.echo(f"{config_path}: ok ({len(cfg.sources)} sources, {len(cfg.destinations)} destinations, "
               f"{len(cfg.route_list)} routes)")


@main.command()
@click.argument("which", type=click.Choice(["config", "routes"]), default="config")
def schema(which: str) -> None:
    """Print the JSON Schema of the config file or of a routes file."""
    click.echo(json.dumps(config_schema() if which == "config" else routes_schema(), indent=2, sort_keys=True))


@main.group()
def dlq() -> None:
    """List, show and replay dead letters (all, by destination, by time range)."""


def _dlq_options(f: Any) -> Any:
    f = click.option("--until", help="Up to this time (ISO 8601) or age (`30m`).")(f)
    f = click.option("--since", help="From this time (ISO 8601) or age (`2h` = the last two hours).")(f)
    f = click.option("--stage", type=click.Choice(["ingest", "destination"]), help="Where it failed.")(f)
    f = click.option("-d", "--destination", help="Only this destination's dead letters.")(f)
    f = click.option("-c", "--config", "config_path", required=True, type=click.Path(dir_okay=False))(f)
    return f


def _dlq_run(config_path: str, action: Any) -> Any:
    try:
        cfg = load_config(config_path)
    except ConfigError as exc:
        _fail(str(exc))
    from router.jetstream.streams import ensure_router_streams
    from router.jetstream.connection import connect

    async def go() -> Any:
        nc = await connect(cfg.nats, "router-dlq")
        try:
            js = nc.jetstream()
            await ensure_router_streams(js, cfg)
            return await action(cfg, js)
        finally:
            await nc.close()

    try:
        return asyncio.run(go())
    except OSError as exc:
        _fail(f"cannot reach NATS at {cfg.nats.url}: {exc}", 3)


def _filter(destination: str | None, stage: str | None, since: str | None, until: str | None) -> Any:
    from router.control.dlq import DeadLetterFilter, parse_when

    try:
        return DeadLetterFilter(destination, stage, parse_when(since), parse_when(until))
    except ValueError as exc:
        _fail(str(exc))


@dlq.command("list")
@_dlq_options
@click.option("--limit", default=100, show_default=True)
def dlq_list(config_path: str, destination: str | None, stage: str | None, since: str | None,
             until: str | None, limit: int) -> None:
    """One line per dead letter: sequence, time, where, key, reason."""
    from datetime import datetime, timezone

    from router.jetstream.dead_letters import H
    from router.control.dlq import iter_dead_letters

    flt = _filter(destination, stage, since, until)
    letters = _dlq_run(config_path, lambda cfg, js: iter_dead_letters(js, cfg, flt, limit))
    click.echo(f"{'seq':>8}  {'time (UTC)':<19}  {'stage':<11} {'where':<12} {'key':<28} reason")
    for dl in letters:
        when = datetime.fromtimestamp(dl.time, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        click.echo(f"{dl.seq:>8}  {when}  {dl.stage:<11} {dl.where:<12} {dl.headers.get(H.KEY, '-'):<28} "
                   f"{dl.headers.get(H.REASON, '')}")
    click.echo(f"{len(letters)} dead letter(s)" + (f" (first {limit}; --limit for more)" if len(letters) == limit else ""))


@dlq.command("show")
@click.option("-c", "--config", "config_path", required=True, type=click.Path(dir_okay=False))
@click.argument("seq", type=int)
def dlq_show(config_path: str, seq: int) -> None:
    """Headers and payload of one dead letter."""

    async def show(cfg: Any, js: Any) -> Any:
        return await js.get_msg(cfg.dead_letter.stream, seq)

    try:
        msg = _dlq_run(config_path, show)
    except Exception as exc:
        _fail(f"no dead letter with sequence {seq}: {exc}", 1)
    click.echo(f"subject: {msg.subject}")
    for k, v in (msg.headers or {}).items():
        click.echo(f"{k}: {v}")
    click.echo("")
    click.echo((msg.data or b"").decode(errors="replace"))


@dlq.command("replay")
@_dlq_options
def dlq_replay(config_path: str, destination: str | None, stage: str | None, since: str | None,
               until: str | None) -> None:
    """Replay the selected dead letters (deduplicated per destination), then remove them."""
    from router.control.dlq import iter_dead_letters, replay

    flt = _filter(destination, stage, since, until)

    def progress(done: int, total: int) -> None:
        click.echo(f"  replayed {done}/{total}", err=True)

    async def go(cfg: Any, js: Any) -> Any:
        letters = await iter_dead_letters(js, cfg, flt)
        click.echo(f"replaying {len(letters)} dead letter(s)", err=True)
        return await replay(js, cfg, letters, progress)

    done, problems = _dlq_run(config_path, go)
    for p in problems:
        click.echo(f"  not replayed: {p}", err=True)
    click.echo(f"replayed {done} dead letter(s); the running router delivers them"
               + (f"; {len(problems)} could not be replayed" if problems else ""))
    if problems:
        sys.exit(1)


@main.command()
@click.option("--events", default=200_000, show_default=True, help="Backlog for the throughput runs.")
@click.option("--backlog", default=1_000_000, show_default=True, help="Backlog for the memory run.")
@click.option("--latency-seconds", default=10.0, show_default=True, help="Length of the half-load latency run.")
@click.option("--out", default="bench-results", show_default=True, help="Where bench.json and bench.png go.")
def bench(events: int, backlog: int, latency_seconds: float, out: str) -> None:
    """Measure throughput, latency and memory against the JetStream ceiling (embedded NATS)."""
    logging.getLogger().setLevel(logging.WARNING)
    from router.loadtest.bench import run_bench

    sys.exit(run_bench(events, backlog, latency_seconds, out))


@main.command()
@click.option("-s", "--scenario", "scenario_name", default="holiday-peak", show_default=True,
              help="A scenario name from loadtest/scenarios/ or a path to a scenario file.")
@click.option("--base-rate", type=float, help="Events/s at baseline (overrides the scenario's).")
@click.option("--duration", type=float, help="Seconds of load (overrides the scenario's; fault windows stretch).")
@click.option("--nats-url", help="An existing deployment's NATS (default: embedded NATS, Ray and router).")
@click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False),
              help="With --nats-url: the router config the deployment runs (sources, routes).")
@click.option("--emulator-url", help="With --nats-url: the destination emulators the deployment delivers to.")
@click.option("--metrics-url", help="With --nats-url: the router's Prometheus endpoint (breakers, parking).")
@click.option("--slo-p95-ms", type=float, help="End-to-end p95 limit (overrides the scenario's).")
@click.option("--slo-p99-ms", type=float, help="End-to-end p99 limit (overrides the scenario's).")
@click.option("--slo-drain-s", type=float, help="Seconds for the peak backlog to drain (overrides the scenario's).")
@click.option("--slo-max-dead-lettered", type=int, help="Dead letters allowed at destinations.")
@click.option("--out", default="rehearsal-results", show_default=True, help="Where report.html / .json go.")
def rehearse(scenario_name: str, base_rate: float | None, duration: float | None, nats_url: str | None,
             config_path: str | None, emulator_url: str | None, metrics_url: str | None,
             slo_p95_ms: float | None, slo_p99_ms: float | None, slo_drain_s: float | None,
             slo_max_dead_lettered: int | None, out: str) -> None:
    """Rehearse a peak with locust and faults; write a go / no-go report; exit 1 if an SLO fails."""
    logging.getLogger().setLevel(logging.WARNING)
    import msgspec

    from router.loadtest.rehearsal import run_rehearsal
    from router.loadtest.scenario import ScenarioError, load_scenario

    cfg = None
    if nats_url:
        if not config_path or not emulator_url:
            _fail("--nats-url needs --config (the deployment's router config) and --emulator-url")
        try:
            cfg = load_config(config_path)
        except ConfigError as exc:
            _fail(str(exc))
    try:
        sc = load_scenario(scenario_name, list(cfg.destinations) if cfg else None)
    except ScenarioError as exc:
        _fail(str(exc))
    sc = sc.scaled(base_rate, duration)
    slo = {k: v for k, v in (("p95_ms", slo_p95_ms), ("p99_ms", slo_p99_ms), ("drain_s", slo_drain_s),
                             ("max_dead_lettered", slo_max_dead_lettered)) if v is not None}
    sc = msgspec.structs.replace(sc, slo=msgspec.structs.replace(sc.slo, **slo))
    sys.exit(run_rehearsal(sc, out, nats_url, cfg, emulator_url, metrics_url))


@main.command()
def encoders() -> None:
    """List the encoders a route can name."""
    from router.codecs import ENCODERS

    for e in sorted(ENCODERS.values(), key=lambda e: e.name):
        fams = ", ".join(sorted(e.families)) if e.families else "any"
        click.echo(f"{e.name:<24} {fams:<20} {e.description}")


if __name__ == "__main__":
    main()
