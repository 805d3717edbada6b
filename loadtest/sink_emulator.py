"""Emulated ERP, marketplace and carrier HTTP destinations, with fault injection.

Real HTTP servers on loopback. Each destination is a path (``POST /erp``...) that takes the
router's HTTP contract (a JSON array of records, each with ``idempotency_key`` and
``correlation_id``), counts what it received by key, and can be told to misbehave:

    POST /faults/<dest>  {"latency_ms": 200, "error_rate": 0.1, "status": 503, "outage_s": 30,
                          "fail_requests": 1,
                          "retry_after": 2, "reject_field": "carrier",
                          "reject_keys": ["order-..."]}
                         {"redirect": 302, "location": "http://elsewhere/erp"}  every request redirected
                         {"echo_headers": 401}  a careless error page: the request headers in the body
    DELETE /faults/<dest>
    GET /stats           per destination: records, unique keys, duplicates, requests, batches,
                         when a key not received before last came
    GET /received/<dest> key -> times received
    GET /receipts/<dest> key -> when it was first received (Unix time; end-to-end latency)
    GET /records/<dest>  the first 10,000 records with the batch Idempotency-Key they came in
    GET /revisions/<dest> key -> the Router-Routes-Revision header of each receipt
    GET /batch-sizes/<dest> records per accepted request, in order
    POST /reset

Run alone: ``python -m router.loadtest.sink_emulator --port 8081``.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import msgspec
import orjson
from aiohttp import web

from router.control.gc_tuning import tune_gc

__all__ = ["DESTINATIONS", "EmulatorProcess", "SinkEmulator", "main"]

DESTINATIONS = ("erp", "marketplace", "carrier")


_SAMPLES = 10_000  # records kept whole (GET /records) for the contract checks


class _Receipt(msgspec.Struct):
    """The two fields of a record the emulator counts; the rest is skipped, not built."""

    idempotency_key: str = ""
    correlation_id: str = ""


_receipts = msgspec.json.Decoder(list[_Receipt])


def _lean_keys(body: bytes, content_type: str) -> list[str] | None:
    """The keys of a well-formed request, without building each record's dicts (a full decode was a
    third of the emulator's CPU, and the emulators share the bench's cores with the router); None
    when anything is off, for the checked path to name it."""
    if content_type.split(";")[0] != "application/json":
        return None
    try:
        receipts = _receipts.decode(body)
    except msgspec.DecodeError:
        return None
    keys = [r.idempotency_key for r in receipts]
    if not all(keys) or not all(r.correlation_id for r in receipts):
        return None
    return keys


class _Site:
    def __init__(self) -> None:
        # What was received, kept so that the usual request (every key new, none twice) is counted
        # with one bulk dict update: key -> the accepted request it first came in (an index into
        # ``accepted_at`` / ``accepted_revision``); keys received again, each later receipt's revision.
        self.first_request: dict[str, int] = {}
        self.accepted_at: list[float] = []  # Unix time of each accepted request
        self.accepted_revision: list[str] = []  # its Router-Routes-Revision header
        self.later_revisions: dict[str, list[str]] = {}
        self.records = 0  # receipts in all
        self.last_new_at = 0.0  # Unix time of the last request that brought a key not received before
        self.requests = 0
        self.batches: Counter[str] = Counter()  # Idempotency-Key header -> times seen
        self.rejected = 0
        self.faults: dict[str, Any] = {}
        self.outage_until = 0.0
        self.request_times: list[float] = []
        self.failed_at: list[float] = []  # when injected `fail_requests` failures were answered
        self.samples: list[dict[str, Any]] = []  # the first records and their batch headers, for contract checks
        self.batch_sizes: list[int] = []

    def count(self, keys: list[str], revision: str, now: float) -> None:
        """One accepted request's keys."""
        n = len(self.accepted_at)
        self.accepted_at.append(now)
        self.accepted_revision.append(revision)
        self.records += len(keys)
        first, fresh = self.first_request, dict.fromkeys(keys, n)
        if len(fresh) == len(keys) and first.keys().isdisjoint(fresh):
            first.update(fresh)
            self.last_new_at = now
            return
        later = self.later_revisions
        for key in keys:
            if key in first:
                later.setdefault(key, []).append(revision)
            else:
                first[key] = n
                self.last_new_at = now

    def received(self) -> dict[str, int]:
        """Key -> times received."""
        later = self.later_revisions
        return {k: 1 + len(later[k]) if k in later else 1 for k in self.first_request}

    def first_received(self) -> dict[str, float]:
        """Key -> Unix time of its first receipt."""
        at = self.accepted_at
        return {k: at[i] for k, i in self.first_request.items()}

    def revisions(self) -> dict[str, list[str]]:
        """Key -> the Router-Routes-Revision header of each receipt."""
        later, revision = self.later_revisions, self.accepted_revision
        return {k: [revision[i], *later[k]] if k in later else [revision[i]] for k, i in self.first_request.items()}

    def stats(self) -> dict[str, Any]:
        records, unique = self.records, len(self.first_request)
        return {"records": records, "unique": unique, "duplicates": records - unique,
                "requests": self.requests, "batches": len(self.batches), "rejected": self.rejected,
                "request_times": self.request_times[-10_000:], "failed_at": self.failed_at,
                "last_new_at": self.last_new_at}


