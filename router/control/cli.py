"""The ``router`` command line.

click rather than argparse: nested commands with typed options and consistent ``--help`` for a
tool that grows (run, demo, check, schema; dlq and bench later) at no cost in code.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from typing import Any

import click

from router.config import ConfigError, check_environment, config_schema, load_config, routes_schema
from router.config_base import Duration
from router.control.cli_support import fail, run_on_nats
from router.control.routes_cli import print_report, routes, run_check
from router.redaction import install_log_redaction, redact, secrets_from_config

__all__ = ["main"]


class DurationParam(click.ParamType):
    """A duration on the command line in the config's units: `30s`, `250ms`, `5m`; a bare number is seconds."""

    name = "duration"

    def convert(self, value: Any, param: Any, ctx: Any) -> float:
        try:
            return float(Duration.parse(float(value) if isinstance(value, str) and _is_number(value) else value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


DURATION = DurationParam()


def _version() -> str:
    try:
        return package_version("peak-router")
    except PackageNotFoundError:  # running from a checkout that was never installed
        return "unknown"


def _protect_secrets(cfg: Any) -> None:
    """From here on, every log line and error of this process is redacted of the config's secrets."""
    install_log_redaction(secrets_from_config(cfg))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(_version(), "-V", "--version", prog_name="router")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True,
              envvar="ROUTER_LOG_FORMAT", help="json: one JSON object per line, with structured fields.")
def main(verbose: bool, log_format: str) -> None:
    """Route retail events from NATS JetStream to ERP, marketplace and carrier destinations."""
    from router.control.logging_setup import setup_logging

    setup_logging(log_format, logging.DEBUG if verbose else logging.INFO)


@main.command()
@click.option("-c", "--config", "config_path", required=True, type=click.Path(dir_okay=False),
              help="The router config (YAML); see router.example.yaml.")
@click.option("--drain-timeout", type=DURATION, default="60s", show_default=True,
              help="How long to finish in-flight work on stop (`30s`, `2m`).")
@click.option("--watch", is_flag=True,
              help="Reload routes and destinations when the config file or its routes file changes (SIGHUP always does).")
def run(config_path: str, drain_timeout: float, watch: bool) -> None:
    """Run the router until SIGINT/SIGTERM, then drain in-flight work and ack before exiting.

    Exits 2 on a bad config, 3 when NATS cannot be used at start (refused credentials, TLS,
    unreachable: within nats.connect_timeout) or its streams cannot be set up.
    """
    try:
        cfg = load_config(config_path)
        check_environment(cfg, config_path)
    except ConfigError as exc:
        fail(str(exc))
    _protect_secrets(cfg)
    from router.jetstream.connection import NatsStartupError
    from router.jetstream.streams import SetupError
    from router.control.service import run_service

    try:
        asyncio.run(run_service(cfg, drain_timeout=drain_timeout, config_path=config_path, watch=watch))
    except NatsStartupError as exc:
        fail(f"{config_path}: {exc}", 3)
    except SetupError as exc:
        fail(f"{config_path}: {exc}", 3)
    except OSError as exc:
        if cfg.ray.address:  # a Ray Client connection fails with an OSError too
            fail(f"cannot reach NATS at {cfg.nats.url} or the Ray cluster at {cfg.ray.address}: {exc}", 3)
        fail(f"cannot reach NATS at {cfg.nats.url}: {exc}. Is nats-server running? "
              "(`router demo` starts an embedded one)", 3)


@main.command()
@click.option("--url", default="http://127.0.0.1:9464", show_default=True,
              help="The router's metrics server (`metrics.host`:`metrics.port`).")
@click.option("--once", is_flag=True, help="Print one view and exit.")
@click.option("--json", "as_json", is_flag=True, help="JSON instead of a table (with --once: one snapshot).")
@click.option("--interval", type=DURATION, default="2s", show_default=True, help="Between refreshes (and the rate window).")
def status(url: str, once: bool, as_json: bool, interval: float) -> None:
    """A live view of a running router: rates, lag, breakers, parked and dead-lettered per destination."""
    from router.control.status import run_status

    sys.exit(run_status(url, once=once, as_json=as_json, interval=interval))


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
@click.option("--strict", is_flag=True, help="Warnings are errors (exit 1).")
def check(config_path: str, strict: bool) -> None:
    """Check a config and its routes without starting anything: every problem at once.

    Exits 0 when clean, 1 on an error (or a warning with --strict), 2 when the config cannot be
    read at all (missing, not YAML, not a mapping). `router routes check` checks a routes file.
    """
    report = run_check(None, config_path)
    code = print_report(report, strict)
    if code == 0 and report.config is not None:
        cfg = report.config
        click.echo(f"{config_path}: ok ({len(cfg.sources)} sources, {len(cfg.destinations)} destinations, "
                   f"{len(cfg.route_list)} routes)")
    sys.exit(code)


main.add_command(routes)
import router.control.revisions_cli  # noqa: E402,F401  (diff, apply, history, rollback join the group)


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


def _dlq_config(config_path: str) -> Any:
    try:
        cfg = load_config(config_path)
    except ConfigError as exc:
        fail(str(exc))
    for key in ("user_env", "password_env", "token_env"):  # only NATS: dlq sends nothing to destinations
        var = getattr(cfg.nats, key)
        if var and var not in os.environ:
            fail(f"{config_path}: nats.{key}: environment variable `{var}` is not set")
    _protect_secrets(cfg)
    return cfg


def _dlq_run(cfg: Any, doing: str, action: Any) -> Any:
    """Run ``action(cfg, js)`` on a fresh connection; on failure say what failed, and exit."""
    return run_on_nats(cfg, "router-dlq", doing, lambda js: action(cfg, js))


def _filter(destination: str | None, stage: str | None, since: str | None, until: str | None) -> Any:
    from router.control.dlq import DeadLetterFilter, parse_when

    try:
        return DeadLetterFilter(destination, stage, parse_when(since), parse_when(until))
    except ValueError as exc:
        fail(str(exc))


def _shown(text: Any) -> str:
    """A dead letter's text as printed: secrets redacted, control characters escaped."""
    from router.jetstream.dead_letters import printable

    return printable(redact(text))


@dlq.command("list")
@_dlq_options
@click.option("--limit", default=100, show_default=True)
def dlq_list(config_path: str, destination: str | None, stage: str | None, since: str | None,
             until: str | None, limit: int) -> None:
    """One line per dead letter: sequence, time, where, key, reason. Changes nothing."""
    from datetime import datetime, timezone

    from router.control.dlq import dead_letter_stream_exists, iter_dead_letters
    from router.jetstream.dead_letters import H

    flt = _filter(destination, stage, since, until)
    cfg = _dlq_config(config_path)

    async def read(cfg: Any, js: Any) -> Any:
        if not await dead_letter_stream_exists(js, cfg):
            return None
        return await iter_dead_letters(js, cfg, flt, limit)

    letters = _dlq_run(cfg, "reading the dead letters", read)
    if letters is None:
        click.echo(f"no dead-letter stream `{cfg.dead_letter.stream}` on this NATS (the router creates it "
                   "when it starts): 0 dead letter(s)")
        return
    click.echo(f"{'seq':>8}  {'time (UTC)':<19}  {'stage':<11} {'where':<12} {'key':<28} reason")
    for dl in letters:
        when = datetime.fromtimestamp(dl.time, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        click.echo(f"{dl.seq:>8}  {when}  {dl.stage:<11} {_shown(dl.where):<12} "
                   f"{_shown(dl.headers.get(H.KEY, '-')):<28} {_shown(dl.headers.get(H.REASON, ''))}")
    click.echo(f"{len(letters)} dead letter(s)" + (f" (first {limit}; --limit for more)" if len(letters) == limit else ""))


@dlq.command("show")
@click.option("-c", "--config", "config_path", required=True, type=click.Path(dir_okay=False))
@click.argument("seq", type=int)
def dlq_show(config_path: str, seq: int) -> None:
    """Headers and payload of one dead letter. Changes nothing."""
    from router.control.dlq import dead_letter_stream_exists, get_dead_letters

    cfg = _dlq_config(config_path)

    async def show(cfg: Any, js: Any) -> Any:
        if not await dead_letter_stream_exists(js, cfg):
            fail(f"no dead-letter stream `{cfg.dead_letter.stream}` on this NATS: nothing was dead-lettered", 1)
        found, problems = await get_dead_letters(js, cfg, [seq])
        if problems:
            fail(problems[0], 1)
        return found[0]

    dl = _dlq_run(cfg, f"reading dead letter {seq}", show)
    click.echo(f"subject: {_shown(dl.subject)}")
    for k, v in dl.headers.items():
        click.echo(f"{_shown(k)}: {_shown(v)}")
    click.echo("")
    text = dl.payload.decode(errors="replace")
    click.echo("\n".join(_shown(line) for line in text.split("\n")))


@dlq.command("replay")
@_dlq_options
@click.option("--seq", "seqs", type=int, multiple=True, help="Only this dead letter (repeatable).")
@click.option("--dry-run", is_flag=True, help="Say what would be replayed and where; change nothing.")
@click.option("-y", "--yes", is_flag=True, help="Do not ask before replaying every dead letter.")
def dlq_replay(config_path: str, destination: str | None, stage: str | None, since: str | None,
               until: str | None, seqs: tuple[int, ...], dry_run: bool, yes: bool) -> None:
    """Replay the selected dead letters (deduplicated per destination), then remove them.

    Select by --seq, or by destination, stage and time; with no selection at all it asks
    first (--yes to skip the question).
    """
    from router.control.dlq import dead_letter_stream_exists, get_dead_letters, iter_dead_letters, replay, replay_plan

    if seqs and (destination or stage or since or until):
        fail("--seq selects dead letters by sequence; leave out --destination, --stage, --since and --until")
    flt = _filter(destination, stage, since, until)
    everything = not (seqs or destination or stage or since or until)
    cfg = _dlq_config(config_path)

    async def select(cfg: Any, js: Any) -> Any:
        if not await dead_letter_stream_exists(js, cfg):
            return [], []
        if seqs:
            return await get_dead_letters(js, cfg, list(seqs))
        return await iter_dead_letters(js, cfg, flt), []

    letters, missing = _dlq_run(cfg, "reading the dead letters", select)
    for p in missing:
        click.echo(f"  not replayed: {p}", err=True)
    if dry_run:
        for line in replay_plan(cfg, letters):
            click.echo(f"  would replay {_shown(line)}")
        click.echo(f"dry run: {len(letters)} dead letter(s) would be replayed; nothing was changed")
        sys.exit(1 if missing else 0)
    if not letters:
        click.echo("replayed 0 dead letter(s): none selected")
        sys.exit(1 if missing else 0)
    if everything and not yes:
        click.confirm(f"Replay all {len(letters)} dead letter(s) of every destination and source?", abort=True,
                      err=True)
    click.echo(f"replaying {len(letters)} dead letter(s)", err=True)

    def progress(done: int, total: int) -> None:
        click.echo(f"  replayed {done}/{total}", err=True)

    async def go(cfg: Any, js: Any) -> Any:
        from router.jetstream.streams import ensure_router_streams

        await ensure_router_streams(js, cfg)  # the parks a destination replay goes to
        return await replay(js, cfg, letters, progress)

    done, problems = _dlq_run(cfg, "replaying the dead letters", go)
    problems = missing + problems
    for p in problems:
        click.echo(f"  not replayed: {_shown(p)}", err=True)
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
    """Rehearse a peak with locust and faults; write a go / no-go report.

    Exits 0 for a go, 1 when an SLO fails (the report says which), 2 on bad input, 3 when the
    rehearsal could not run (NATS unreachable, locust failing).
    """
    logging.getLogger().setLevel(logging.WARNING)
    import msgspec

    from router.loadtest.rehearsal import run_rehearsal
    from router.loadtest.scenario import ScenarioError, load_scenario

    cfg = None
    if nats_url:
        if not config_path or not emulator_url:
            fail("--nats-url needs --config (the deployment's router config) and --emulator-url")
        try:
            cfg = load_config(config_path)
        except ConfigError as exc:
            fail(str(exc))
    try:
        sc = load_scenario(scenario_name, list(cfg.destinations) if cfg else None)
    except ScenarioError as exc:
        fail(str(exc))
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


@main.command()
@click.option("-c", "--config", "config_path", required=True, type=click.Path(dir_okay=False),
              help="The router config (sources, routes, destinations) of the deployment to check.")
@click.option("--since", default="24h", show_default=True, help="Window start: a time (ISO 8601) or an age (`24h`).")
@click.option("--until", help="Window end: a time (ISO 8601) or an age (`30m`); default now.")
@click.option("-d", "--destination", "destinations", multiple=True, help="Only this destination (repeatable).")
@click.option("--type", "types", multiple=True, help="Only these event types, wildcards allowed (`order.*`; repeatable).")
@click.option("--destination-keys", type=click.Path(exists=True, dir_okay=False),
              help="The keys the destination holds, one a line (e.g. an ERP export): list what it lacks. Needs one -d.")
@click.option("--limit", default=1000, show_default=True, help="Entries listed per listing.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def reconcile(config_path: str, since: str, until: str | None, destinations: tuple[str, ...], types: tuple[str, ...],
              destination_keys: str | None, limit: int, as_json: bool) -> None:
    """For every event in the window, per destination it routes to: delivered, parked, dead-lettered
    or unaccounted. Reads only; moves no consumer.

    Exits 0 when everything is accounted for, 1 when something is unaccounted for or missing at the
    destination, 2 on a usage or config error, 3 when NATS cannot be read.
    """
    import msgspec
    import nats.errors

    from router.control.dlq import parse_when
    from router.control.reconcile import ReconcileRequest, format_report, read_key_file
    from router.control.reconcile import reconcile as run_reconcile
    from router.jetstream.connection import NatsStartupError, connect

    cfg = _dlq_config(config_path)
    unknown = [d for d in destinations if d not in cfg.destinations]
    if unknown:
        fail(f"unknown destination `{unknown[0]}`; expected one of: {', '.join(sorted(cfg.destinations))}")
    try:
        window = (parse_when(since), parse_when(until))
    except ValueError as exc:
        fail(str(exc))
    keys = None
    if destination_keys:
        if len(destinations or cfg.destinations) != 1:
            fail("--destination-keys holds one destination's keys: name it with -d")
        try:
            keys = read_key_file(destination_keys)
        except (OSError, UnicodeDecodeError) as exc:
            fail(f"cannot read {destination_keys}: {exc}")
    req = ReconcileRequest(since=window[0], until=window[1], destinations=list(destinations), types=list(types),
                           destination_keys=keys, limit=limit)

    tty = sys.stderr.isatty()
    last = [0]

    def progress(done: int, total: int) -> None:
        if tty:
            click.echo(f"\r  read {done:,}/{total:,} source events", nl=False, err=True)
        elif done - last[0] >= 50_000 or done == total:
            last[0] = done
            click.echo(f"  read {done:,}/{total:,} source events", err=True)

    async def go() -> Any:
        nc = await connect(cfg.nats, "router-reconcile", fail_fast=True)
        try:
            return await run_reconcile(nc.jetstream(), cfg, req, progress)
        finally:
            await nc.close()

    try:
        report = asyncio.run(go())
    except NatsStartupError as exc:
        fail(str(exc), 3)
    except (nats.errors.Error, OSError, asyncio.TimeoutError) as exc:
        fail(f"reading the streams failed: {exc.__class__.__name__}: {exc}", 3)
    if tty:
        click.echo("", err=True)
    if as_json:
        doc = msgspec.to_builtins(report)
        doc["exit_code"] = report.exit_code
        click.echo(json.dumps(doc, indent=2))
    else:
        click.echo("\n".join(_shown(line) for line in format_report(report).split("\n")))
    sys.exit(report.exit_code)


if __name__ == "__main__":
    main()
