"""Security: redirects, secrets, NATS that refuses us, loopback binds, safe operator commands.

System tests on a real nats-server (with token auth and TLS where it matters), real Ray and
the real HTTP emulators; the redactor's own logic is unit-tested first.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import nats
import nats.js.errors
import pytest
import yaml

from router.config import parse_config
from router.control.demo import demo_config_dict, expected_deliveries
from router.jetstream.embedded_server import free_port, nats_server_binary
from router.loadtest.retail_events import RetailEventFactory
from router.loadtest.sink_emulator import EmulatorProcess
from router.redaction import REDACTED, Redactor, secrets_from_config

from .conftest import wait_until
from .harness import config, emulator_stats, publish, received, route_through, set_faults

CLI = [sys.executable, "-m", "router.control.cli"]


# -- the redactor ------------------------------------------------------------------------------

def test_redactor_hides_every_form_of_a_secret_and_leaves_the_rest():
    r = Redactor(["s3cr/et+tok"])
    text = 'a s3cr/et+tok b {"h": "s3cr\\/et+tok"} c s3cr%2Fet%2Btok d Authorization: Bearer unknown-token-1'
    out = r.redact(text)
    assert "s3cr" not in out and "unknown-token-1" not in out
    assert out.count(REDACTED) == 4 and out.startswith("a ") and "Authorization: Bearer" in out


def test_secrets_come_from_the_environment_the_config_names(monkeypatch, tmp_path):
    monkeypatch.setenv("T_ERP", "erp-secret-value")
    monkeypatch.setenv("T_NATS", "nats-secret-value")
    raw = demo_config_dict("nats://user:url-password@127.0.0.1:4222", "http://127.0.0.1:1")
    raw["nats"]["token_env"] = "T_NATS"
    creds = tmp_path / "router.creds"
    creds.write_text("-----BEGIN NATS USER JWT-----\neyJ0eXAiOiJKV1QiLCJhbGciOiJlZDI1NTE5In0.fake.jwt\n"
                     "------END NATS USER JWT------\n\nNKEY Seed printed below can be used to sign.\n"
                     "-----BEGIN USER NKEY SEED-----\nSUAFAKESEEDFAKESEEDFAKESEEDFAKESEED\n------END USER NKEY SEED------\n")
    raw["nats"]["credentials"] = str(creds)
    raw["destinations"]["erp"]["auth"] = {"token_env": "T_ERP"}
    found = set(secrets_from_config(parse_config(raw, "<test>")))
    assert {"erp-secret-value", "nats-secret-value", "url-password",
            "eyJ0eXAiOiJKV1QiLCJhbGciOiJlZDI1NTE5In0.fake.jwt", "SUAFAKESEEDFAKESEEDFAKESEEDFAKESEED"} <= found
    assert not any(" " in f for f in found)  # the .creds file's prose is not a secret


def test_health_endpoints_say_why_not_ready():
    from router.control.metrics import serve_metrics
    from router.control.service import Readiness

    class Connection:
        is_connected = True

    ready = Readiness()
    server = serve_metrics("127.0.0.1", 0, ready)
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        assert server.server_address[0] == "127.0.0.1"
        assert _get(f"{base}/healthz") == (200, "ok\n")
        assert _get(f"{base}/readyz") == (503, "starting: routes and actors not up yet\n")
        ready.nc, ready.started = Connection(), True
        assert _get(f"{base}/readyz") == (200, "ready\n")
        Connection.is_connected = False
        assert _get(f"{base}/readyz") == (503, "NATS not connected (reconnecting)\n")
        ready.draining = True
        assert _get(f"{base}/readyz")[0] == 503 and "draining" in _get(f"{base}/readyz")[1]
        assert _get(f"{base}/metrics")[0] == 200
    finally:
        server.close()


# -- destinations that redirect ------------------------------------------------------------------

async def _dead_letters(url: str, stream: str = "ROUTER_DLQ") -> list[tuple[dict, bytes]]:
    """Every dead letter, whole: (headers, payload)."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    out: list[tuple[dict, bytes]] = []
    try:
        info = await js.stream_info(stream)
        for seq in range(max(1, info.state.first_seq), info.state.last_seq + 1):
            try:
                m = await js.get_msg(stream, seq)
            except nats.js.errors.NotFoundError:
                continue
            out.append((dict(m.headers or {}), m.data or b""))
    except nats.js.errors.NotFoundError:
        pass
    finally:
        await nc.close()
    return out


