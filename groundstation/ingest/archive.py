"""The raw archive: every payload received, append-only, in arrival order (ICD section 6).

A directory of segment files `segment-NNNNNNNNNN.gsa`, rotated by size. Each starts with a
magic line naming the format version; then records. A record (version 2) is a 16-byte
header `>4sIII` (record magic, body length, CRC-32 of the body, CRC-32 of the header's
first 12 bytes) followed by the body `>dBH` (receive time, flags, topic length), the topic
(UTF-8) and the payload. Flag bit 0 marks a valid envelope; bit 1 the first record
received after a session takeover (sequence accounting counts the gap before it as taken
over by another client, not lost).

The header can be checked on its own, so one damaged record does not hide the rest of its
segment: where a header is intact but its body is not, the reader steps over the body by
its length; where the header itself is damaged (or the segment's magic line is), it scans
forward for the next intact header. Every stretch it could not read counts as one damaged
record, with its bytes (`ReadStats`). A writer never appends to an existing segment, so a
record torn by a kill -9 can only be the last one of a segment. Segments of version 1
(an 8-byte `>II` prefix: body length, body CRC) are still read; there a damaged record
ends what can be read of its segment, since nothing marks where the next one starts.
"""

from __future__ import annotations

import contextlib
import fcntl
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

# zlib's CRC-32, computed with ISA-L's carry-less multiply: 42 GB/s against zlib's 3.4 GB/s
# (measured: 20 of the parent's ~230 us per 65 KiB message). Same polynomial, same values.
from isal.isal_zlib import crc32

from groundstation.config import ArchiveConfig
from groundstation.errors import ArchiveInUseError, ArchiveWriteError

logger = logging.getLogger(__name__)

MAGIC: Final = b"GSARCH2\n"
MAGIC_V1: Final = b"GSARCH1\n"
SEGMENT_PATTERN: Final = re.compile(r"segment-(\d{10})\.gsa")
LOCK_NAME: Final = "groundstation.lock"
RECORD_MAGIC: Final = b"\xa7GSR"
_HEADER: Final = struct.Struct(">4sIII")  # record magic, body length, body CRC, header CRC
_HEADER_CHECKED: Final = struct.Struct(">4sII")  # the part the header CRC covers
_PREFIX_V1: Final = struct.Struct(">II")  # body length, CRC-32 of the body
_BODY_HEADER: Final = struct.Struct(">dBH")  # receive time, flags, topic length
FLAG_VALID: Final = 0x01
FLAG_AFTER_TAKEOVER: Final = 0x02
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
    after_takeover: bool = False  # the first received after another client had our session


Frame = tuple[bytes, bytes]
"""A record ready to write: its framing, then its payload (not copied)."""


def encode_record(record: ArchiveRecord) -> bytes:
    """The bytes of one record on disk."""
    return b"".join(frame_record(record))


def frame_record(record: ArchiveRecord) -> Frame:
    """A record as (framing, payload): the payload is not copied, its CRC runs on in place."""
    topic = record.topic.encode("utf-8", errors="surrogateescape")[:MAX_TOPIC_BYTES]
    flags = (FLAG_VALID if record.valid else 0) | (
        FLAG_AFTER_TAKEOVER if record.after_takeover else 0
    )
    head = _BODY_HEADER.pack(record.received_at, flags, len(topic)) + topic
    checked = _HEADER_CHECKED.pack(
        RECORD_MAGIC, len(head) + len(record.payload), crc32(record.payload, crc32(head))
    )
    return checked + crc32(checked).to_bytes(4, "big") + head, record.payload


def framed_size(record: ArchiveRecord) -> int:
    """The bytes `record` takes on disk (for progress over an archive's bytes)."""
    topic = record.topic.encode("utf-8", errors="surrogateescape")[:MAX_TOPIC_BYTES]
    return _HEADER.size + _BODY_HEADER.size + len(topic) + len(record.payload)


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