class SinkEmulator:
    def __init__(self, destinations: tuple[str, ...] = DESTINATIONS, seed: int = 1) -> None:
        self.sites = {d: _Site() for d in destinations}
        self.rng = random.Random(seed)
        self.app = web.Application(client_max_size=64 * 1024 * 1024)
        self.app.add_routes([
            web.post("/faults/{dest}", self.set_faults),
            web.delete("/faults/{dest}", self.clear_faults),
            web.get("/stats", self.stats),
            web.get("/received/{dest}", self.received),
            web.get("/receipts/{dest}", self.receipts),
            web.get("/records/{dest}", self.records),
            web.get("/revisions/{dest}", self.revisions),
            web.get("/batch-sizes/{dest}", self.batch_sizes),
            web.post("/reset", self.reset),
            web.post("/{dest}", self.deliver),
        ])
        self._runner: web.AppRunner | None = None
        self.port = 0

    def _site(self, request: web.Request) -> _Site:
        site = self.sites.get(request.match_info["dest"])
        if site is None:
            raise web.HTTPNotFound(text=f"no destination {request.match_info['dest']!r}")
        return site

    async def deliver(self, request: web.Request) -> web.Response:
        site = self._site(request)
        site.requests += 1
        site.request_times.append(time.time())
        f = site.faults
        if f.get("latency_ms"):
            await asyncio.sleep(f["latency_ms"] / 1000.0)
        if time.time() < site.outage_until:
            return web.Response(status=503, text="maintenance window")
        if f.get("redirect"):
            return web.Response(status=f["redirect"], text="moved",
                                headers={"Location": f.get("location", "/moved")})
        if f.get("echo_headers"):
            return web.json_response({"error": "rejected", "request_headers": dict(request.headers)},
                                     status=f["echo_headers"])
        if f.get("fail_requests", 0) > 0:
            f["fail_requests"] -= 1
            headers = {"Retry-After": str(f["retry_after"])} if f.get("retry_after") is not None else {}
            site.failed_at.append(time.time())
            return web.Response(status=f.get("status", 503), text="injected failure", headers=headers)
        if f.get("error_rate") and self.rng.random() < f["error_rate"]:
            headers = {"Retry-After": str(f["retry_after"])} if f.get("retry_after") is not None else {}
            return web.Response(status=f.get("status", 503), text="injected failure", headers=headers)
        body = await request.read()
        batch_key = request.headers.get("Idempotency-Key", "")
        if len(site.samples) < _SAMPLES or f.get("reject_field"):
            checked = self._checked_records(site, request, body)
            if isinstance(checked, web.Response):
                return checked
            site.samples.extend({"batch_idempotency_key": batch_key, "record": r}
                                for r in checked[:_SAMPLES - len(site.samples)])
            keys = [r["idempotency_key"] for r in checked]
        else:
            keys = _lean_keys(body, request.headers.get("Content-Type", ""))
            if keys is None:  # say what is wrong the long way
                checked = self._checked_records(site, request, body)
                if isinstance(checked, web.Response):
                    return checked
                keys = [r["idempotency_key"] for r in checked]
            reject = f.get("reject_keys")
            for i, key in enumerate(keys if reject else ()):
                if key in reject:
                    site.rejected += 1
                    return web.Response(status=400, text=f"record {i}: {key} fails validation")
        site.batches[batch_key] += 1
        site.count(keys, request.headers.get("Router-Routes-Revision", ""), time.time())
        site.batch_sizes.append(len(keys))
        return web.Response(body=b'{"accepted":%d}' % len(keys), content_type="application/json")

    def _checked_records(self, site: _Site, request: web.Request, body: bytes) -> list[dict[str, Any]] | web.Response:
        """The records of a request, every one checked against the contract and the faults in force;
        or the error response that says what is wrong with them."""
        f = site.faults
        try:
            records = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            site.rejected += 1
            return web.Response(status=400, text=f"body is not JSON: {exc}")
        if request.headers.get("Content-Type", "").split(";")[0] != "application/json":
            site.rejected += 1
            return web.Response(status=415, text="Content-Type must be application/json")
        if not isinstance(records, list):
            site.rejected += 1
            return web.Response(status=400, text="body must be a JSON array of records")
        for i, r in enumerate(records):
            for field in ("idempotency_key", "correlation_id"):
                if not isinstance(r, dict) or not r.get(field):
                    site.rejected += 1
                    return web.Response(status=400, text=f"record {i} lacks {field}")
            bad = f.get("reject_field")
            if bad and _has_field(r, bad):
                site.rejected += 1
                return web.Response(status=400, text=f"record {i}: field {bad!r} is not accepted")
            if r["idempotency_key"] in f.get("reject_keys", ()):
                site.rejected += 1
                return web.Response(status=400, text=f"record {i}: {r['idempotency_key']} fails validation")
        return records

    async def set_faults(self, request: web.Request) -> web.Response:
        site = self._site(request)
        site.faults = await request.json()
        if site.faults.get("outage_s"):
            site.outage_until = time.time() + float(site.faults["outage_s"])
        return web.json_response(site.faults)

    async def clear_faults(self, request: web.Request) -> web.Response:
        site = self._site(request)
        site.faults, site.outage_until = {}, 0.0
        return web.json_response({})

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response({d: s.stats() for d, s in self.sites.items()})

    async def received(self, request: web.Request) -> web.Response:
        return web.json_response(self._site(request).received())

    async def receipts(self, request: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps(self._site(request).first_received()), content_type="application/json")

    async def revisions(self, request: web.Request) -> web.Response:
        """Key -> the route table revision header of each time it was received."""
        return web.Response(body=orjson.dumps(self._site(request).revisions()), content_type="application/json")

    async def batch_sizes(self, request: web.Request) -> web.Response:
        """Records per accepted request, in arrival order."""
        return web.json_response(self._site(request).batch_sizes)

    async def records(self, request: web.Request) -> web.Response:
        return web.json_response(self._site(request).samples)

    async def reset(self, request: web.Request) -> web.Response:
        self.sites = {d: _Site() for d in self.sites}
        return web.json_response({})

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self.port

    async def stop(self) -> None:
        if self._runner:
            await self._runner.cleanup()


