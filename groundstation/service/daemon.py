"""The daemon: one task group owning subscriber, decoding consumer and timers; bounded shutdown.

Start-up: load the packet dictionaries, start the decoding consumer (it finds its place in
the archive), open the archive, serve /metrics and /healthz, start the embedded broker when
no broker is configured, subscribe. Shutdown (an event that a signal handler or a test
sets): stop receiving, let the consumer read what is archived within
`ingest.shutdown_timeout_s` and save its position, close the archive.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from typing import Final
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, ProcessCollector, make_wsgi_app

from groundstation.config import Config
from groundstation.consumers.decoding import DecodeFollower, DecodeSettings, DecodingProcess
from groundstation.consumers.history.process import HistoryProcess, HistorySettings
from groundstation.consumers.history.writer import HistoryCollector
from groundstation.consumers.telemetry import LAST_RECEIVE_TIME, Telemetry
from groundstation.core.definitions import load_dictionaries
from groundstation.errors import AddressInUseError
from groundstation.ingest.archive import ArchiveWriter, directory_lock
from groundstation.ingest.mqtt import Subscriber
from groundstation.ingest.sink import ArchivingSink
from groundstation.service.broker import embedded_broker
from groundstation.service.metrics import PipelineStatus, TelemetryCollector

logger = logging.getLogger(__name__)

HEALTHZ_PATH: Final = "/healthz"
HTTP_POLL_INTERVAL_S: Final = 0.05

# WSGI types, spelled out (wsgiref.types is 3.11+, but its callables are awkward to reuse).
_StartResponse = Callable[..., object]
_WsgiApp = Callable[[dict[str, object], _StartResponse], Iterable[bytes]]


@dataclass(frozen=True, slots=True)
class Health:
    """What /healthz reports: 200 while subscribed and running, 503 otherwise."""

    ok: bool
    detail: str


@dataclass(frozen=True, slots=True)
class DrainOutcome:
    """How the last shutdown went: logged, and read by tests instead of timing the exit."""

    seconds: float  # from stop-receiving to the last archived envelope decoded (or the timeout)
    timed_out: bool
    left_undecoded: int  # archived envelopes the consumer decodes after the next start


class Daemon:
    """The ground station as an object: `run()` until `shutdown` is set, then exit cleanly."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.dictionaries = load_dictionaries()
        self.shutdown = asyncio.Event()  # set by signal handlers or tests
        self.ready = asyncio.Event()  # set once /metrics is served and the subscriber runs
        self.metrics_address: tuple[str, int] | None = None
        self.registry = CollectorRegistry()
        self._stop_receiving = asyncio.Event()
        self._stopping = False
        settings = DecodeSettings(
            archive_dir=config.archive.directory,
            resume_tail_bytes=config.ingest.resume_scan_bytes,
            max_payload_bytes=config.ingest.max_payload_bytes,
            max_clock_skew_s=config.ingest.max_clock_skew_s,
            batch_max_envelopes=config.ingest.batch_max_envelopes,
            batch_max_bytes=config.ingest.batch_max_bytes,
        )
        self.follower = DecodeFollower(
            DecodingProcess(settings), initial=Telemetry(self.dictionaries).snapshot()
        )
        self.history: HistoryProcess | None = None
        if config.history.url is not None:
            # A second consumer of the archive, in a process of its own (docs/history.md).
            self.history = HistoryProcess(
                HistorySettings(
                    config=config.history,
                    archive_dir=config.archive.directory,
                    max_payload_bytes=config.ingest.max_payload_bytes,
                    batch_max_envelopes=config.ingest.batch_max_envelopes,
                    batch_max_bytes=config.ingest.batch_max_bytes,
                    max_clock_skew_s=config.ingest.max_clock_skew_s,
                )
            )
        self.subscriber: Subscriber | None = None
        self.sink: ArchivingSink | None = None
        self.drain_outcome: DrainOutcome | None = None

    def status(self) -> PipelineStatus:
        subscriber = self.subscriber.status if self.subscriber else None
        sink = self.sink
        free_bytes: int | None = None
        size_bytes: int | None = None
        with contextlib.suppress(OSError):  # the directory is gone: say nothing of it
            filesystem = os.statvfs(self.config.archive.directory)
            free_bytes = filesystem.f_bavail * filesystem.f_frsize
            size_bytes = filesystem.f_blocks * filesystem.f_frsize
        return PipelineStatus(
            mqtt_connected=bool(subscriber and subscriber.connected),
            reconnects_total=subscriber.reconnects_total if subscriber else 0,
            queue_depth=self.follower.backlog,
            archive_damaged_records=self.follower.damaged_records,
            archive_damaged_bytes=self.follower.damaged_bytes,
            session_takeovers_total=subscriber.session_takeovers_total if subscriber else 0,
            archive_write_failing=bool(sink and sink.write_failure),
            archive_write_errors_total=sink.write_errors_total if sink else 0,
            archive_free_bytes=free_bytes,
            archive_size_bytes=size_bytes,
        )

    def health(self) -> Health:
        if self._stopping:
            return Health(ok=False, detail="shutting down")
        failure = self.sink.write_failure if self.sink else None
        if failure is not None:
            return Health(ok=False, detail=f"{failure}; ingest paused, retrying")
        if not self.status().mqtt_connected:
            return Health(ok=False, detail="not connected to the MQTT broker")
        return Health(ok=True, detail="ok")

    async def run(self) -> None:
        """Run until `shutdown` is set; returns after the archive is closed."""
        config = self.config
        async with AsyncExitStack() as stack:
            # First: a second daemon on this directory stops here, before it reads or writes.
            stack.enter_context(directory_lock(config.archive.directory))
            # Before the archive writer starts a new segment: the consumer finds its place.
            stack.callback(self.follower.close)
            resumed = await self.follower.start()
            if resumed.damaged_records or resumed.damaged_bytes:
                logger.warning(
                    "resume scan of %s skipped %d damaged archive records (%d bytes)",
                    config.archive.directory,
                    resumed.damaged_records,
                    resumed.damaged_bytes,
                )
            if resumed.envelopes:
                logger.info(
                    "sequence accounting resumed from %d archived envelopes", resumed.envelopes
                )
            if resumed.backlog_records:
                logger.info(
                    "decoding %d archived envelopes not decoded before the last stop",
                    resumed.backlog_records,
                )
            writer = ArchiveWriter(config.archive)
            await asyncio.to_thread(writer.open)
            stack.push_async_callback(asyncio.to_thread, writer.close)
            sink = ArchivingSink(
                writer,
                self.follower.archived,
                max_payload_bytes=config.ingest.max_payload_bytes,
                vehicles=self.dictionaries,
                max_clock_skew_s=config.ingest.max_clock_skew_s,
            )
            self.sink = sink
            self.metrics_address = stack.enter_context(self._serve_http())
            if config.broker.embedded:
                await stack.enter_async_context(embedded_broker(port=config.broker.port))
            subscriber = Subscriber(
                config.broker,
                sink,
                batch_max_messages=config.ingest.batch_max_envelopes,
                batch_max_bytes=config.ingest.batch_max_bytes,
            )
            self.subscriber = subscriber
            async with asyncio.TaskGroup() as tasks:
                receiving = tasks.create_task(subscriber.run(self._stop_receiving))
                decoding = tasks.create_task(self.follower.run())
                syncing = tasks.create_task(self._sync_archive(sink))
                history = None if self.history is None else tasks.create_task(self.history.run())
                self.ready.set()
                await self.shutdown.wait()
                await self._drain(receiving, decoding)
                syncing.cancel()
                if history is not None:
                    history.cancel()  # it saves its position and stops: it resumes from there
        logger.info("ground station stopped; archive closed")

    async def _drain(self, receiving: asyncio.Task[None], decoding: asyncio.Task[None]) -> None:
        """Stop receiving, let the consumer decode what is archived, all within
        shutdown_timeout_s; then save its position (what is left is decoded at the next
        start)."""
        self._stopping = True
        timeout_s = self.config.ingest.shutdown_timeout_s
        logger.info("shutting down: %d archived envelopes to decode", self.follower.backlog)
        self._stop_receiving.set()
        started = time.monotonic()
        decoding.cancel()  # the follower's loop; the drain catches up itself
        try:
            async with asyncio.timeout(timeout_s):
                await asyncio.wait([receiving])
                await asyncio.wait([decoding])
                await self.follower.catch_up()
        except TimeoutError:
            self.drain_outcome = DrainOutcome(
                seconds=time.monotonic() - started,
                timed_out=True,
                left_undecoded=self.follower.backlog,
            )
            logger.warning(
                "shutdown drain exceeded %.1f s; %d archived envelopes are decoded at the next"
                " start",
                timeout_s,
                self.follower.backlog,
            )
            receiving.cancel()
        else:
            self.drain_outcome = DrainOutcome(
                seconds=time.monotonic() - started, timed_out=False, left_undecoded=0
            )
            logger.info("drained in %.2f s", self.drain_outcome.seconds)
        await self.follower.save()

    def _newest_received(self) -> float:
        """Receive time of the newest valid envelope decoded live (gs_last_receive_time_seconds)."""
        for family in self.follower.latest_snapshot.families:
            if family.family is LAST_RECEIVE_TIME:
                return max((value for _, value in family.samples), default=0.0)
        return 0.0

    async def _sync_archive(self, sink: ArchivingSink) -> None:
        if self.config.archive.fsync != "interval":
            return
        while True:
            await asyncio.sleep(self.config.archive.fsync_interval_s)
            await sink.sync_if_due()

    @contextlib.contextmanager
    def _serve_http(self) -> Iterator[tuple[str, int]]:
        """/metrics (a fresh registry per daemon) and /healthz, in a thread of their own."""
        self.registry.register(
            TelemetryCollector(snapshot=lambda: self.follower.latest_snapshot, pipeline=self.status)
        )
        if self.history is not None:
            self.registry.register(
                HistoryCollector(self.history.status, newest_received=self._newest_received)
            )
        ProcessCollector(registry=self.registry)
        app = _with_healthz(make_wsgi_app(self.registry), self.health)
        try:
            server: WSGIServer = make_server(
                self.config.metrics.host,
                self.config.metrics.port,
                app,
                _ThreadingWSGIServer,
                handler_class=_QuietRequestHandler,
            )
        except OSError as error:
            if error.errno != errno.EADDRINUSE:
                raise
            raise AddressInUseError(
                service="metrics", host=self.config.metrics.host, port=self.config.metrics.port
            ) from error
        thread = threading.Thread(
            target=server.serve_forever,
            # shutdown() waits up to one poll interval (0.5 s by default) for the thread.
            kwargs={"poll_interval": HTTP_POLL_INTERVAL_S},
            name="metrics-http",
            daemon=True,
        )
        thread.start()
        host, port = server.server_address[:2]
        logger.info("metrics on http://%s:%d/metrics", self.config.metrics.host, port)
        try:
            yield str(host), int(port)
        finally:
            server.shutdown()
            server.server_close()
            thread.join()


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    """One thread per request, so a slow scraper cannot hold up /healthz."""

    daemon_threads = True


class _QuietRequestHandler(WSGIRequestHandler):
    """No access log line per scrape: Prometheus scrapes every few seconds."""

    def log_message(self, format: str, *args: object) -> None:
        pass


def _with_healthz(metrics_app: _WsgiApp, health: Callable[[], Health]) -> _WsgiApp:
    def app(environ: dict[str, object], start_response: _StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == HEALTHZ_PATH:
            state = health()
            status = "200 OK" if state.ok else "503 Service Unavailable"
            start_response(status, [("Content-Type", "text/plain; charset=utf-8")])
            return [f"{state.detail}\n".encode()]
        return metrics_app(environ, start_response)

    return app


@asynccontextmanager
async def running_daemon(config: Config) -> AsyncIterator[Daemon]:
    """The daemon as an async context manager (tests, demo): ready on entry, shut down on exit."""
    daemon = Daemon(config)
    task = asyncio.create_task(daemon.run(), name="groundstation-daemon")
    ready = asyncio.create_task(daemon.ready.wait())
    await asyncio.wait([task, ready], return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        ready.cancel()
        task.result()  # start-up failed: raise its error
    try:
        yield daemon
    finally:
        daemon.shutdown.set()
        await task