@contextlib.contextmanager
def directory_lock(directory: Path) -> Iterator[None]:
    """Hold the archive directory for this process, or raise ArchiveInUseError.

    Two daemons on one directory would each start segments there and both ingest. The lock
    is `flock` on `groundstation.lock` in the directory: the kernel releases it when the
    holder exits, however it exits (kill -9 included), so it never goes stale. The file
    stays; it holds the pid of the last holder, for the message. Readers (replay) take no
    lock: segments are append-only and never reopened.
    """
    directory.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(descriptor, 32, 0).decode("ascii", errors="replace").strip()
            raise ArchiveInUseError(
                f"archive directory {directory} is in use by another groundstation daemon"
                f" (pid {holder or 'unknown'}); refusing to start"
            ) from None
        with contextlib.suppress(OSError):  # only for the message; a full disk refuses it
            os.ftruncate(descriptor, 0)
            os.pwrite(descriptor, f"{os.getpid()}\n".encode("ascii"), 0)
        yield
    finally:
        os.close(descriptor)  # releases the lock


class ArchiveWriter:
    """Appends batches of records to the newest segment; one owner, calls serialised.

    A batch is all or nothing: it goes into one segment (the segment ends before a batch
    that would take it past `segment_max_bytes`, so only a batch larger than that makes a
    bigger one), and when a write or its sync fails (a full file system), the segment is
    cut back to where the batch began and `ArchiveWriteError` names the path. The caller
    retries the same batch later; nothing of it is acknowledged meanwhile. A segment that
    cannot be started with its first batch is removed again, so retries leave no files.
    """

    def __init__(
        self, config: ArchiveConfig, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._config = config
        self._clock = clock
        self._file: BinaryIO | None = None
        self._path: Path | None = None
        self._segment_bytes = 0
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
        """Create the directory; the first append starts a fresh segment after the existing
        ones (so a daemon started on a full file system runs, and waits to write)."""
        self._config.directory.mkdir(parents=True, exist_ok=True)
        self._last_sync = self._clock()

    def append(self, records: Sequence[ArchiveRecord]) -> None:
        """Write `records` in order, then sync as the fsync policy asks: on return they are
        in the kernel (they survive kill -9), and on disk if fsync=always."""
        self.append_frames([frame_record(record) for record in records])

    def append_frames(self, frames: Sequence[Frame]) -> None:
        """`append` of records already framed (`frame_record`): what is left is system calls,
        which a worker thread makes while the event loop's thread goes on (GIL released).

        Raises ArchiveWriteError with nothing of the batch left in the archive."""
        if not frames:
            return
        parts = [part for frame in frames for part in frame]
        size = sum(len(part) for part in parts)
        with self._lock:
            if (
                self._file is not None
                and self._segment_bytes + size > self._config.segment_max_bytes
            ):
                self._end_segment()
            if self._file is None:
                self._start_segment(parts)
            else:
                start = self._segment_bytes
                try:
                    _write_all(self._file.fileno(), parts)
                    self._segment_bytes += size
                    self._unsynced = True
                    self._sync_per_policy()
                except OSError as error:
                    failure = self._write_error(error)
                    self._cut_back(start)
                    raise failure from error
            self.bytes_written += size
            self.records_written += len(frames)

    @property
    def end(self) -> LogPosition | None:
        """Where the archive ends after the last append (None before the first): what the
        consumers may read up to."""
        if self._path is None or self._file is None:
            return None
        return LogPosition(self._path.name, self._segment_bytes)

    def sync_if_due(self) -> None:
        """For fsync=interval: called when idle, so the last batch does not stay unsynced."""
        if self._config.fsync == "interval":
            with self._lock:
                try:
                    self._sync_per_policy()
                except OSError as error:
                    raise self._write_error(error) from error

    def close(self) -> None:
        """Flush to disk and close; always fsyncs, whatever the policy. A failing sync is
        logged, not raised: the process is ending, and the page cache still holds the data."""
        with self._lock:
            try:
                self._end_segment()
            except ArchiveWriteError as error:
                logger.error(
                    "%s; closing the archive anyway", error, extra={"path": str(error.path)}
                )

    def _end_segment(self) -> None:
        try:
            self._close()
        except OSError as error:
            raise self._write_error(error) from error

    def _write_error(self, error: OSError) -> ArchiveWriteError:
        """`error` on the current segment (the directory before the first one)."""
        return ArchiveWriteError(self._path or self._config.directory, error)

    def _close(self) -> None:
        if self._file is None:
            return
        try:
            self._sync()
        finally:
            self._file.close()
            self._file = None

    def _cut_back(self, start: int) -> None:
        """Remove a failed batch's bytes; if even that fails, leave the segment (its torn
        tail is skipped and counted by the reader) and start the next batch in a new one."""
        assert self._file is not None
        try:
            os.ftruncate(self._file.fileno(), start)
            os.lseek(self._file.fileno(), start, os.SEEK_SET)  # else the next write leaves a hole
            self._segment_bytes = start
        except OSError:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None

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

    def _start_segment(self, first_batch: list[bytes]) -> None:
        """A new segment after every existing one, made with its first batch: the magic
        line, the batch and the directory entry on disk (whatever the fsync policy: once
        per segment). On failure the file is removed again, so a segment never exists
        without a record, however often a full disk makes the daemon retry or restart."""
        directory = self._config.directory
        existing = list_segments(directory)
        index = _segment_index(existing[-1]) + 1 if existing else 1
        path = directory / segment_name(index)
        try:
            # Unbuffered: each batch is one write() into the kernel, so a kill -9 of the
            # daemon loses nothing that append() returned for.
            file = path.open("xb", buffering=0)
        except OSError as error:
            raise ArchiveWriteError(path, error) from error
        try:
            _write_all(file.fileno(), [MAGIC, *first_batch])
            os.fdatasync(file.fileno())
            _fsync_directory(directory)
        except OSError as error:
            file.close()
            with contextlib.suppress(OSError):
                path.unlink()
            raise ArchiveWriteError(path, error) from error
        self._file, self._path = file, path
        self._segment_bytes = len(MAGIC) + sum(len(part) for part in first_batch)
        self._unsynced = False
        self._last_sync = self._clock()
        logger.info("archive segment opened", extra={"path": str(path)})


def _drop_from_page_cache(descriptor: int, offset: int, length: int) -> None:
    """Pages the decoding consumer has read are read again only by a replay, a lagging
    history writer or a restart's resume scan: drop them from the page cache, so the
    archive does not fill memory with write-once data and the next writes reuse the pages
    just freed (docs/decisions.md, "Daemon"). Only a hint: dirty pages (fsync `interval`
    or `never`) stay until written back, and where a file system refuses it, nothing is lost."""
    if _FADVISE:
        with contextlib.suppress(OSError):
            os.posix_fadvise(descriptor, offset, length, os.POSIX_FADV_DONTNEED)


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


def write_atomically(path: Path, data: bytes) -> None:
    """A small file beside the segments (a consumer's position): write to a temporary,
    fsync, rename, fsync the directory, so a crash leaves the old file or the new, whole."""
    temporary = path.with_suffix(".tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        try:
            os.write(descriptor, data)
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        os.replace(temporary, path)
    except OSError:
        with contextlib.suppress(OSError):  # a full file system: leave no stray file
            temporary.unlink()
        raise
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    """Make a new segment's directory entry durable (POSIX needs the directory synced too)."""
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


@dataclass
class ReadStats:
    """What the reader found besides good records: damaged stretches, foreign segments."""

    records: int = 0
    segments: int = 0
    # Each stretch of a segment that could not be read counts once: a record whose header
    # is intact but whose body is not, or the bytes from a damaged header to the next
    # intact one (at least one record, maybe more whose headers were damaged too). A record
    # torn by a crash, the last of its segment, counts here too.
    damaged_records: int = 0
    damaged_bytes: int = 0  # in damaged records and in segments without any record
    bad_segments: int = 0  # not an archive segment: no magic line and no intact record


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

    def segment_records(self, path: Path) -> Iterator[ArchiveRecord]:
        """The records of one segment (a path from `list_segments`), in order."""
        return self._read_segment(path)

    def _read_segment(self, path: Path) -> Iterator[ArchiveRecord]:
        data = path.read_bytes()
        self.stats.segments += 1
        damage = _Damage()
        if data.startswith(MAGIC_V1):
            records = _read_v1(data, damage)
        else:
            # A damaged magic line hides nothing either: the records after it are found by
            # their headers. A file with none of them is not a segment of ours.
            start = len(MAGIC) if data.startswith(MAGIC) else 0
            records = _read_v2(data, start, damage)
        found = 0
        for record in records:
            found += 1
            yield record
        self.stats.records += found
        if found == 0 and not data.startswith((MAGIC, MAGIC_V1)):
            self.stats.bad_segments += 1
            self.stats.damaged_bytes += len(data)
            logger.warning("archive segment without magic skipped", extra={"path": str(path)})
            return
        if damage.records or damage.bytes:
            self.stats.damaged_records += damage.records
            self.stats.damaged_bytes += damage.bytes
            logger.warning(
                "archive segment %s damaged: %d records (%d bytes) skipped, first at byte %d",
                path,
                damage.records,
                damage.bytes,
                damage.first_offset,
                extra={"path": str(path)},
            )


@dataclass(frozen=True, slots=True, order=True)
class LogPosition:
    """A place in the archive: a segment's file name (the names sort in arrival order) and
    the byte offset of the next record in it; offset 0 is the segment's start."""

    segment: str
    offset: int


ARCHIVE_START: Final = LogPosition("", 0)  # before the first segment, whatever its name


class LogCursor:
    """Reads the archive forward from a position, a bounded chunk at a time: how a consumer
    follows the log while the daemon appends to it.

    It reads only up to an end it is given (`ArchiveWriter.end`, or a segment's size for
    one the writer has left), so it never sees a batch half written. Damage is stepped over
    and counted in `stats`, as `ArchiveReader` does; a damaged stretch that crosses the end
    of a chunk counts once per chunk. With `drop_read_pages`, the pages it has read are
    dropped from the page cache (`_drop_from_page_cache`).
    """

    def __init__(
        self,
        directory: Path,
        position: LogPosition,
        *,
        chunk_bytes: int,
        drop_read_pages: bool = False,
    ) -> None:
        self.directory = directory
        self.position = position
        self.stats = ReadStats()
        self._chunk_bytes = chunk_bytes
        self._drop_read_pages = drop_read_pages

    def read(self, until: LogPosition) -> list[ArchiveRecord]:
        """The next whole records before `until`, about `chunk_bytes` of them (at least one
        record, whatever its size); [] once the cursor has reached `until`."""
        while self.position < until:
            if self.position == ARCHIVE_START and not self._next_segment(until):
                return []
            path = self.directory / self.position.segment
            try:
                file = path.open("rb", buffering=0)
            except FileNotFoundError:  # removed by an operator: go on with the next one
                if not self._next_segment(until):
                    return []
                continue
            with file:
                size = os.fstat(file.fileno()).st_size
                end = min(until.offset, size) if self.position.segment == until.segment else size
                if self.position.offset < end:
                    records = self._read_chunk(file.fileno(), end)
                    if records:
                        return records
                    continue  # damage only: read on
            if self.position.segment == until.segment or not self._next_segment(until):
                return []
        return []

    def _read_chunk(self, descriptor: int, end: int) -> list[ArchiveRecord]:
        offset = self.position.offset
        if offset == 0:
            head = os.pread(descriptor, len(MAGIC), 0)
            if head == MAGIC_V1:
                return self._read_v1_segment(descriptor, end)
            self.stats.segments += 1
            if head == MAGIC:
                offset = len(MAGIC)
        wanted = self._chunk_bytes
        while True:
            size = min(wanted, end - offset)
            data = os.pread(descriptor, size, offset)
            cut = offset + len(data) < end
            damage = _Damage()
            records = list(_read_v2(data, 0, damage, base=offset, cut=cut))
            if records or damage.stopped_at > offset or not cut:
                break
            # One record larger than a chunk: read it whole.
            length = _header_length(memoryview(data), 0)
            wanted = _HEADER.size + length if length is not None else 2 * wanted
        self._count(damage, records)
        if self._drop_read_pages:
            # From the segment start: a large folio that straddles the start of this chunk
            # is dropped only by a range that holds all of it.
            _drop_from_page_cache(descriptor, 0, damage.stopped_at)
        self.position = LogPosition(self.position.segment, damage.stopped_at)
        return records

    def _read_v1_segment(self, descriptor: int, end: int) -> list[ArchiveRecord]:
        """A version-1 segment (only in archives older than the cursor): read whole."""
        data = os.pread(descriptor, end, 0)
        damage = _Damage()
        records = list(_read_v1(data, damage))
        self.stats.segments += 1
        self._count(damage, records)
        self.position = LogPosition(self.position.segment, end)
        return records

    def _count(self, damage: _Damage, records: list[ArchiveRecord]) -> None:
        self.stats.records += len(records)
        if damage.records or damage.bytes:
            self.stats.damaged_records += damage.records
            self.stats.damaged_bytes += damage.bytes
            logger.warning(
                "archive segment %s damaged: %d records (%d bytes) skipped, first at byte %d",
                self.directory / self.position.segment,
                damage.records,
                damage.bytes,
                damage.first_offset,
                extra={"path": str(self.directory / self.position.segment)},
            )

    def _next_segment(self, until: LogPosition) -> bool:
        """Move to the start of the segment after the cursor's; False if there is none
        before `until` yet."""
        later = [
            path.name
            for path in list_segments(self.directory)
            if self.position.segment < path.name <= until.segment
        ]
        if not later:
            return False
        self.position = LogPosition(later[0], 0)
        return True


def archive_end(directory: Path) -> LogPosition:
    """Where the archive ends now: the newest segment's size (ARCHIVE_START without one)."""
    segments = list_segments(directory)
    if not segments:
        return ARCHIVE_START
    return LogPosition(segments[-1].name, segments[-1].stat().st_size)


def tail_start(directory: Path, before: LogPosition, tail_bytes: int) -> LogPosition:
    """The start of the newest segments up to `before` that hold at least `tail_bytes`."""
    segments = [path for path in list_segments(directory) if path.name <= before.segment]
    chosen = _newest_segments(segments, tail_bytes) if tail_bytes > 0 else []
    return LogPosition(chosen[0].name, 0) if chosen else before


@dataclass
class _Damage:
    """What one segment's reading skipped, and where it stopped (`_read_v2` with `cut`)."""

    records: int = 0
    bytes: int = 0
    first_offset: int = -1
    stopped_at: int = 0

    def add(self, start: int, end: int, *, records: int = 1) -> None:
        if self.first_offset < 0:
            self.first_offset = start
        self.records += records
        self.bytes += end - start


def _read_v2(
    data: bytes, start: int, damage: _Damage, *, base: int = 0, cut: bool = False
) -> Iterator[ArchiveRecord]:
    """Records from `start`, resynchronising on the next intact header after damage.

    `data` is the segment from byte `base` on (damage is reported at segment offsets). With
    `cut`, it ends before its segment does: a record running past its end is left for the
    next read, and `damage.stopped_at` says where that read starts."""
    view = memoryview(data)
    end = len(data)
    offset = start
    if start == 0 and base == 0:
        # The magic line is damaged: what precedes the first intact header is lost, and
        # holds a record too if it is longer than the magic line.
        offset = _next_header(data, view, 0)
        damage.add(0, offset, records=1 if offset > len(MAGIC) else 0)
    # Where a header may begin and still be read whole: with `cut`, not in the last bytes.
    limit = end - _HEADER.size + 1 if cut else end
    while offset < end:
        if offset >= limit:
            break
        length = _header_length(view, offset)
        if length is None:
            resumed = min(_next_header(data, view, offset + 1), max(limit, offset + 1))
            damage.add(base + offset, base + resumed)
            offset = resumed
            continue
        body_end = offset + _HEADER.size + length
        if cut and body_end > end:
            break
        record = _decode_body(view, offset, length) if body_end <= end else None
        if record is None:
            # The header is intact, so its length can be trusted, unless the record was
            # cut short or what follows is not a header (then search from here).
            follows_header = body_end >= limit or _header_length(view, body_end) is not None
            if body_end > end or (body_end < end and not follows_header):
                body_end = _next_header(data, view, offset + 1)
            damage.add(base + offset, base + body_end)
        else:
            yield record
        offset = body_end
    damage.stopped_at = base + offset


def _header_length(view: memoryview, offset: int) -> int | None:
    """The body length of an intact record header at `offset`, else None."""
    if len(view) - offset < _HEADER.size:
        return None
    magic, length, _, header_crc = _HEADER.unpack_from(view, offset)
    if magic != RECORD_MAGIC or crc32(view[offset : offset + _HEADER_CHECKED.size]) != header_crc:
        return None
    if length < _BODY_HEADER.size or length > MAX_RECORD_BYTES:
        return None
    return int(length)


def _next_header(data: bytes, view: memoryview, offset: int) -> int:
    """Where the next intact header at or after `offset` starts, or the end of the data."""
    while (found := data.find(RECORD_MAGIC, offset)) >= 0:
        if _header_length(view, found) is not None:
            return found
        offset = found + 1
    return len(data)


def _decode_body(view: memoryview, offset: int, length: int) -> ArchiveRecord | None:
    """The record whose intact header is at `offset`, or None if its body fails its CRC."""
    start = offset + _HEADER.size
    body = view[start : start + length]
    if crc32(body) != _HEADER.unpack_from(view, offset)[2]:
        return None
    return _record_of(body)


def _read_v1(data: bytes, damage: _Damage) -> Iterator[ArchiveRecord]:
    """A version-1 segment: a damaged record ends what can be read of it."""
    view = memoryview(data)
    offset = len(MAGIC_V1)
    while offset < len(data):
        record, size = _decode_v1_at(view, offset)
        if record is None:
            damage.add(offset, len(data))
            return
        offset += size
        yield record


def _decode_v1_at(view: memoryview, offset: int) -> tuple[ArchiveRecord | None, int]:
    if len(view) - offset < _PREFIX_V1.size:
        return None, 0
    body_length, crc = _PREFIX_V1.unpack_from(view, offset)
    start = offset + _PREFIX_V1.size
    if not _BODY_HEADER.size <= body_length <= MAX_RECORD_BYTES:
        return None, 0
    if start + body_length > len(view):
        return None, 0
    body = view[start : start + body_length]
    if crc32(body) != crc:
        return None, 0
    return _record_of(body), _PREFIX_V1.size + body_length


def _record_of(body: memoryview) -> ArchiveRecord | None:
    """A record from a body whose CRC matched; None if its topic length runs past it."""
    received_at, flags, topic_length = _BODY_HEADER.unpack_from(body, 0)
    topic_end = _BODY_HEADER.size + topic_length
    if topic_end > len(body):
        return None
    topic = bytes(body[_BODY_HEADER.size : topic_end]).decode("utf-8", errors="surrogateescape")
    return ArchiveRecord(
        topic=topic,
        received_at=received_at,
        payload=bytes(body[topic_end:]),
        valid=bool(flags & FLAG_VALID),
        after_takeover=bool(flags & FLAG_AFTER_TAKEOVER),
    )


def _newest_segments(segments: list[Path], tail_bytes: int) -> list[Path]:
    chosen: list[Path] = []
    total = 0
    for path in reversed(segments):
        if total >= tail_bytes:
            break
        chosen.append(path)
        total += path.stat().st_size
    return chosen[::-1]
