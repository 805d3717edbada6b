"""``router routes diff / apply / history / rollback``: live route changes through the KV bucket.

A revision is the route table together with the destinations' settings (``reload.py``): `apply`
stores FILE's routes with the config's destinations, after the same checks as `router routes
check` (a table with errors never reaches the bucket). Every running router watches the bucket
and switches within about a second; `history` lists what is stored, `rollback` stores an
earlier revision again as the newest.
"""

from __future__ import annotations

from datetime import timezone
from typing import Any, Awaitable, Callable

import click

from router.config import Config, ConfigError, load_config
from router.control.reload import LiveConfig, compare, decode_live, encode_live, with_live
from router.control.route_diff import dry_run, route_changes
from router.control.cli_support import fail, run_on_nats
from router.control.routes_cli import EXIT_PROBLEMS, load_checked_routes, routes
from router.jetstream.revisions import RevisionStore

__all__ = ["routes"]


def _config(config_path: str) -> Config:
    try:
        return load_config(config_path)
    except ConfigError as exc:
        fail(str(exc))


def _with_store(cfg: Config, action: Callable[[Any, RevisionStore], Awaitable[Any]]) -> Any:
    async def go(js: Any) -> Any:
        return await action(js, await RevisionStore(js, cfg.live.bucket, cfg.live.key).open())

    return run_on_nats(cfg, "router-routes", "reading or storing revisions", go)


async def _running(cfg: Config, store: RevisionStore) -> tuple[Config, str]:
    """The live config the routers run now: the newest revision they could take (one that does not
    load is refused by them and skipped here), or the config file's if there is none."""
    for rev in reversed(await store.history()):
        where = f"revision {rev.number}"
        try:
            return with_live(cfg, decode_live(rev.value, where), where), where
        except ConfigError:
            continue
    return cfg, "the config file (no valid revision stored yet)"


def _proposed(cfg: Config, routes_file: str, config_path: str) -> tuple[Config, LiveConfig]:
    table = load_checked_routes(routes_file, config_path)
    live = LiveConfig(routes=table, destinations=dict(cfg.destinations))
    try:
        return with_live(cfg, live, routes_file), live
    except ConfigError as exc:
        fail(str(exc), EXIT_PROBLEMS)


@routes.command("diff")
@click.argument("routes_file", type=click.Path(dir_okay=False))
@click.option("-c", "--config", "config_path", required=True, type=click.Path(dir_okay=False),
              help="The router config: NATS, sources, destinations.")
@click.option("--sample", default=1000, show_default=True, help="Latest messages per source stream to dry-run.")
def routes_diff(routes_file: str, config_path: str, sample: int) -> None:
    """What applying ROUTES_FILE would change, and a dry run over the latest events (nothing consumed)."""
    from router.jetstream.partitions import unpartitioned
    from router.jetstream.stream_reader import read_tail

    cfg = _config(config_path)
    new, _ = _proposed(cfg, routes_file, config_path)

    async def go(js: Any, store: RevisionStore) -> Any:
        msgs = []
        for src in cfg.sources:
            tail = await read_tail(js, src.stream, sample)
            for m in tail:  # routed by the publisher's subject
                m.subject = unpartitioned(src, m.subject)
            msgs += tail
        return await _running(cfg, store), msgs

    (current, label), msgs = _with_store(cfg, go)
    rc = route_changes(current.route_list, new.route_list)
    click.echo(f"compared with {label}:")
    for what, names in (("added", rc.added), ("removed", rc.removed), ("changed", rc.changed)):
        for n in names:
            click.echo(f"  route {what}: {n}")
    click.echo(f"  destinations: {compare(current, new).describe()}")
    run = dry_run(msgs, current.route_list, new.route_list)
    click.echo(f"dry run over the latest {run.sampled} events ({run.invalid} invalid either way):")
    click.echo(f"  {'destination':<14} {'now':>8} {'after':>8}")
    for d in sorted(set(run.now) | set(run.after)):
        click.echo(f"  {d:<14} {run.now.get(d, 0):>8} {run.after.get(d, 0):>8}")
    click.echo(f"  {run.changed} event(s) change destination" + (":" if run.examples else ""))
    for e in run.examples:
        click.echo(f"    {e.type} {e.key} on {e.subject}: {','.join(e.now) or '-'} -> {','.join(e.after) or '-'}")


