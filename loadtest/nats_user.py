"""A locust client that publishes to NATS JetStream with nats-py, and fires locust request events.

locust runs on gevent (its users are greenlets in one monkey-patched OS thread); nats-py is
asyncio. They must not share a thread: a blocking asyncio loop would freeze every greenlet, and
asyncio on gevent's patched selectors is not supported. So the client runs one asyncio loop
(uvloop when installed: it does its own I/O and ignores gevent's patches) on a real OS thread,
started with the *original* ``_thread.start_new_thread`` that gevent saved before patching.

A greenlet hands a publish to that loop with ``call_soon_threadsafe`` and waits on a gevent
``AsyncResult``; the loop hands the outcome back with gevent's ``run_callback_threadsafe``, which
wakes the gevent hub from a foreign thread. The publish-ack latency is measured on the asyncio
side (from the publish call to the JetStream ack), so it does not include gevent scheduling.
Each publish fires ``events.request``, so locust's own stats, web UI and ``--csv`` report it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable

import gevent
import gevent.event
from gevent import GreenletExit, monkey
from locust import User
from locust.exception import StopUser

__all__ = ["JetStreamClient", "JetStreamUser", "PublishFailed"]


class PublishFailed(Exception):
    """No JetStream ack for a publish (timeout, no stream for the subject, connection lost)."""


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        selector = monkey.get_original("selectors", "DefaultSelector")
        return asyncio.SelectorEventLoop(selector())


class JetStreamClient:
    """One nats-py connection on its own OS thread, shared by every user of a locust process."""

    def __init__(self, url: str, request_event: Any, timeout: float = 5.0) -> None:
        self.url = url
        self.timeout = timeout
        self.request_event = request_event
        self._loop: asyncio.AbstractEventLoop | None = None
        self._nc: Any = None
        self._js: Any = None
        self._ready = gevent.event.AsyncResult()

    # -- the asyncio side (runs on the client's own OS thread) ----------------------------------
    def _thread_main(self, hub: Any) -> None:
        loop = self._loop = _new_loop()
        asyncio.set_event_loop(loop)

        async def connect() -> None:
            import nats

            # Reconnect for ever once connected (a NATS restart is part of a rehearsal), but fail
            # the first connect in bounded time: a wrong URL must stop the run, not idle through it.
            self._nc = await asyncio.wait_for(
                nats.connect(self.url, name="locust-rehearsal", max_reconnect_attempts=-1,
                             pending_size=64 * 1024 * 1024), self.timeout + 5)
            self._js = self._nc.jetstream(timeout=self.timeout)

        try:
            loop.run_until_complete(connect())
        except BaseException as exc:  # report to the greenlet that waits in start()
            hub.loop.run_callback_threadsafe(self._ready.set_exception, exc)
            loop.close()
            return
        hub.loop.run_callback_threadsafe(self._ready.set, True)
        loop.run_forever()
        loop.run_until_complete(self._nc.drain())
        loop.close()

    async def _publish(self, subject: str, payload: bytes, headers: dict[str, str] | None,
                       result: gevent.event.AsyncResult, hub: Any) -> None:
        t0 = time.perf_counter()
        try:
            await self._js.publish(subject, payload, timeout=self.timeout, headers=headers)
        except Exception as exc:  # every failure is a locust failure, never a dead thread
            hub.loop.run_callback_threadsafe(result.set_exception,
                                             PublishFailed(f"{type(exc).__name__}: {exc}".rstrip(": ")))
            return
        hub.loop.run_callback_threadsafe(result.set, (time.perf_counter() - t0) * 1000.0)

    # -- the gevent side ------------------------------------------------------------------------
    def start(self) -> "JetStreamClient":
        start_new_thread = monkey.get_original("_thread", "start_new_thread")  # a real OS thread
        start_new_thread(self._thread_main, (gevent.get_hub(),))
        self._ready.get(timeout=self.timeout + 10)
        return self

    def publish(self, name: str, subject: str, payload: bytes, headers: dict[str, str] | None = None,
                on_acked: Callable[[], None] | None = None) -> bool:
        """Publish and wait for the JetStream ack (this greenlet only); fire a locust request event.

        ``on_acked`` runs once the ack is in, even when locust stops this user meanwhile (it kills
        the greenlet on a ramp-down): a message the stream stored is always accounted for."""
        loop = self._loop
        assert loop is not None, "start() first"
        result = gevent.event.AsyncResult()
        hub = gevent.get_hub()  # this greenlet's hub: the asyncio thread wakes it with the outcome
        loop.call_soon_threadsafe(lambda: loop.create_task(self._publish(subject, payload, headers, result, hub)))
        t0 = time.perf_counter()
        exc: Exception | None = None
        stopped: BaseException | None = None
        try:
            try:
                latency_ms = result.get(timeout=self.timeout + 5)
            except GreenletExit as e:  # stopped mid-publish: see the publish through, then stop
                stopped = e
                latency_ms = result.get(timeout=self.timeout + 5)
        except gevent.Timeout:
            exc, latency_ms = PublishFailed("no answer from the publishing thread"), (time.perf_counter() - t0) * 1000
        except PublishFailed as e:
            exc, latency_ms = e, (time.perf_counter() - t0) * 1000
        if exc is None and on_acked:
            on_acked()
        self.request_event.fire(request_type="JS-PUB", name=name, response_time=latency_ms,
                                response_length=len(payload), exception=exc, context={"subject": subject})
        if stopped is not None:
            raise stopped
        return exc is None

    def close(self) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._loop = None


class JetStreamUser(User):
    """Base for users that publish to JetStream; ``self.client`` is the process's shared client."""

    abstract = True
    _shared: JetStreamClient | None = None
    _failed = ""  # why the client could not start (every later user stops at once)

    def __init__(self, environment: Any) -> None:
        super().__init__(environment)
        cls = JetStreamUser
        if cls._failed:
            raise StopUser(cls._failed)
        if cls._shared is None:
            opts = environment.parsed_options
            url = getattr(opts, "nats_url", None) or self.host or "nats://127.0.0.1:4222"
            try:
                cls._shared = JetStreamClient(url, environment.events.request,
                                              getattr(opts, "publish_timeout", 5.0)).start()
            except Exception as exc:
                cls._failed = f"cannot connect to NATS at {url}: {type(exc).__name__} {exc}".strip()
                logging.getLogger(__name__).error("%s; stopping the run", cls._failed)
                environment.process_exit_code = 2
                if environment.runner:
                    gevent.spawn(environment.runner.quit)  # not from this greenlet: the runner spawned it
                raise StopUser(cls._failed) from exc
        self.client = cls._shared

    @classmethod
    def close_client(cls) -> None:
        if JetStreamUser._shared is not None:
            JetStreamUser._shared.close()
            JetStreamUser._shared = None
