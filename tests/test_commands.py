"""The two commands users run: `router demo`, and `router run -c` with a drain on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import urllib.request

import yaml

from router.control.demo import demo_config_dict, expected_deliveries
from router.jetstream.embedded_server import free_port
from router.loadtest.retail_events import RetailEventFactory

from .conftest import wait_until
from .harness import consumer_state, publish, received


def test_demo_runs_end_to_end_and_cleans_up():
    res = subprocess.run([sys.executable, "-m", "router.control.cli", "demo", "--events", "1500"],
                         capture_output=True, text=True, timeout=300)
    out = res.stdout
    assert res.returncode == 0, out + res.stderr
    assert "demo OK" in out
    for d in ("erp", "marketplace", "carrier"):
        assert "ok: each key exactly once" in next(line for line in out.splitlines() if line.startswith(d))
    assert "dead-lettered at ingest (6)" in out and "missing idempotency key" in out
    # Nothing left behind: no nats-server or emulator from this demo still running.
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert "router-demo-" not in ps


def test_demo_interrupted_stops_everything_it_started(tmp_path):
    log = tmp_path / "demo.log"
    proc = subprocess.Popen([sys.executable, "-m", "router.control.cli", "demo", "--events", "200000"],
                            stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: "router up" in log.read_text() or proc.poll() is not None, 120, "the demo's router")
        workdir = next(line.split("store in ")[1].rstrip(")") for line in log.read_text().splitlines()
                       if "store in " in line)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=90) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "interrupted: stopping everything the demo started" in log.read_text()
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert workdir not in ps, "a process the demo started is still running"
    assert not os.path.exists(workdir)


def test_run_drains_on_sigterm_and_resumes_where_it_stopped(clean, nats_server, emulator, tmp_path):
    raw = demo_config_dict(nats_server.url, emulator.url)
    metrics_port = free_port()
    raw["metrics"] = {"port": metrics_port}
    raw["destinations"]["erp"]["concurrency"] = 1
    cfg_path = tmp_path / "router.yaml"
    cfg_path.write_text(yaml.safe_dump(raw))
    events = list(RetailEventFactory(seed=21).burst(6000, duplicate_ratio=0.05))

    log = tmp_path / "router.log"

    def start():
        # Output to a file: a pipe nobody reads would fill up and block the router.
        return subprocess.Popen([sys.executable, "-m", "router.control.cli", "run", "-c", str(cfg_path)],
                                stdout=log.open("a"), stderr=subprocess.STDOUT, text=True)

    def scrape():
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
        except OSError:
            return ""

    def erp_count():
        return len(asyncio.run(received(emulator.url, "erp")))

    proc = start()
    try:
        wait_until(lambda: "router running" in log.read_text() or proc.poll() is not None, 120, "the router to start")
        assert proc.poll() is None
        asyncio.run(publish(nats_server.url, events))
        wait_until(lambda: erp_count() > 200, 60, "first deliveries")
        wait_until(lambda: 'router_destination_delivered_total{destination="erp"}' in scrape(), 20, "metrics")
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
        out = log.read_text()
        assert proc.returncode == 0, out
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "drained and stopped" in out
    # Drained: nothing fetched is left unacked.
    for src in raw["sources"]:
        assert asyncio.run(consumer_state(nats_server.url, src["stream"], src["durable"]))[1] == 0

    proc = start()
    try:
        wait_until(lambda: log.read_text().count("router running") == 2 or proc.poll() is not None, 120,
                   "the router to start again")
        expected = expected_deliveries(yaml_config(cfg_path), events)
        wait_until(lambda: all(len(asyncio.run(received(emulator.url, d))) >= len(expected[d]) for d in expected),
                   180, "the rest after restart")
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    for d in expected:
        got = asyncio.run(received(emulator.url, d))
        assert set(got) == expected[d] and all(n == 1 for n in got.values()), d


def test_ctrl_c_while_the_router_starts_drains_once_it_is_up(clean, nats_server, emulator, tmp_path):
    """An operator who presses Ctrl-C while Ray and the actors are still starting gets a clean stop,
    not a traceback and not a router that goes on running."""
    raw = demo_config_dict(nats_server.url, emulator.url)
    raw["metrics"] = {"port": free_port()}  # its log line comes just before the stop handlers are in
    cfg_path = tmp_path / "router.yaml"
    cfg_path.write_text(yaml.safe_dump(raw))
    log = tmp_path / "router.log"
    proc = subprocess.Popen([sys.executable, "-m", "router.control.cli", "run", "-c", str(cfg_path)],
                            stdout=log.open("a"), stderr=subprocess.STDOUT, text=True)
    try:
        wait_until(lambda: "metrics and health on" in log.read_text() or proc.poll() is not None, 120,
                   "the router to begin starting")
        assert "router running" not in log.read_text(), "still starting when Ctrl-C comes"
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = log.read_text()
    assert proc.returncode == 0 and "drained and stopped" in out, out[-3000:]


def yaml_config(path):
    from router.config import load_config

    return load_config(path)