@routes.command("apply")
@click.argument("routes_file", type=click.Path(dir_okay=False))
@click.option("-c", "--config", "config_path", required=True, type=click.Path(dir_okay=False),
              help="The router config: NATS, the bucket (`live`), and the destinations stored with the routes.")
@click.option("--force", is_flag=True,
              help="Store it even if it equals the newest revision (one the routers refused, to try it again).")
def routes_apply(routes_file: str, config_path: str, force: bool) -> None:
    """Store ROUTES_FILE's routes, with the config's destinations, as the newest revision."""
    cfg = _config(config_path)
    new, live = _proposed(cfg, routes_file, config_path)

    async def go(js: Any, store: RevisionStore) -> Any:
        current, label = await _running(cfg, store)
        change = compare(current, new)
        if change.empty and not force:
            return None, label, change
        return await store.put(encode_live(live)), label, change

    number, label, change = _with_store(cfg, go)
    if number is None:
        click.echo(f"no change: {routes_file} with {config_path}'s destinations is what {label} holds")
        return
    click.echo(f"stored revision {number} in {cfg.live.bucket}/{cfg.live.key} (was {label}): {change.describe()}")
    click.echo("running routers apply it within a second; `router routes history` lists revisions, "
               "`router routes rollback REV` goes back")


@routes.command("history")
@click.option("-c", "--config", "config_path", required=True, type=click.Path(dir_okay=False))
def routes_history(config_path: str) -> None:
    """The stored revisions, newest last."""
    cfg = _config(config_path)
    revisions = _with_store(cfg, lambda js, store: store.history())
    if not revisions:
        click.echo(f"no revisions in {cfg.live.bucket}/{cfg.live.key} yet (a router stores its config's at start)")
        return
    click.echo(f"{'revision':>8}  {'stored (UTC)':<19}  {'routes':>6}  destinations")
    for n, r in enumerate(revisions):
        try:
            live = decode_live(r.value, f"revision {r.number}")
            summary = f"{len(live.routes):>6}  {', '.join(sorted(live.destinations))}"
        except ConfigError as exc:
            summary = f"{'?':>6}  not a valid live config: {exc}"
        when = r.created.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S") if r.created else "-"
        mark = "  <- running" if n == len(revisions) - 1 else ""
        click.echo(f"{r.number:>8}  {when:<19}  {summary}{mark}")


@routes.command("rollback")
@click.argument("revision", type=int)
@click.option("-c", "--config", "config_path", required=True, type=click.Path(dir_okay=False))
def routes_rollback(revision: int, config_path: str) -> None:
    """Store revision REVISION again as the newest (checked against the config's static parts first)."""
    cfg = _config(config_path)

    async def go(js: Any, store: RevisionStore) -> Any:
        old = await store.get(revision)
        if old is None:
            return None, None
        where = f"revision {revision}"
        try:
            with_live(cfg, decode_live(old.value, where), where)
        except ConfigError as exc:
            return None, str(exc)
        return await store.put(old.value), None

    number, problem = _with_store(cfg, go)
    if problem:
        fail(f"revision {revision} cannot run with {config_path}: {problem}", EXIT_PROBLEMS)
    if number is None:
        fail(f"no revision {revision} in {cfg.live.bucket}/{cfg.live.key} (`router routes history` lists them)",
             EXIT_PROBLEMS)
    click.echo(f"stored revision {revision} again as revision {number}; running routers apply it within a second")