def test_redirects_are_dead_lettered_never_followed(clean, nats_server, emulator, ray_session, tmp_path):
    elsewhere = EmulatorProcess(str(tmp_path)).start()  # the host a redirect points to
    try:
        asyncio.run(set_faults(emulator.url, "erp", {"redirect": 302, "location": f"{elsewhere.url}/erp"}))
        asyncio.run(set_faults(emulator.url, "marketplace",
                               {"redirect": 307, "location": f"{elsewhere.url}/marketplace"}))
        cfg = config(nats_server.url, emulator.url)
        events = list(RetailEventFactory(seed=91).burst(300))
        expected = expected_deliveries(cfg, events)
        st = asyncio.run(route_through(cfg, nats_server.url, events))

        for dest, status in (("erp", 302), ("marketplace", 307)):
            assert st.destinations[dest].delivered == 0, f"{dest}: a redirect counted as delivered"
            assert st.destinations[dest].dead_lettered == len(expected[dest])
            letters = [h for h, _ in asyncio.run(_dead_letters(nats_server.url))
                       if h.get("Router-Destination") == dest]
            assert len(letters) == len(expected[dest])
            assert {h["Router-Status"] for h in letters} == {str(status)}
            assert all(f"{elsewhere.url}/{dest}" in h["Router-Reason"] for h in letters), letters[0]
            assert asyncio.run(received(emulator.url, dest)) == {}
        # The destination that does not redirect is unaffected.
        assert set(asyncio.run(received(emulator.url, "carrier"))) == expected["carrier"]
        # Nothing reached the host the redirects named.
        assert all(s["requests"] == 0 for s in asyncio.run(emulator_stats(elsewhere.url)).values())
    finally:
        elsewhere.stop()
        asyncio.run(set_faults(emulator.url, "erp", None))
        asyncio.run(set_faults(emulator.url, "marketplace", None))


# -- secrets never leave -----------------------------------------------------------------------

def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError:
        return 0, ""


def test_a_token_echoed_by_a_destination_never_leaves(clean, nats_server, emulator, tmp_path):
    token = f"tok-{uuid.uuid4().hex}"
    env = {**os.environ, "ROUTER_TEST_ERP_TOKEN": token}
    raw = demo_config_dict(nats_server.url, emulator.url)
    raw["destinations"]["erp"]["auth"] = {"token_env": "ROUTER_TEST_ERP_TOKEN"}
    port = free_port()
    raw["metrics"] = {"port": port}
    cfg_path = tmp_path / "router.yaml"
    cfg_path.write_text(yaml.safe_dump(raw))
    cfg = parse_config(raw, str(cfg_path))
    events = list(RetailEventFactory(seed=92).burst(200))
    erp_keys = expected_deliveries(cfg, events)["erp"]
    # A careless error page that echoes the request headers, Authorization included.
    asyncio.run(set_faults(emulator.url, "erp", {"echo_headers": 401}))

    log = tmp_path / "run.log"
    proc = subprocess.Popen([*CLI, "-v", "run", "-c", str(cfg_path)], env=env,
                            stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: _get(f"http://127.0.0.1:{port}/readyz")[0] == 200 or proc.poll() is not None,
                   120, "the router to be ready")
        assert proc.poll() is None, log.read_text()[-3000:]
        assert _get(f"http://127.0.0.1:{port}/healthz") == (200, "ok\n")
        assert _get(f"http://127.0.0.1:{port}/readyz") == (200, "ready\n")
        asyncio.run(publish(nats_server.url, events))

        def erp_letters():
            return [x for x in asyncio.run(_dead_letters(nats_server.url))
                    if x[0].get("Router-Destination") == "erp"]
        letters = wait_until(lambda: len(erp_letters()) >= len(erp_keys) and erp_letters(), 90,
                             "the erp dead letters")
        seq_out = subprocess.run([*CLI, "dlq", "list", "-c", str(cfg_path), "-d", "erp", "--limit", "1"],
                                 env=env, capture_output=True, text=True, timeout=60)
        seq = seq_out.stdout.splitlines()[1].split()[0]
        shown = subprocess.run([*CLI, "dlq", "show", "-c", str(cfg_path), seq], env=env,
                               capture_output=True, text=True, timeout=60)
        assert shown.returncode == 0, shown.stderr
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=90) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        asyncio.run(set_faults(emulator.url, "erp", None))

    responses = [h.get("Router-Response", "") for h, _ in letters]
    assert all(f"Bearer {REDACTED}" in r for r in responses), responses[0]
    everything = "\n".join([log.read_text(), seq_out.stdout, seq_out.stderr, shown.stdout, shown.stderr,
                            *(f"{h} {p!r}" for h, p in letters)])
    assert token not in everything
    assert REDACTED in shown.stdout


# -- NATS that refuses us at startup -----------------------------------------------------------

