"""The router on a two-node Ray cluster, losing a node and then its driver mid-stream.

A Ray head and a second node join into one cluster on this machine (each `ray start --block` in
its own process group, own ports, token authentication, fast node health checks), apart from
the test session's local Ray. `router run` connects to it (`ray.address`), and SPREAD puts its
actors on both nodes. Mid-stream the second node is killed (its raylet and every worker on it,
kill -9): Ray restarts the actors it held on the head, the sink actors reload their dedup
shards from the journal, and the messages the lost ingest actors had not acked are redelivered.
Then `router run` itself is killed -9: its actors die with it (they belong to its Ray job) and a
new `router run` starts new ones. Every routed key arrives; a key arrives twice only within
the in-flight window of each incident (delivered, not yet journaled).

Deselect with `-m "not cluster"` (the heaviest test: about a minute).
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid

import psutil
import pytest
import yaml

from router.config import parse_config
from router.control.demo import expected_deliveries
from router.jetstream.embedded_server import free_port
from router.loadtest.retail_events import RetailEventFactory
from tests.conftest import wait_until
from tests.harness import assert_exactly, config_dict, in_flight_bound, publish_paced, wait_complete

pytestmark = pytest.mark.cluster

CLI = [sys.executable, "-m", "router.control.cli"]
ACTOR_TITLES = ("ray::IngestActor", "ray::DestinationWorker", "ray::DestinationLimits")


class RayNode:
    """One `ray start --block`: its process group is the node (raylet, workers, agents)."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: str) -> None:
        self.proc = subprocess.Popen(["ray", "start", "--block", "--disable-usage-stats", *args], env=env, cwd=cwd,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

    def processes(self) -> list[psutil.Process]:
        try:
            root = psutil.Process(self.proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def actors(self) -> list[str]:
        """The actor processes this node runs (Ray titles them by class)."""
        out = []
        for p in self.processes():
            try:
                title = " ".join(p.cmdline())
            except psutil.Error:
                continue
            out += [t for t in ACTOR_TITLES if title.startswith(t)]
        return out

    def kill(self) -> None:
        """kill -9 the whole node at once, as a machine that drops off the network."""
        procs = self.processes()
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for p in procs:  # anything that left the group
            try:
                p.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(procs, timeout=20)


def _ports(base: int) -> list[str]:
    """Ports of a node's own, away from the defaults another Ray on this machine uses."""
    return [f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}",
            f"--metrics-export-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
            f"--min-worker-port={base}", f"--max-worker-port={base + 199}"]


@pytest.fixture
def two_node_cluster():
    temp_dir = tempfile.mkdtemp(prefix="rc", dir="/tmp")  # short: Ray puts sockets in it
    gcs = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": uuid.uuid4().hex + uuid.uuid4().hex,
                # a lost node is declared dead after ~3 s instead of ~30 s
                "RAY_health_check_period_ms": "1000", "RAY_health_check_timeout_ms": "1000",
                "RAY_health_check_failure_threshold": "3", "RAY_health_check_initial_delay_ms": "1000"})
    base = random.randrange(20000, 28000, 400)
    # Not in the checkout: Ray starts helpers with `python -m`, and the checkout's codecs/ would
    # shadow the standard library's.
    head = RayNode(["--head", f"--port={gcs}", "--num-cpus=1", '--resources={"head": 1}', f"--temp-dir={temp_dir}",
                    "--include-dashboard=false", f"--dashboard-port={free_port()}",
                    f"--ray-client-server-port={free_port()}", *_ports(base)], env, temp_dir)
    nodes = [head]
    try:
        wait_until(lambda: _gcs_answers(gcs) or head.proc.poll() is not None, 60,
                   "the Ray head")
        assert head.proc.poll() is None, "ray start --head exited"
        node2 = RayNode([f"--address=127.0.0.1:{gcs}", "--num-cpus=1", '--resources={"node2": 1}',
                         *_ports(base + 200)], env, temp_dir)
        nodes.append(node2)
        yield head, node2, f"127.0.0.1:{gcs}", env
    finally:
        for node in reversed(nodes):
            node.kill()
        shutil.rmtree(temp_dir, ignore_errors=True)


