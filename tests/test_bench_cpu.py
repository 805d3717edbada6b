"""The bench's CPU accounting by role: which process is which, and an actor's start-up kept apart
from its work."""

import asyncio
import subprocess
import sys

import psutil
import pytest

from router.loadtest.bench import ROLES, CpuPhase, process_role


class FakeProcess:
    def __init__(self, pid: int, cmdline: list[str] | Exception) -> None:
        self.pid = pid
        self._cmdline = cmdline

    def cmdline(self) -> list[str]:
        if isinstance(self._cmdline, Exception):
            raise self._cmdline
        return self._cmdline


@pytest.mark.parametrize("cmdline, expected", [
    (["ray::IngestActor.run"], ("ingest_actors", True)),
    (["ray::IngestActor"], ("ingest_actors", True)),
    (["ray::router-1a2b-ingest-orders-1:IngestActor.__init__"], ("ingest_actors", False)),
    (["ray::DestinationWorker.submit"], ("sink_actors", True)),
    (["ray::router-1a2b-sink-erp-g1-0:DestinationWorker.__init__"], ("sink_actors", False)),
    (["ray::IDLE"], ("ray_other", False)),
    (["/usr/bin/python3", "/site-packages/ray/_private/workers/default_worker.py", "--node-ip-address=127.0.0.1"],
     ("ray_other", False)),
    (["ray::DestinationLimits"], ("ray_other", True)),
    (["/site-packages/ray/core/src/ray/raylet/raylet", "--raylet_socket_name=x"], ("ray_other", True)),
    (psutil.AccessDenied(1), ("ray_other", True)),
])
def test_processes_are_told_apart_by_their_title(cmdline, expected):
    assert process_role(FakeProcess(1, cmdline), {}) == expected


def test_the_processes_the_bench_starts_keep_the_role_it_gives_them():
    assert process_role(FakeProcess(7, ["nats-server", "-js"]), {7: "nats_server"}) == ("nats_server", True)
    assert process_role(FakeProcess(psutil.Process().pid, ["python"]), {}) == ("bench_process", True)


class ScriptedPhase(CpuPhase):
    """Snapshots from a script instead of /proc: the phase start, what the watcher sees, the end."""

    def __init__(self, reads: list[dict]) -> None:
        self.reads = reads
        super().__init__({})

    def _read(self, skip=()):
        snap = self.reads.pop(0) if len(self.reads) > 1 else self.reads[0]
        return {k: v for k, v in snap.items() if k not in skip}


def test_an_actor_started_in_the_phase_counts_from_its_first_work():
    sink, worker, ingest_late, helper = (1, 0.0), (2, 0.0), (3, 0.0), (4, 0.0)

    async def run():
        phase = ScriptedPhase([
            {sink: ("sink_actors", True, 1.0), worker: ("ray_other", False, 0.1)},  # a Ray worker booting
            {worker: ("ingest_actors", False, 0.5)},  # in __init__: importing, connecting
            {worker: ("ingest_actors", True, 0.8)},  # its first work
            {sink: ("sink_actors", True, 3.0), worker: ("ingest_actors", True, 2.0),
             ingest_late: ("ingest_actors", False, 0.6), helper: ("ray_other", True, 0.4)},
        ])
        for _ in range(200):  # until the watcher has read the middle snapshots (at most 10 s)
            if len(phase.reads) == 1:
                break
            await asyncio.sleep(0.05)
        return phase.end()

    work, startup = asyncio.run(run())
    assert set(work) == set(ROLES)
    assert work["sink_actors"] == pytest.approx(2.0)
    assert work["ingest_actors"] == pytest.approx(1.2)  # from 0.8 on; the one still starting did no work
    assert work["ray_other"] == pytest.approx(0.4)
    assert startup["ingest_actors"] == pytest.approx(0.7 + 0.6)
    assert startup["sink_actors"] == 0 and startup["ray_other"] == 0


def test_a_child_process_burning_cpu_is_counted():
    async def run():
        phase = CpuPhase({})
        child = subprocess.Popen([sys.executable, "-c",
                                  "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.5: pass\n"
                                  "time.sleep(30)"])
        try:  # the end snapshot sees living processes only: end the phase while the child is there
            while sum(psutil.Process(child.pid).cpu_times()[:2]) < 0.45:
                await asyncio.sleep(0.05)
            return phase.end()
        finally:
            child.kill()
            child.wait()

    work, startup = asyncio.run(run())
    assert work["ray_other"] >= 0.4
    assert not any(startup.values())
