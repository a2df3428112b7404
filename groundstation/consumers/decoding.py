"""The decoding consumer: reads the archive from its durable position, decodes, keeps telemetry.

Ingest only archives and acknowledges; this consumer follows the archive as a log. The
parent tells it how far the archive reaches (`ArchiveWriter.end`) and it reads the new
records itself, from the page cache they were just written to, then drops those pages.
It runs in a child process (`DecodingProcess`) so that decoding, numpy work with many
short Python steps between, has a core of its own instead of fighting the event loop for
the GIL; what crosses the boundary is a position one way and a snapshot the other.

Its position (`decode-position.json` beside the segments) is saved at most every
`POSITION_SAVE_INTERVAL_S` and on shutdown. After a restart it resumes there: what was
archived but not yet decoded when the daemon stopped (a kill -9, a drain that ran out of
time) is decoded then. Before that, the archive's tail up to the position goes through
fresh decoders without counting anything, so that packets the broker redelivers (archived,
the ack lost) count as `duplicate`, as `groundstation replay` counts the second copy. A
position older than the truth is harmless: the records after it are counted once, by the
new process, whose counters start at zero. Without a position (a new archive directory)
the consumer starts at the archive's end.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import multiprocessing
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TypeVar

from groundstation.consumers.pipeline import Pipeline, archived_batches, resume_sequences
from groundstation.consumers.telemetry import Telemetry, TelemetrySnapshot
from groundstation.core.compiled import compile_all
from groundstation.core.decoder import PacketDecoder
from groundstation.core.definitions import VehicleDictionary, load_dictionaries
from groundstation.ingest.archive import (
    ARCHIVE_START,
    ArchiveRecord,
    LogCursor,
    LogPosition,
    archive_end,
    tail_start,
    write_atomically,
)
from groundstation.service.child_process import start_as_child

logger = logging.getLogger(__name__)
_R = TypeVar("_R")

POSITION_FILE: Final = "decode-position.json"
POSITION_SAVE_INTERVAL_S: Final = 1.0  # a kill -9 re-decodes at most this much, harmlessly
# Room for one largest record beside a batch's worth: a chunk always holds a whole record.
_RECORD_OVERHEAD_BYTES: Final = 64 * 1024


def load_position(directory: Path) -> LogPosition | None:
    path = directory / POSITION_FILE
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        return LogPosition(segment=str(document["segment"]), offset=int(document["offset"]))
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as error:
        logger.warning(
            "decode position %s unreadable (%s); starting at the archive's end", path, error
        )
        return None


def save_position(directory: Path, position: LogPosition) -> None:
    document = {"segment": position.segment, "offset": position.offset}
    write_atomically(directory / POSITION_FILE, json.dumps(document).encode())


@dataclass(frozen=True, slots=True)
class DecodeSettings:
    """What the decoding consumer needs to start (one frozen value for the child)."""

    archive_dir: Path
    resume_tail_bytes: int
    max_payload_bytes: int
    max_clock_skew_s: float
    batch_max_envelopes: int
    batch_max_bytes: int


@dataclass(frozen=True, slots=True)
class ResumeScan:
    """What the start-up read of the archive found: envelopes fed to the decoders from the
    tail before the position, damage skipped, and records after it still to decode."""

    envelopes: int
    damaged_records: int
    damaged_bytes: int
    end: LogPosition = ARCHIVE_START  # the archive's end when the consumer started
    backlog_records: int = 0  # from the position to `end`


@dataclass(frozen=True, slots=True)
class Progress:
    """Where the consumer stands after a read: sent back to the parent."""

    snapshot: TelemetrySnapshot
    position: LogPosition
    records_read: int  # since it started, the backlog included
    damaged_records: int  # in the resume scan and everything read since
    damaged_bytes: int


class DecodeConsumer:
    """Archive -> validate again -> decode -> telemetry, from a position; one thread."""

    def __init__(
        self, settings: DecodeSettings, dictionaries: Mapping[str, VehicleDictionary]
    ) -> None:
        self._settings = settings
        directory = settings.archive_dir
        # Lazy: telemetry reads a few fields of a few rows (the newest second of IMU
        # samples, the newest packet of each APID), not every calibrated sample.
        decoders = {
            vehicle: PacketDecoder(d, calibrate="lazy", max_clock_skew_s=settings.max_clock_skew_s)
            for vehicle, d in dictionaries.items()
        }
        self.pipeline = Pipeline(
            dictionaries,
            telemetry=Telemetry(dictionaries),
            decoders=decoders,
            max_clock_skew_s=settings.max_clock_skew_s,
        )
        chunk_bytes = (
            max(settings.batch_max_bytes, settings.max_payload_bytes) + _RECORD_OVERHEAD_BYTES
        )
        end = archive_end(directory)
        saved = load_position(directory)
        start = end if saved is None else saved
        tail = LogCursor(
            directory,
            tail_start(directory, start, settings.resume_tail_bytes),
            chunk_bytes=chunk_bytes,
            drop_read_pages=True,
        )
        envelopes = resume_sequences(
            decoders,
            _all_records(tail, start),
            max_payload_bytes=settings.max_payload_bytes,
            batch_size=settings.batch_max_envelopes,
            max_clock_skew_s=settings.max_clock_skew_s,
        )
        self.cursor = LogCursor(directory, start, chunk_bytes=chunk_bytes, drop_read_pages=True)
        self.cursor.stats.damaged_records = tail.stats.damaged_records
        self.cursor.stats.damaged_bytes = tail.stats.damaged_bytes
        counting = LogCursor(directory, start, chunk_bytes=chunk_bytes)
        self.resumed = ResumeScan(
            envelopes=envelopes,
            damaged_records=tail.stats.damaged_records,
            damaged_bytes=tail.stats.damaged_bytes,
            end=end,
            backlog_records=sum(1 for _ in _all_records(counting, end)),
        )
        self.records_read = 0
        self._saved_at = time.monotonic()
        self.save()  # where it starts, so a kill -9 within the first second loses no place

    def advance(self, until: LogPosition) -> Progress:
        """Decode the next chunk of records before `until` (none if there is none)."""
        records = self.cursor.read(until)
        for batch in archived_batches(
            records,
            max_payload_bytes=self._settings.max_payload_bytes,
            vehicles=self.pipeline.decoders,
            batch_size=self._settings.batch_max_envelopes,
            batch_max_bytes=self._settings.batch_max_bytes,
            max_clock_skew_s=self._settings.max_clock_skew_s,
        ):
            self.pipeline.process(batch)
        self.records_read += len(records)
        if time.monotonic() - self._saved_at >= POSITION_SAVE_INTERVAL_S:
            self.save()
        return self.progress()

    def save(self) -> None:
        """Save the position; a full file system leaves the older one, which is harmless."""
        self._saved_at = time.monotonic()
        try:
            save_position(self._settings.archive_dir, self.cursor.position)
        except OSError as error:
            logger.warning(
                "decode position not saved in %s (%s); a restart re-decodes from the older one",
                self._settings.archive_dir,
                error.strerror or error,
            )

    def progress(self) -> Progress:
        stats = self.cursor.stats
        return Progress(
            snapshot=self.pipeline.telemetry.snapshot(),
            position=self.cursor.position,
            records_read=self.records_read,
            damaged_records=stats.damaged_records,
            damaged_bytes=stats.damaged_bytes,
        )


def _all_records(cursor: LogCursor, until: LogPosition) -> Iterator[ArchiveRecord]:
    while records := cursor.read(until):
        yield from records


class DecodingProcess:
    """The DecodeConsumer in a child process; the parent's handle on it.

    One worker: calls are applied in the order they are made. Each carries a position and
    returns a `Progress` of a few kB.
    """

    def __init__(self, settings: DecodeSettings) -> None:
        self._settings = settings
        self._pool: ProcessPoolExecutor | None = None

    async def start(self) -> ResumeScan:
        """Spawn the child; returns once it has read the archive's tail and found its place.
        Before the archive writer starts a new segment: the child reads the tail."""
        # spawn, not fork: the parent has threads (HTTP server, executor) by now.
        self._pool = ProcessPoolExecutor(
            max_workers=1,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_child_start,
            initargs=(self._settings,),
        )
        return await self._call(_child_resumed)

    async def advance(self, until: LogPosition) -> Progress:
        return await self._call(_child_advance, until)

    async def save(self) -> Progress:
        """Save the consumer's position now (on shutdown)."""
        return await self._call(_child_save)

    def close(self) -> None:
        """Wait for the call in progress (bounded by the drain timeout's caller), then stop."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    async def _call(self, function: Callable[..., _R], *args: object) -> _R:
        if self._pool is None:
            raise RuntimeError("decoding process not started")
        return await asyncio.get_running_loop().run_in_executor(self._pool, function, *args)


_consumer: DecodeConsumer | None = None


def _child_start(settings: DecodeSettings) -> None:
    global _consumer  # noqa: PLW0603 - one consumer per child process
    start_as_child()  # the parent stops it once it has drained
    compile_all()  # before the first batch, which would otherwise wait for it
    # What loading numba made (~100,000 objects) lives as long as the process: out of
    # every later collection, and out of the teardown, which otherwise takes half a
    # second at exit, and so at every stop of the daemon.
    gc.freeze()
    _consumer = DecodeConsumer(settings, load_dictionaries())


def _started() -> DecodeConsumer:
    if _consumer is None:
        raise RuntimeError("decoding child not initialised")
    return _consumer


def _child_resumed() -> ResumeScan:
    return _started().resumed


def _child_advance(until: LogPosition) -> Progress:
    return _started().advance(until)


def _child_save() -> Progress:
    consumer = _started()
    consumer.save()
    return consumer.progress()


class DecodeFollower:
    """The parent's side: keeps the consumer reading up to where the archive ends, and
    holds the newest snapshot for /metrics.

    `archived` is called after each batch is in the archive (by the sink, on the event
    loop); it only moves a target, so ingest never waits for decoding. While the decoder
    is behind, the backlog is in the archive, not in memory: `backlog` says how many
    envelopes (gs_ingest_queue_depth).
    """

    def __init__(self, process: DecodingProcess, *, initial: TelemetrySnapshot) -> None:
        self._process = process
        self.latest_snapshot = initial  # swapped whole; the collector reads it
        self.resumed = ResumeScan(envelopes=0, damaged_records=0, damaged_bytes=0)
        self._until: LogPosition = ARCHIVE_START
        self._reached: LogPosition = ARCHIVE_START
        self.archived_records = 0  # archived since start
        self.records_read = 0  # read by the consumer since start, the start-up backlog included
        self.damaged_records = 0
        self.damaged_bytes = 0
        self._wake = asyncio.Event()
        self.progress = asyncio.Condition()  # notified after each read; tests wait on it

    async def start(self) -> ResumeScan:
        """Start the consumer; the backlog up to the archive's end at start is read first."""
        self.resumed = resumed = await self._process.start()
        self._until = resumed.end
        self.damaged_records = resumed.damaged_records
        self.damaged_bytes = resumed.damaged_bytes
        self._wake.set()
        return resumed

    def close(self) -> None:
        self._process.close()

    @property
    def envelopes_decoded(self) -> int:
        """Envelopes archived since start and decoded (the start-up backlog not counted)."""
        return max(0, self.records_read - self.resumed.backlog_records)

    @property
    def backlog(self) -> int:
        """Archived envelopes the consumer has not yet read."""
        return max(0, self.resumed.backlog_records + self.archived_records - self.records_read)

    def archived(self, end: LogPosition | None, records: int) -> None:
        if end is not None:
            self._until = max(self._until, end)
        self.archived_records += records
        self._wake.set()

    async def run(self) -> None:
        """Follow the archive until cancelled."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self.catch_up()

    async def catch_up(self) -> None:
        """Read until the consumer has reached the target as it is now."""
        until = self._until
        while self._reached < until:
            before = self._reached
            await self._note(await self._process.advance(until))
            if self._reached == before:
                break  # nothing readable up to there (a segment removed): wait for more

    async def save(self) -> None:
        await self._note(await self._process.save())

    async def _note(self, progress: Progress) -> None:
        self._reached = progress.position
        self.latest_snapshot = progress.snapshot
        self.damaged_records = progress.damaged_records
        self.damaged_bytes = progress.damaged_bytes
        async with self.progress:
            self.records_read = progress.records_read
            self.progress.notify_all()