def _gcs_answers(port: int) -> bool:
    import socket

    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def _alive_nodes(address: str, env: dict[str, str]) -> int:
    code = ("import ray; ray.init(address=%r, logging_level='ERROR', log_to_driver=False); "
            "print(sum(n['Alive'] for n in ray.nodes()))" % address)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60,
                         cwd=tempfile.gettempdir())
    return int(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 and out.stdout.strip() else 0


def _cluster_state(address: str, env: dict[str, str]) -> str:
    """Nodes alive and each actor's state and node, as the GCS sees them (for a failure message)."""
    code = ("import ray; ray.init(address=%r, logging_level='ERROR', log_to_driver=False, namespace='x'); "
            "from ray._private import state; "
            "print([(n['NodeManagerPort'], n['Alive']) for n in ray.nodes()]); "
            "print([(a['ActorClassName'], a['State'], a['Address'].get('Port'), a.get('NumRestarts')) "
            "for a in state.actors().values()])" % address)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60,
                         cwd=tempfile.gettempdir())
    return (out.stdout + out.stderr[-2000:]).strip()


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=3) as r:
            return r.status == 200
    except OSError:
        return False


def _start_router(cfg_path, env, log, port) -> subprocess.Popen:
    proc = subprocess.Popen([*CLI, "run", "-c", str(cfg_path), "--drain-timeout", "20"], env=env,
                            stdout=log.open("a"), stderr=subprocess.STDOUT)
    wait_until(lambda: _ready(port) or proc.poll() is not None, 120, "the router to be ready on the cluster")
    assert proc.poll() is None, log.read_text()[-3000:]
    return proc


def _publish_in_background(url: str, events: list, per_second: float) -> threading.Thread:
    t = threading.Thread(target=lambda: asyncio.run(publish_paced(url, events, per_second)), daemon=True)
    t.start()
    return t


def test_router_survives_losing_a_node_and_its_driver(clean, nats_server, emulator, two_node_cluster, tmp_path):
    head, node2, address, ray_env = two_node_cluster
    port = free_port()

    def change(raw):
        raw["ray"] = {"address": address, "namespace": "router-cluster-test"}
        raw["metrics"] = {"port": port}
        # What a lost ingest actor had not acked comes back after ack_wait. (A copy: the demo's list is shared.)
        raw["sources"] = [{**s, "ack_wait": "4s"} for s in raw["sources"]]

    raw = config_dict(nats_server.url, emulator.url, change)
    cfg_path = tmp_path / "router.yaml"
    cfg_path.write_text(yaml.safe_dump(raw))
    cfg = parse_config(raw, str(cfg_path))
    events = list(RetailEventFactory(seed=1503).burst(6000))
    first, second = events[:3000], events[3000:]
    expected = expected_deliveries(cfg, events)
    log = tmp_path / "run.log"
    env = {**os.environ, **ray_env}
    wait_until(lambda: _alive_nodes(address, env) == 2, 60, "the second node to join")

    router = _start_router(cfg_path, env, log, port)
    try:
        total = (sum(src.ingest_actors for src in cfg.sources) + sum(d.pool_size for d in cfg.destinations.values())
                 + sum(d.pool_size > 1 for d in cfg.destinations.values()))  # a limits actor per pool of 2+
        wait_until(lambda: len(head.actors()) + len(node2.actors()) >= total, 60, f"all {total} actors")
        placed = {"head": head.actors(), "node2": node2.actors()}
        print(f"\nactors per node: head {len(placed['head'])}, node 2 {len(placed['node2'])}")
        assert placed["node2"], f"SPREAD placed no actor on the second node: {placed}"

        # 1. The second node is lost mid-stream.
        publisher = _publish_in_background(nats_server.url, first, 500)
        time.sleep(2.5)
        lost = node2.actors()
        node2.kill()
        killed_at = time.monotonic()
        publisher.join(60)
        try:
            wait_until(lambda: len(head.actors()) >= total, 90, f"the {len(lost)} lost actors to restart on the head")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; lost {lost}; cluster: {_cluster_state(address, env)}") from None
        print(f"node 2 killed with {len(lost)} actors on it; all {total} running on the head "
              f"{time.monotonic() - killed_at:.1f}s later")

        # 2. The driver is killed -9 mid-stream; a new one takes over.
        publisher = _publish_in_background(nats_server.url, second, 500)
        time.sleep(2.0)
        router.kill()
        router.wait(10)
        router = _start_router(cfg_path, env, log, port)
        publisher.join(60)

        got = asyncio.run(wait_complete(nats_server.url, emulator.url, expected, timeout=120))
        # Each incident can repeat what was delivered and not yet journaled (the in-flight bound).
        bounds = {d: 2 * in_flight_bound(cfg, d) for d in expected}
        assert_exactly(expected, got, bounds, label="node lost, then driver killed")
        router.send_signal(signal.SIGTERM)
        assert router.wait(60) == 0, log.read_text()[-3000:]
    finally:
        if router.poll() is None:
            router.kill()
            router.wait(10)
