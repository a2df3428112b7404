"""The raw archive: every payload received, append-only, in arrival order (ICD section 6).

A directory of segment files `segment-NNNNNNNNNN.gsa`, rotated by size. Each starts with a
magic line; then records, each `>II` (body length, CRC-32 of the body) followed by the body
`>dBH` (receive time, flags, topic length), the topic (UTF-8) and the payload. Flag bit 0
marks a valid envelope. A writer never appends to an existing segment, so after a kill -9
a torn record can only be the last one of a segment; the reader detects it by length or
CRC, skips the rest of that segment and counts it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final

# zlib's CRC-32, computed with ISA-L's carry-less multiply: 42 GB/s against zlib's 3.4 on
# this machine (20 of the parent's ~230 us per 65 KiB message). Same polynomial, same values.
from isal.isal_zlib import crc32

from groundstation.config import ArchiveConfig

logger = logging.getLogger(__name__)

MAGIC: Final = b"GSARCH1\n"
SEGMENT_PATTERN: Final = re.compile(r"segment-(\d{10})\.gsa")
_PREFIX: Final = struct.Struct(">II")  # body length, CRC-32 of the body
_BODY_HEADER: Final = struct.Struct(">dBH")  # receive time, flags, topic length
FLAG_VALID: Final = 0x01
# Framing sanity: a length beyond this is corruption, not a record (payloads are limited
# to ingest.max_payload_bytes, 16 MiB by default, far below).
MAX_RECORD_BYTES: Final = 1 << 30
MAX_TOPIC_BYTES: Final = 0xFFFF
_IOV_MAX: Final = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 16
_FADVISE: Final = hasattr(os, "posix_fadvise")  # Linux and most Unixes; not macOS


@dataclass(frozen=True, slots=True)
class ArchiveRecord:
    """One received MQTT payload, as archived."""

    topic: str
    received_at: float  # wall clock, UTC seconds since the epoch
    payload: bytes
    valid: bool  # the envelope passed unpack_envelope when it arrived


Frame = tuple[bytes, bytes]
"""A record ready to write: its framing, then its payload (not copied)."""


def encode_record(record: ArchiveRecord) -> bytes:
    """The bytes of one record on disk."""
    return b"".join(frame_record(record))


def frame_record(record: ArchiveRecord) -> Frame:
    """A record as (framing, payload): the payload is not copied, its CRC runs on in place."""
    topic = record.topic.encode("utf-8", errors="surrogateescape")[:MAX_TOPIC_BYTES]
    head = (
        _BODY_HEADER.pack(record.received_at, FLAG_VALID if record.valid else 0, len(topic)) + topic
    )
    crc = crc32(record.payload, crc32(head))
    return _PREFIX.pack(len(head) + len(record.payload), crc) + head, record.payload


def framed_size(record: ArchiveRecord) -> int:
    """The bytes `record` takes on disk (for progress over an archive's bytes)."""
    topic = record.topic.encode("utf-8", errors="surrogateescape")[:MAX_TOPIC_BYTES]
    return _PREFIX.size + _BODY_HEADER.size + len(topic) + len(record.payload)


def segment_name(index: int) -> str:
    return f"segment-{index:010d}.gsa"


def list_segments(directory: Path) -> list[Path]:
    """Segment files in arrival order."""
    if not directory.is_dir():
        return []
    found = [entry for entry in directory.iterdir() if SEGMENT_PATTERN.fullmatch(entry.name)]
    return sorted(found, key=_segment_index)


def _segment_index(path: Path) -> int:
    return int(path.name.removeprefix("segment-").removesuffix(".gsa"))


class ArchiveWriter:
    """Appends batches of records to the newest segment; one owner, calls serialised."""

    def __init__(
        self, config: ArchiveConfig, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._config = config
        self._clock = clock
        self._file: BinaryIO | None = None
        self._segment_bytes = 0
        self._next_index = 0
        self._unsynced = False
        self._last_sync = 0.0
        # Calls come from worker threads; a shutdown that gave up waiting for an append
        # (bounded drain) must not close the file under it.
        self._lock = threading.Lock()
        self.records_written = 0
        self.bytes_written = 0

    def __enter__(self) -> ArchiveWriter:
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def open(self) -> None:
        """Create the directory and start a fresh segment after the existing ones."""
        self._config.directory.mkdir(parents=True, exist_ok=True)
        existing = list_segments(self._config.directory)
        self._next_index = _segment_index(existing[-1]) + 1 if existing else 1
        self._last_sync = self._clock()
        self._start_segment()

    def append(self, records: Sequence[ArchiveRecord]) -> None:
        """Write `records` in order, then sync as the fsync policy asks: on return they are
        in the kernel (they survive kill -9), and on disk if fsync=always."""
        self.append_frames([frame_record(record) for record in records])

    def append_frames(self, frames: Sequence[Frame]) -> None:
        """`append` of records already framed (`frame_record`): what is left is system calls,
        which a worker thread makes while the event loop's thread goes on (GIL released)."""
        with self._lock:
            self._append(frames)
            self._sync_per_policy()

    def _append(self, frames: Sequence[Frame]) -> None:
        if self._file is None:
            raise RuntimeError("archive writer is not open")
        # One gathered write per segment: the payloads are not copied into a joined chunk.
        chunk: list[bytes] = []
        chunk_bytes = 0
        for framing, payload in frames:
            size = len(framing) + len(payload)
            if self._segment_bytes + chunk_bytes + size > self._config.segment_max_bytes:
                if chunk:
                    self._write(chunk, chunk_bytes)
                    chunk, chunk_bytes = [], 0
                if self._segment_bytes > len(MAGIC):
                    self._rotate()
            chunk += (framing, payload)
            chunk_bytes += size
        if chunk:
            self._write(chunk, chunk_bytes)
        self.records_written += len(frames)

    def sync_if_due(self) -> None:
        """For fsync=interval: called when idle, so the last batch does not stay unsynced."""
        if self._config.fsync == "interval":
            with self._lock:
                self._sync_per_policy()

    def close(self) -> None:
        """Flush to disk and close; always fsyncs, whatever the policy."""
        with self._lock:
            self._close()

    def _close(self) -> None:
        if self._file is None:
            return
        self._sync()
        self._file.close()
        self._file = None

    def _write(self, parts: list[bytes], size: int) -> None:
        assert self._file is not None
        _write_all(self._file.fileno(), parts)
        self._segment_bytes += size
        self.bytes_written += size
        self._unsynced = True

    def _sync_per_policy(self) -> None:
        policy = self._config.fsync
        if policy == "always" or (
            policy == "interval"
            and self._clock() - self._last_sync >= self._config.fsync_interval_s
        ):
            self._sync()

    def _sync(self) -> None:
        if self._file is None or not self._unsynced:
            return
        descriptor = self._file.fileno()
        os.fdatasync(descriptor)
        self._unsynced = False
        self._last_sync = self._clock()
        # What is on disk is read again only by a replay or a restart's resume scan: drop
        # it from the page cache, so the archive does not fill memory with write-once data
        # and the next writes reuse the pages just freed (docs/decisions.md, "Daemon").
        # Only a hint: where a file system refuses it, the archive is just as safe.
        if _FADVISE:
            with contextlib.suppress(OSError):
                os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)

    def _rotate(self) -> None:
        self._close()
        self._start_segment()

    def _start_segment(self) -> None:
        path = self._config.directory / segment_name(self._next_index)
        self._next_index += 1
        # Unbuffered: each batch is one write() into the kernel, so a kill -9 of the daemon
        # loses nothing that append() returned for.
        self._file = path.open("xb", buffering=0)
        self._file.write(MAGIC)
        self._segment_bytes = len(MAGIC)
        self._unsynced = True
        self._sync()
        _fsync_directory(self._config.directory)
        logger.info("archive segment opened", extra={"path": str(path)})


def _write_all(descriptor: int, parts: list[bytes]) -> None:
    """`os.writev` of all parts, IOV_MAX at a time, resuming after a short write."""
    pending = [memoryview(part) for part in parts if part]
    while pending:
        group = pending[:_IOV_MAX]
        written = os.writev(descriptor, group)
        done = 0
        while done < len(group) and written >= group[done].nbytes:
            written -= group[done].nbytes
            done += 1
        pending = pending[done:]
        if written:  # a short write ended inside this part
            pending[0] = pending[0][written:]


def _fsync_directory(directory: Path) -> None:
    """Make a new segment's directory entry durable (POSIX needs the directory synced too)."""
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


@dataclass
class ReadStats:
    """What the reader found besides good records: torn or corrupt tails, bad segments."""

    records: int = 0
    segments: int = 0
    torn_records: int = 0  # a short or CRC-failing record; the rest of its segment skipped
    skipped_bytes: int = 0
    bad_segments: int = 0  # no magic: not ours, or a truncated header


class ArchiveReader:
    """Reads segments in arrival order; never raises on damaged data, counts it in `stats`."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.stats = ReadStats()

    def records(self, *, tail_bytes: int | None = None) -> Iterator[ArchiveRecord]:
        """All records, or those of the newest segments holding at least `tail_bytes`."""
        segments = list_segments(self.directory)
        if tail_bytes is not None:
            segments = _newest_segments(segments, tail_bytes)
        for path in segments:
            yield from self._read_segment(path)

    def _read_segment(self, path: Path) -> Iterator[ArchiveRecord]:
        data = path.read_bytes()
        self.stats.segments += 1
        if not data.startswith(MAGIC):
            self.stats.bad_segments += 1
            self.stats.skipped_bytes += len(data)
            logger.warning("archive segment without magic skipped", extra={"path": str(path)})
            return
        view = memoryview(data)
        offset = len(MAGIC)
        while offset < len(data):
            record, size = _decode_at(view, offset)
            if record is None:
                self.stats.torn_records += 1
                self.stats.skipped_bytes += len(data) - offset
                logger.warning(
                    "archive record torn or corrupt; rest of segment skipped",
                    extra={"path": str(path), "offset": offset, "bytes": len(data) - offset},
                )
                return
            self.stats.records += 1
            offset += size
            yield record


def _decode_at(view: memoryview, offset: int) -> tuple[ArchiveRecord | None, int]:
    end = len(view)
    if end - offset < _PREFIX.size:
        return None, 0
    body_length, crc = _PREFIX.unpack_from(view, offset)
    start = offset + _PREFIX.size
    if body_length < _BODY_HEADER.size or body_length > MAX_RECORD_BYTES:
        return None, 0
    if start + body_length > end:
        return None, 0
    body = view[start : start + body_length]
    if crc32(body) != crc:
        return None, 0
    received_at, flags, topic_length = _BODY_HEADER.unpack_from(body, 0)
    topic_end = _BODY_HEADER.size + topic_length
    if topic_end > body_length:
        return None, 0
    topic = bytes(body[_BODY_HEADER.size : topic_end]).decode("utf-8", errors="surrogateescape")
    record = ArchiveRecord(
        topic=topic,
        received_at=received_at,
        payload=bytes(body[topic_end:]),
        valid=bool(flags & FLAG_VALID),
    )
    return record, _PREFIX.size + body_length


def _newest_segments(segments: list[Path], tail_bytes: int) -> list[Path]:
    chosen: list[Path] = []
    total = 0
    for path in reversed(segments):
        if total >= tail_bytes:
            break
        chosen.append(path)
        total += path.stat().st_size
    return chosen[::-1]
