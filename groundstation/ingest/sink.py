"""The subscriber's sink: validate each payload and append the batch to the archive; the
subscriber acknowledges it only then. Nothing else is on the ack path: the consumers read
the archive, and the decoding consumer is told how far it now reaches."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Final

from groundstation.core.envelope import DEFAULT_MAX_CLOCK_SKEW_S, Envelope, check_payload
from groundstation.errors import ArchiveWriteError
from groundstation.ingest.archive import (
    ArchiveRecord,
    ArchiveWriter,
    Frame,
    LogPosition,
    frame_record,
)
from groundstation.ingest.mqtt import Delivery
from groundstation.log import InvalidEnvelopeLog

logger = logging.getLogger(__name__)

# Retries of a failed archive write (a full file system): soon enough to resume within
# seconds of space returning, rare enough not to flood the log or the disk.
ARCHIVE_RETRY_MIN_S: Final = 0.25
ARCHIVE_RETRY_MAX_S: Final = 5.0


class ArchivingSink:
    """The subscriber's sink: validate and archive, before the ack; then say how far the
    archive reaches (`on_archived`, which only moves the decoding consumer's target).

    A failed archive write (a full file system) pauses ingest instead of ending it: `store`
    retries the same batch with capped backoff and returns only once it is archived, so
    nothing is acknowledged meanwhile, the inbox fills and reading stops (the broker keeps
    the messages). `write_failure` says why for /healthz and /metrics.
    """

    def __init__(
        self,
        writer: ArchiveWriter,
        on_archived: Callable[[LogPosition | None, int], None],
        *,
        max_payload_bytes: int,
        vehicles: Iterable[str],
        max_clock_skew_s: float = DEFAULT_MAX_CLOCK_SKEW_S,
        retry_min_s: float = ARCHIVE_RETRY_MIN_S,
        retry_max_s: float = ARCHIVE_RETRY_MAX_S,
    ) -> None:
        self._writer = writer
        self._on_archived = on_archived
        self._max_payload_bytes = max_payload_bytes
        self._max_clock_skew_s = max_clock_skew_s
        self._vehicles = frozenset(vehicles)
        self._retry_min_s = retry_min_s
        self._retry_max_s = retry_max_s
        self._log_invalid = InvalidEnvelopeLog()
        self.lock = asyncio.Lock()  # one archive call at a time (store, periodic fsync)
        self.write_failure: ArchiveWriteError | None = None  # the newest, while it lasts
        self._failing_since = 0.0  # monotonic, when write_failure was first set
        self.write_errors_total = 0  # failed attempts, retries included

    async def store(self, batch: list[Delivery]) -> None:
        """Validate and frame on the loop's thread, then write and sync on a worker.

        Validating and framing are Python work: on a worker thread they fought the loop's
        socket reads for the GIL (measured: 21 futex calls per message, against 1.5 now).
        The write is a copy into the page cache (~20 us for 65 KiB into reused pages) and
        fdatasync waits for the disk: system calls, which release the GIL, so the loop's
        thread reads the next messages meanwhile.
        """
        async with self.lock:
            frames = self._check_and_frame(batch)
            await self._archive(functools.partial(self._writer.append_frames, frames))
            self._on_archived(self._writer.end, len(frames))

    async def sync_if_due(self) -> None:
        async with self.lock:
            await self._archive(self._writer.sync_if_due)

    async def _archive(self, write: Callable[[], None]) -> None:
        """`write` on a worker thread until it succeeds, waiting ever longer in between."""
        delay_s = self._retry_min_s
        while True:
            try:
                await asyncio.to_thread(write)
            except ArchiveWriteError as error:
                self.write_errors_total += 1
                if self.write_failure is None:
                    self._failing_since = time.monotonic()
                    logger.error(
                        "%s; ingest paused (nothing more is acknowledged), retrying",
                        error,
                        extra={"path": str(error.path), "reason": "archive_write_failed"},
                    )
                self.write_failure = error
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, self._retry_max_s)
                continue
            if self.write_failure is not None:
                logger.warning(
                    "archive writes to %s succeed again after %.1f s; ingest resumed",
                    self.write_failure.path,
                    time.monotonic() - self._failing_since,
                    extra={"path": str(self.write_failure.path)},
                )
                self.write_failure = None
            return

    def _check_and_frame(self, batch: Sequence[Delivery]) -> list[Frame]:
        frames: list[Frame] = []
        for delivery in batch:
            arrival = check_payload(
                delivery.topic,
                delivery.payload,
                delivery.received_at,
                max_payload_bytes=self._max_payload_bytes,
                vehicles=self._vehicles,
                max_clock_skew_s=self._max_clock_skew_s,
                after_takeover=delivery.after_takeover,
            )
            record = ArchiveRecord(
                topic=delivery.topic,
                received_at=delivery.received_at,
                payload=delivery.payload,
                valid=isinstance(arrival.envelope, Envelope),
                after_takeover=delivery.after_takeover,
            )
            frames.append(frame_record(record))
            self._log_invalid(arrival)
        return frames
