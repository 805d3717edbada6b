"""The ``router`` command line.

click rather than argparse: nested commands with typed options and consistent ``--help`` for a
tool that grows (run, demo, check, schema; dlq and bench later) at no cost in code.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys

import click

from .config import ConfigError, check_environment, config_schema, load_config, routes_schema

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
    from .jetstream_setup import SetupError
    from .service import run_service

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
    from .demo import run_demo

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


@main.command()
def encoders() -> None:
    """List the encoders a route can name."""
    from router.codecs import ENCODERS

    for e in sorted(ENCODERS.values(), key=lambda e: e.name):
        fams = ", ".join(sorted(e.families)) if e.families else "any"
        click.echo(f"{e.name:<24} {fams:<20} {e.description}")


if __name__ == "__main__":
    main()
