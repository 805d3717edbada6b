"""The secrets an actor needs, handed to it by the supervisor wherever Ray places it.

The config names secrets by environment variable (a destination's ``auth.token_env``, the NATS
``token_env`` / ``user_env`` / ``password_env``), and the sinks and the NATS connection read
them from the environment of the process they run in. On one machine that is the driver's
environment, inherited by the local Ray. On a cluster an actor lands in a worker process on
another node, whose environment the driver never saw; so the supervisor reads the variables
here, where ``router run`` was started (and ``check_environment`` proved them set), and starts
every actor with them in its Ray ``runtime_env``.

A NATS ``.creds`` file is a file, not a variable: its path (``nats.credentials``) may not exist
on the node an actor lands on. Its content travels in ``CREDENTIALS_CONTENT_ENV``, and the NATS
connection uses that content when the file is not there (``router/jetstream/connection.py``).

Anyone who can read the Ray cluster's actor table (its dashboard, ``ray list actors
--detail``) can read a ``runtime_env``: the Ray cluster is inside the same trust boundary as
the router's own pods. Deploy it that way (the chart does not expose the dashboard).
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["ACTOR_CPUS_ENV", "CREDENTIALS_CONTENT_ENV", "actor_env", "actor_options", "placement_options",
           "secret_env_names"]

CREDENTIALS_CONTENT_ENV = "ROUTER_NATS_CREDENTIALS"
ACTOR_CPUS_ENV = "ROUTER_ACTOR_CPUS"


def secret_env_names(cfg: Any) -> list[str]:
    """The environment variables the config names as holding secrets, in config order."""
    names: list[str] = []
    for key in ("token_env", "user_env", "password_env"):
        var = getattr(cfg.nats, key, None)
        if var:
            names.append(var)
    for dest in cfg.destinations.values():
        auth = getattr(dest, "auth", None)  # not every destination kind has auth
        if auth is not None:
            names.append(auth.token_env)
    return list(dict.fromkeys(names))


def actor_env(cfg: Any, environ: dict[str, str] | None = None) -> dict[str, str]:
    """``{variable: value}`` for every secret the config names and this process holds, plus the
    content of the NATS credentials file when one is configured and readable here."""
    environ = os.environ if environ is None else environ
    env = {name: environ[name] for name in secret_env_names(cfg) if name in environ}
    path = getattr(cfg.nats, "credentials", None)
    if path:
        try:
            with open(path, encoding="utf-8") as fh:
                env[CREDENTIALS_CONTENT_ENV] = fh.read()
        except OSError:
            pass  # the connection reports a missing or unreadable file with its path
    return env


def actor_options(cfg: Any, environ: dict[str, str] | None = None, kind: str | None = None) -> dict[str, Any]:
    """Keyword arguments for an actor's ``.options(...)``: its ``runtime_env`` when there is
    something to hand over, nothing otherwise (a config without secrets starts actors as before).

    The actors declare ``num_cpus=0``: on one machine they share it with nats-server. On a
    cluster that lets Ray put every actor on one node and gives its autoscaler no demand to act
    on; ``ACTOR_CPUS_ENV`` (the chart sets it) makes each actor reserve that many CPUs, so the
    actors spread over the workers and more actors add workers. With ``kind`` (``ingest`` or
    ``sink``) the config's ``ray.placement.<kind>`` is added, and its ``num_cpus`` wins.
    """
    environ = os.environ if environ is None else environ
    options: dict[str, Any] = {}
    env = actor_env(cfg, environ)
    if env:
        options["runtime_env"] = {"env_vars": env}
    cpus = environ.get(ACTOR_CPUS_ENV)
    if cpus:
        try:
            options["num_cpus"] = float(cpus)
        except ValueError:
            raise ValueError(f"{ACTOR_CPUS_ENV}={cpus!r}: expected a number of CPUs, e.g. 1 or 0.5") from None
    if kind is not None:
        options.update(placement_options(getattr(cfg.ray.placement, kind)))
    return options


def placement_options(placement: Any) -> dict[str, Any]:
    """``ray.placement.<kind>`` as actor options; a ``num_cpus`` set there wins over ``ACTOR_CPUS_ENV``.

    SPREAD puts each new actor of a kind on the least loaded node that fits it, so the ingest
    actors, and the shards of one pool, do not all share one node's fate. Custom ``resources``
    pin actors to the nodes that advertise them (``ray start --resources``)."""
    options: dict[str, Any] = {}
    if placement.num_cpus is not None:
        options["num_cpus"] = placement.num_cpus
    if placement.memory is not None:
        options["memory"] = int(placement.memory)
    if placement.resources:
        options["resources"] = dict(placement.resources)
    if placement.spread:
        options["scheduling_strategy"] = "SPREAD"
    return options
