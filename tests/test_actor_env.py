"""Secrets reach the actors wherever Ray places them (router/control/actor_env.py).

On a cluster an actor's process never saw the environment ``router run`` was started with; the
supervisor hands the secrets the config names to every actor in its ``runtime_env``.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest
from nats.aio.client import RawCredentials

from router.config import parse_config
from router.control.actor_env import ACTOR_CPUS_ENV, CREDENTIALS_CONTENT_ENV, actor_env, actor_options, secret_env_names
from router.control.demo import demo_config_dict, expected_deliveries
from router.jetstream.connection import _connect_options
from router.loadtest.retail_events import RetailEventFactory
from tests.harness import config_dict, received, route_through


def _cfg(nats_url: str = "nats://127.0.0.1:4222", emulator_url: str = "http://127.0.0.1:8081", **nats):
    raw = demo_config_dict(nats_url, emulator_url)
    raw["nats"] = {**raw.get("nats", {}), **nats}
    raw["destinations"]["erp"]["auth"] = {"token_env": "ERP_TOKEN"}
    raw["destinations"]["carrier"]["auth"] = {"token_env": "CARRIER_TOKEN"}
    return raw


def test_names_every_secret_variable_once():
    raw = _cfg(token_env="NATS_TOKEN", user_env="NATS_USER", password_env="NATS_PASSWORD")
    raw["destinations"]["marketplace"]["auth"] = {"token_env": "ERP_TOKEN"}  # two destinations, one token
    cfg = parse_config(raw, "<t>")
    assert secret_env_names(cfg) == ["NATS_TOKEN", "NATS_USER", "NATS_PASSWORD", "ERP_TOKEN", "CARRIER_TOKEN"]


def test_hands_over_the_values_this_process_holds_and_nothing_else():
    cfg = parse_config(_cfg(token_env="NATS_TOKEN"), "<t>")
    environ = {"NATS_TOKEN": "n", "ERP_TOKEN": "e", "CARRIER_TOKEN": "c", "HOME": "/root", "AWS_SECRET": "x"}
    assert actor_env(cfg, environ) == {"NATS_TOKEN": "n", "ERP_TOKEN": "e", "CARRIER_TOKEN": "c"}
    assert actor_env(cfg, {"ERP_TOKEN": "e"}) == {"ERP_TOKEN": "e"}


def test_no_secrets_no_runtime_env():
    raw = demo_config_dict("nats://127.0.0.1:4222", "http://127.0.0.1:8081")
    assert actor_options(parse_config(raw, "<t>"), {}) == {}


def test_actors_reserve_cpus_on_a_cluster_when_told():
    cfg = parse_config(_cfg(), "<t>")
    assert actor_options(cfg, {"ERP_TOKEN": "e", ACTOR_CPUS_ENV: "0.5"}) == {
        "runtime_env": {"env_vars": {"ERP_TOKEN": "e"}}, "num_cpus": 0.5}
    with pytest.raises(ValueError, match="ROUTER_ACTOR_CPUS='one'"):
        actor_options(cfg, {ACTOR_CPUS_ENV: "one"})


def test_credentials_file_travels_as_content_and_is_used_where_the_file_is_absent(tmp_path, monkeypatch):
    creds = tmp_path / "router.creds"
    creds.write_text("-----BEGIN NATS USER JWT-----\neyJhbGciOi.fake.jwt\n------END NATS USER JWT------\n")
    cfg = parse_config(_cfg(credentials=str(creds)), "<t>")
    env = actor_env(cfg, {})
    assert env == {CREDENTIALS_CONTENT_ENV: creds.read_text()}

    # On the supervisor's node the file is there: the connection uses the path.
    monkeypatch.setenv(CREDENTIALS_CONTENT_ENV, env[CREDENTIALS_CONTENT_ENV])
    assert _connect_options(cfg.nats, "t")["user_credentials"] == str(creds)
    # On a node without the file: the content the actor was handed.
    creds.unlink()
    used = _connect_options(cfg.nats, "t")["user_credentials"]
    assert isinstance(used, RawCredentials) and str(used) == env[CREDENTIALS_CONTENT_ENV]
    # A missing file and nothing handed over: the path, so the error names it.
    monkeypatch.delenv(CREDENTIALS_CONTENT_ENV)
    assert actor_env(cfg, {}) == {}
    assert _connect_options(cfg.nats, "t")["user_credentials"] == str(creds)


def test_actors_get_a_token_their_process_never_inherited(clean, nats_server, emulator, ray_session, monkeypatch):
    """The local Ray started before this variable existed, so its worker processes do not have
    it, just like a worker on another node: only the supervisor's runtime_env brings it."""
    var = f"ROUTER_TEST_TOKEN_{uuid.uuid4().hex[:8].upper()}"
    monkeypatch.setenv(var, "secret-value")
    raw = config_dict(nats_server.url, emulator.url)
    raw["destinations"]["erp"]["auth"] = {"token_env": var}
    cfg = parse_config(raw, "<t>")
    events = list(RetailEventFactory(seed=15).burst(60))
    erp_keys = expected_deliveries(cfg, events)["erp"]
    assert erp_keys

    asyncio.run(route_through(cfg, nats_server.url, events))
    assert set(asyncio.run(received(emulator.url, "erp"))) == set(erp_keys)