class EmulatorProcess:
    """The emulators in their own process, as a real remote service would be (demo, tests, bench)."""

    def __init__(self, workdir: str) -> None:
        self.port_file = Path(workdir) / "emulator.port"
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def start(self, timeout: float = 20.0) -> "EmulatorProcess":
        self.port_file.unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "router.loadtest.sink_emulator", "--port", "0", "--port-file", str(self.port_file)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"destination emulator exited: {self.proc.stderr.read().decode()[-2000:]}")
            if self.port_file.exists() and self.port_file.read_text().strip():
                self.url = f"http://127.0.0.1:{self.port_file.read_text().strip()}"
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"destination emulator did not start within {timeout:g}s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _has_field(obj: Any, name: str) -> bool:
    if isinstance(obj, dict):
        return name in obj or any(_has_field(v, name) for v in obj.values())
    if isinstance(obj, list):
        return any(_has_field(v, name) for v in obj)
    return False


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8081, help="0 picks a free port")
    ap.add_argument("--port-file", help="write the port here once listening")
    args = ap.parse_args(argv)

    async def serve() -> None:
        emu = SinkEmulator()
        port = await emu.start(args.host, args.port)
        tune_gc()  # it keeps every key it was sent: a bench's worth of objects the collector need not walk
        if args.port_file:
            with open(args.port_file, "w") as fh:
                fh.write(str(port))
        print(f"destination emulators on http://{args.host}:{port}/{{{','.join(DESTINATIONS)}}}", flush=True)
        await asyncio.Event().wait()

    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    try:
        runner(serve())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
