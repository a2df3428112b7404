"""The history writer in a process of its own, so its decoding never holds the daemon's GIL.

As a thread of the daemon, the writer re-decoding a burst took the GIL from the event loop
and from the thread feeding the decoding child: live ingest fell to 26-84 % of its rate
(docs/performance.md, "With the history writer"). In its own process it shares nothing
with ingest but the archive, which it reads from its durable position, and a few numbers
for /metrics (`HistoryStatus` in shared memory).

The child lives as long as the daemon: it ignores SIGTERM and SIGINT (the daemon stops it
once ingest has drained), exits by itself if the daemon dies (kill -9), and is started
again if it dies on its own; its position makes both harmless.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import threading
from dataclasses import dataclass
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Final

from groundstation.config import HistoryConfig
from groundstation.consumers.history.writer import HistoryStatus, HistoryWriter, SharedStatus
from groundstation.core.definitions import load_dictionaries
from groundstation.service.child_process import start_as_child

logger = logging.getLogger(__name__)

WATCH_INTERVAL_S: Final = 1.0  # how soon a dead writer is noticed
RESTART_DELAY_S: Final = 5.0  # before starting one that died, so a crash cannot spin
STOP_TIMEOUT_S: Final = 10.0  # for the writer to finish its request and save its position
# The writer is work that may wait (its lag is allowed to grow; ingest's is not): on a busy
# machine the scheduler gives ingest and its decoding child the CPU first.
WRITER_NICENESS: Final = 10


@dataclass(frozen=True, slots=True)
class HistorySettings:
    """What the writer process needs: the [history] table and the ingest limits it shares."""

    config: HistoryConfig
    archive_dir: Path
    max_payload_bytes: int
    batch_max_envelopes: int
    batch_max_bytes: int
    max_clock_skew_s: float


class HistoryProcess:
    """Starts, watches and stops the writer's process; `status` is read by /metrics."""

    def __init__(self, settings: HistorySettings) -> None:
        self._settings = settings
        # spawn, not fork: the daemon has threads (HTTP server, executors) by now.
        self._context = multiprocessing.get_context("spawn")
        self._shared = HistoryStatus.new_shared(self._context)
        self.status = HistoryStatus(self._shared)
        self._stop = self._context.Event()
        self._process: multiprocessing.process.BaseProcess | None = None

    async def run(self) -> None:
        """Keep a writer process running until cancelled; then stop it and wait for it."""
        self._start()
        try:
            while True:
                await asyncio.sleep(WATCH_INTERVAL_S)
                process = self._process
                if process is None or process.is_alive():
                    continue
                logger.error(
                    "history writer process exited with code %s; starting it again in %.0f s"
                    " (it resumes from its position)",
                    process.exitcode,
                    RESTART_DELAY_S,
                )
                await asyncio.sleep(RESTART_DELAY_S)
                self._start()
        finally:
            await asyncio.shield(asyncio.to_thread(self._stop_process))

    def _start(self) -> None:
        self._stop.clear()
        self._process = self._context.Process(
            target=_run_writer,
            args=(self._settings, self._shared, self._stop),
            name="groundstation-history",
            daemon=True,
        )
        self._process.start()

    def _stop_process(self) -> None:
        process = self._process
        if process is None:
            return
        self._stop.set()
        process.join(STOP_TIMEOUT_S + self._settings.config.timeout_s)
        if process.is_alive():
            logger.warning("history writer did not stop in time; terminating it")
            process.terminate()
            process.join()
        self._process = None


def _run_writer(settings: HistorySettings, shared: SharedStatus, stop: Event) -> None:
    """The child: the writer's loop until `stop` is set (or the parent is gone)."""
    start_as_child()
    os.nice(WRITER_NICENESS)
    writer = HistoryWriter(
        settings.config,
        archive_dir=settings.archive_dir,
        dictionaries=load_dictionaries(),
        max_payload_bytes=settings.max_payload_bytes,
        batch_max_envelopes=settings.batch_max_envelopes,
        batch_max_bytes=settings.batch_max_bytes,
        max_clock_skew_s=settings.max_clock_skew_s,
        status=HistoryStatus(shared),
    )
    # The writer waits on a thread event between polls and retries: pass the stop on.
    threading.Thread(
        target=_pass_on, args=(stop, writer.stop), name="stop-watch", daemon=True
    ).start()
    writer.run()


def _pass_on(stop: Event, to: threading.Event) -> None:
    stop.wait()
    to.set()
