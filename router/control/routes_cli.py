"""``router routes ...``: check and test a route table before it is applied.

Exit codes, for every command of the group: 0 clean; 1 problems found (errors, warnings with
``--strict``, failing cases); 2 a file that cannot be read at all (missing, not YAML, not a
mapping). Commands that need a valid route table (``test`` now; ``diff`` / ``apply`` later)
load it with ``load_checked_routes``, which refuses a table with errors the way ``check`` shows them.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from router.config import ConfigError, Route
from router.control.route_check import CheckReport, check_config, check_routes
from router.control.cli_support import fail
from router.redaction import redact

__all__ = ["config_option", "load_checked_routes", "print_report", "routes"]

EXIT_CLEAN, EXIT_PROBLEMS, EXIT_UNREADABLE = 0, 1, 2


def config_option(f: Any) -> Any:
    return click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False),
                        help="The router config: checks the routes against its destinations and sources.")(f)


def run_check(routes_file: str | None, config_path: str | None) -> CheckReport:
    """The check report, or exit 2 when a file cannot be read at all."""
    try:
        if routes_file is None:
            assert config_path is not None
            return check_config(config_path)
        return check_routes(routes_file, config_path)
    except ConfigError as exc:
        fail(str(exc))


def print_report(report: CheckReport, strict: bool = False) -> int:
    """One line per problem, then the notes and a summary; returns the exit code (with ``strict``,
    warnings keep their label and the summary says they failed the check)."""
    for p in report.problems:
        click.echo(redact(str(p)))
    for note in report.notes:
        click.echo(f"note: {note}")
    code = report.exit_code(strict)
    click.echo(("FAILED: " if code else "ok: ") + report.summary() + (" (--strict)" if strict else ""))
    return code


def load_checked_routes(routes_file: str, config_path: str | None) -> list[Route]:
    """The routes of ``routes_file`` (checked against the config when given); exits 2 after
    printing the errors when there are any (warnings do not stop it)."""
    report = run_check(routes_file, config_path)
    if report.errors:
        for p in report.errors:
            click.echo(redact(str(p)), err=True)
        fail(f"{routes_file}: {len(report.errors)} error(s); see `router routes check`")
    return report.routes


@click.group()
def routes() -> None:
    """Check and test a route table before applying it."""


@routes.command("check")
@click.argument("routes_file", type=click.Path(dir_okay=False))
@config_option
@click.option("--strict", is_flag=True, help="Warnings are errors (exit 1).")
def routes_check(routes_file: str, config_path: str | None, strict: bool) -> None:
    """Report every problem of ROUTES_FILE at once: errors, and warnings for what is almost surely a mistake.

    Without -c only the routes file itself is checked; with it also the destinations it names,
    the subjects the sources capture, and the config's environment variables and files.
    Exits 0 when clean, 1 on an error (or a warning with --strict), 2 when a file cannot be read.
    """
    sys.exit(print_report(run_check(routes_file, config_path), strict))


@routes.command("test")
@click.argument("routes_file", type=click.Path(dir_okay=False))
@click.option("--cases", "cases_file", required=True, type=click.Path(dir_okay=False),
              help="YAML list of {name, event: {subject, headers, body}, expect: {...}}.")
@config_option
def routes_test(routes_file: str, cases_file: str, config_path: str | None) -> None:
    """Run sample events through ROUTES_FILE (decoder, routes, encoders; no NATS, no Ray).

    A failing case is shown as a diff of what was expected against what came out.
    Exits 0 when every case passes, 1 when one fails, 2 when a file cannot be used.
    """
    from router.control.route_cases import load_cases, run_cases

    table = load_checked_routes(routes_file, config_path)
    try:
        cases = load_cases(cases_file)
    except ConfigError as exc:
        fail(str(exc))
    results = run_cases(table, cases)
    for r in results:
        click.echo(f"{'PASS' if r.passed else 'FAIL'}  {r.name}")
        if r.diff:
            click.echo("\n".join(f"      {line}" for line in r.diff.splitlines()))
    failed = sum(not r.passed for r in results)
    click.echo(f"{len(results) - failed} passed, {failed} failed")
    sys.exit(EXIT_PROBLEMS if failed else EXIT_CLEAN)
