"""`router run` against a Ray cluster it did not start, as the chart deploys it.

On Kubernetes the driver is its own pod and reaches the RayCluster's head over Ray Client
(`ray.address: ray://<head-svc>:10001`). Here a Ray head is started with `ray start`, in an
environment without the destination's token, and `router run` (which has the token) connects
to it over Ray Client: the actors run in the cluster's processes, get the token only from the
supervisor's runtime_env, and every routed event is delivered. SIGTERM drains and exits 0.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.request
import uuid

import pytest
import yaml

from router.config import parse_config
from router.control.demo import demo_config_dict, expected_deliveries
from router.jetstream.embedded_server import free_port
from router.loadtest.retail_events import RetailEventFactory
from tests.conftest import wait_until
from tests.harness import publish, received

CLI = [sys.executable, "-m", "router.control.cli"]
TOKEN_VAR = "ROUTER_TEST_CLUSTER_ERP_TOKEN"
RAY_AUTH = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": uuid.uuid4().hex + uuid.uuid4().hex}


def _answers(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


@pytest.fixture
def ray_head():
    """A Ray head of its own (own temp dir, so no other Ray on this machine finds or joins it),
    in its own process group, stopped by that group only."""
    client_port, gcs_port = free_port(), free_port()
    temp_dir = tempfile.mkdtemp(prefix="rk", dir="/tmp")  # short: Ray puts sockets in it
    env = {k: v for k, v in os.environ.items() if k != TOKEN_VAR and not k.startswith("RAY_ADDRESS")}
    env.update(RAY_AUTH)  # as the chart runs it: Ray token authentication on every pod
    proc = subprocess.Popen(
        ["ray", "start", "--head", "--block", f"--port={gcs_port}", f"--ray-client-server-port={client_port}",
         "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp_dir}",
         f"--dashboard-agent-listen-port={free_port()}", f"--metrics-export-port={free_port()}"],
        # Not in the checkout: Ray starts helper processes with `python -m`, which would import
        # the checkout's folders (codecs/ is one) ahead of the standard library.
        cwd=temp_dir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_until(lambda: _answers(client_port) or proc.poll() is not None, 90, "the Ray head's client port")
        assert proc.poll() is None, "ray start --head exited"
        yield f"ray://127.0.0.1:{client_port}"
    finally:
        for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=3) as r:
            return r.status
    except OSError:
        return 0


def test_router_run_drives_actors_on_a_ray_cluster_over_ray_client(clean, nats_server, emulator, ray_head, tmp_path):
    port = free_port()
    raw = demo_config_dict(nats_server.url, emulator.url)
    raw["destinations"]["erp"]["auth"] = {"token_env": TOKEN_VAR}
    raw["ray"] = {"address": ray_head, "namespace": "router-cluster-test"}
    raw["metrics"] = {"port": port}
    cfg_path = tmp_path / "router.yaml"
    cfg_path.write_text(yaml.safe_dump(raw))
    cfg = parse_config(raw, str(cfg_path))
    events = list(RetailEventFactory(seed=1015).burst(300))
    expected = expected_deliveries(cfg, events)

    log = tmp_path / "run.log"
    # Each actor reserves 0.1 of the head's 2 CPUs, as the chart makes them reserve a worker's.
    env = {**os.environ, **RAY_AUTH, TOKEN_VAR: "cluster-secret", "ROUTER_ACTOR_CPUS": "0.1"}
    # Outside the checkout, as in the image: Ray Client puts the driver's sys.path (its working
    # directory first) on the cluster's, where the checkout's codecs/ would shadow the stdlib.
    def start() -> subprocess.Popen:
        return subprocess.Popen([*CLI, "run", "-c", str(cfg_path), "--drain-timeout", "20"], env=env,
                                cwd=tmp_path, stdout=log.open("w"), stderr=subprocess.STDOUT)

    proc = start()
    try:
        wait_until(lambda: _get(f"http://127.0.0.1:{port}/readyz") == 200 or proc.poll() is not None,
                   150, "the router to be ready on the Ray cluster")
        if proc.poll() is not None and "Initialization failure from server" in log.read_text():
            # Ray Client's proxy can lose the race to start the per-client server (a zombie process it
            # then fails to inspect); the router exits 3 saying so. Starting again is what an operator does.
            proc = start()
            wait_until(lambda: _get(f"http://127.0.0.1:{port}/readyz") == 200 or proc.poll() is not None,
                       150, "the router to be ready on the Ray cluster (second start)")
        assert proc.poll() is None, log.read_text()[-3000:]
        asyncio.run(publish(nats_server.url, events))
        for dest, keys in expected.items():
            try:
                wait_until(lambda: set(asyncio.run(received(emulator.url, dest))) >= keys, 90,
                           f"{dest} to receive its {len(keys)} records")
            except AssertionError as exc:
                got = {d: len(asyncio.run(received(emulator.url, d))) for d in expected}
                raise AssertionError(f"{exc}; received {got}; router log:\n{log.read_text()[-3000:]}") from None
        for dest, keys in expected.items():
            got = asyncio.run(received(emulator.url, dest))
            assert set(got) == keys and max(got.values()) == 1, dest
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