def _run_router(tmp_path: Path, nats_cfg: dict, env: dict | None = None,
                timeout: float = 60) -> tuple[int, str, float]:
    raw = demo_config_dict("", "http://127.0.0.1:1")
    raw["nats"] = nats_cfg
    cfg_path = tmp_path / "router.yaml"
    cfg_path.write_text(yaml.safe_dump(raw))
    started = time.monotonic()
    res = subprocess.run([*CLI, "run", "-c", str(cfg_path)], env={**os.environ, **(env or {})},
                         capture_output=True, text=True, timeout=timeout)
    return res.returncode, res.stdout + res.stderr, time.monotonic() - started


@pytest.fixture
def nats_server_with(tmp_path):
    """Start a nats-server with extra arguments (auth, TLS) on a free loopback port."""
    procs: list[subprocess.Popen] = []

    def start(*args: str) -> str:
        port = free_port()
        proc = subprocess.Popen([nats_server_binary(), "-a", "127.0.0.1", "-p", str(port), *args],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(proc)
        wait_until(lambda: _listening(port), 10, "nats-server")
        return f"nats://127.0.0.1:{port}"

    yield start
    for p in procs:
        p.terminate()
        p.wait(10)


def _listening(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


STARTUP_SLACK = 8.0  # Python and the router's imports, on a busy 2-core machine


def test_wrong_token_fails_fast_naming_authorization(nats_server_with, tmp_path):
    url = nats_server_with("--auth", "the-right-token")
    code, out, took = _run_router(tmp_path, {"url": url, "token_env": "T_NATS", "connect_timeout": "2s"},
                                  {"T_NATS": "a-wrong-token"})
    assert code == 3, out
    assert "authorization" in out.lower() and "nats.token_env" in out
    assert took < 2 + STARTUP_SLACK
    assert "a-wrong-token" not in out


def test_unreachable_nats_fails_within_connect_timeout(tmp_path):
    code, out, took = _run_router(tmp_path, {"url": f"nats://127.0.0.1:{free_port()}", "connect_timeout": "2s"})
    assert code == 3, out
    assert "connection refused" in out and "nats.url" in out
    assert took < 2 + STARTUP_SLACK


def _make_ca(name: str):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def _tls_files(tmp_path: Path) -> dict[str, str]:
    """A CA that signs the server's certificate, and another CA that does not."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    ca_key, ca = _make_ca("router test CA")
    _, other_ca = _make_ca("some other CA")
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "nats")]))
            .issuer_name(ca.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    files = {"ca": ca.public_bytes(pem), "other_ca": other_ca.public_bytes(pem), "cert": cert.public_bytes(pem),
             "key": key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())}
    out = {}
    for name, data in files.items():
        (tmp_path / f"{name}.pem").write_bytes(data)
        out[name] = str(tmp_path / f"{name}.pem")
    return out


def test_tls_with_a_ca_that_did_not_sign_the_server_fails_fast(nats_server_with, tmp_path):
    pytest.importorskip("cryptography")
    from router.config import NatsConfig, TLSConfig
    from router.jetstream.connection import connect

    tls = _tls_files(tmp_path)
    url = nats_server_with("--tls", "--tlscert", tls["cert"], "--tlskey", tls["key"])

    async def good() -> bool:  # the setup is right: the CA that signed it is accepted
        nc = await connect(NatsConfig(url=url, tls=TLSConfig(ca_file=tls["ca"]), connect_timeout=2.0), "t",
                           fail_fast=True)
        await nc.close()
        return True
    assert asyncio.run(good())

    code, out, took = _run_router(tmp_path, {"url": url, "tls": {"ca_file": tls["other_ca"]},
                                             "connect_timeout": "2s"})
    assert code == 3, out
    assert "certificate is not trusted" in out and "nats.tls.ca_file" in out
    assert took < 2 + STARTUP_SLACK
    # Plaintext config against a TLS-only server: the system's CAs do not know this one either.
    code, out, _ = _run_router(tmp_path, {"url": url, "connect_timeout": "2s"})
    assert code == 3 and "no nats.tls.ca_file is set" in out, out


# -- local Ray on loopback -----------------------------------------------------------------------

_RAY_PORTS = """
import time, psutil, ray
from router.config import parse_config
from router.control.demo import demo_config_dict
from router.control.supervisor import init_ray
init_ray(parse_config(demo_config_dict("nats://127.0.0.1:1", "http://127.0.0.1:1"), "<t>"))
@ray.remote
def ping():
    return 1
ray.get(ping.remote())
me = psutil.Process()
listening = set()
for p in [me, *me.children(recursive=True)]:
    try:
        listening |= {c.laddr.ip for c in p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}
    except psutil.Error:
        pass
print(sorted(listening))
ray.shutdown()
"""


def test_local_ray_listens_on_loopback_only():
    res = subprocess.run([sys.executable, "-c", _RAY_PORTS], capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr[-3000:]
    addresses = eval(res.stdout.strip().splitlines()[-1])  # noqa: S307 - our own printed list
    assert addresses, "found no listening sockets at all"
    assert all(ipaddress.ip_address(a.removeprefix("::ffff:")).is_loopback for a in addresses), addresses


# -- operator commands ----------------------------------------------------------------------------

async def _stream_names(url: str) -> list[str]:
    nc = await nats.connect(url)
    try:
        return sorted(i.config.name for i in await nc.jetstream().streams_info())
    finally:
        await nc.close()


def _dlq(cfg_path: Path, *args: str, env: dict | None = None, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, "dlq", *args, "-c", str(cfg_path)], input=stdin, capture_output=True,
                          text=True, timeout=60, env={**os.environ, **(env or {})})


def test_dlq_read_commands_create_nothing(clean, nats_server, emulator, tmp_path):
    cfg_path = tmp_path / "router.yaml"
    cfg_path.write_text(yaml.safe_dump(demo_config_dict(nats_server.url, emulator.url)))
    listed = _dlq(cfg_path, "list")
    assert listed.returncode == 0 and "0 dead letter(s)" in listed.stdout, listed.stdout + listed.stderr
    shown = subprocess.run([*CLI, "dlq", "show", "-c", str(cfg_path), "1"], capture_output=True, text=True,
                           timeout=60)
    assert shown.returncode == 1 and "no dead-letter stream" in shown.stderr
    dry = _dlq(cfg_path, "replay", "--dry-run")
    assert dry.returncode == 0 and "nothing was changed" in dry.stdout
    assert asyncio.run(_stream_names(nats_server.url)) == []


async def _seed_dead_letters(url: str, cfg, token: str) -> list[int]:
    from router.jetstream.streams import ensure_router_streams

    nc = await nats.connect(url)
    js = nc.jetstream()
    await ensure_router_streams(js, cfg)
    seqs = []
    for i in range(2):
        ack = await js.publish("router.dlq.erp", b'{"idempotency_key": "k%d"}' % i, headers={
            "Router-Stage": "destination", "Router-Destination": "erp", "Idempotency-Key": f"k{i}",
            "Router-Reason": "HTTP 401 from erp \x1b]0;owned\x07",
            # as a router without redaction would have stored it
            "Router-Response": f'{{"Authorization": "Bearer {token}"}}'})
        seqs.append(ack.seq)
    await nc.close()
    return seqs


async def _counts(url: str) -> tuple[int, int]:
    nc = await nats.connect(url)
    js = nc.jetstream()
    try:
        return ((await js.stream_info("ROUTER_DLQ")).state.messages,
                (await js.stream_info("ROUTER_PARKED")).state.messages)
    finally:
        await nc.close()


def test_dlq_show_redacts_and_escapes_replay_is_careful(clean, nats_server, emulator, tmp_path):
    token = f"tok-{uuid.uuid4().hex}"
    raw = demo_config_dict(nats_server.url, emulator.url)
    raw["destinations"]["erp"]["auth"] = {"token_env": "ROUTER_TEST_ERP_TOKEN"}
    cfg_path = tmp_path / "router.yaml"
    cfg_path.write_text(yaml.safe_dump(raw))
    first, second = asyncio.run(_seed_dead_letters(nats_server.url, parse_config(raw, "<t>"), token))
    env = {"ROUTER_TEST_ERP_TOKEN": token}

    shown = subprocess.run([*CLI, "dlq", "show", "-c", str(cfg_path), str(first)], capture_output=True,
                           text=True, timeout=60, env={**os.environ, **env})
    assert shown.returncode == 0, shown.stderr
    assert token not in shown.stdout and REDACTED in shown.stdout
    assert "\x1b" not in shown.stdout and "\\x1b]0;owned\\x07" in shown.stdout
    listed = _dlq(cfg_path, "list", env=env)
    assert "\x1b" not in listed.stdout and "2 dead letter(s)" in listed.stdout

    dry = _dlq(cfg_path, "replay", "--dry-run", env=env)
    assert dry.returncode == 0 and f"seq {first}: -> router.parked.erp." in dry.stdout, dry.stdout
    assert asyncio.run(_counts(nats_server.url)) == (2, 0)

    asked = _dlq(cfg_path, "replay", env=env, stdin="n\n")  # everything, and the operator says no
    assert asked.returncode == 1 and "Replay all 2 dead letter(s)" in asked.stderr
    assert asyncio.run(_counts(nats_server.url)) == (2, 0)

    one = _dlq(cfg_path, "replay", "--seq", str(second), env=env)
    assert one.returncode == 0 and "replayed 1 dead letter(s)" in one.stdout, one.stdout + one.stderr
    assert asyncio.run(_counts(nats_server.url)) == (1, 1)

    missing = _dlq(cfg_path, "replay", "--seq", "999999", env=env)
    assert missing.returncode == 1 and "seq 999999: no dead letter with this sequence" in missing.stderr
