"""The archive writer on a file system that fills up: a batch is all or nothing.

Each test mounts a real tmpfs of a few hundred KiB, so writes fail with ENOSPC as they
would on a full archive disk. A failed batch must leave nothing of itself (no torn record,
no half of it in the previous segment, no empty segment file), and the same batch must go
in once space returns. The daemon's side (ingest paused, /healthz, nothing lost):
tests/test_reliability_disk.py.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from pathlib import Path

import pytest

from groundstation.config import ArchiveConfig, FsyncPolicy
from groundstation.errors import ArchiveWriteError
from groundstation.ingest.archive import (
    MAGIC,
    ArchiveReader,
    ArchiveRecord,
    ArchiveWriter,
    list_segments,
)
from tests.services import fill_file_system, small_file_system

FILE_SYSTEM_BYTES = 512 * 1024
SEGMENT_MAX_BYTES = 64 * 1024  # the smallest the configuration allows


def record(index: int, *, size: int = 3000) -> ArchiveRecord:
    return ArchiveRecord(
        topic="mars/tm/ingenuity",
        received_at=1.7e9 + index,
        payload=bytes([index % 256]) * size,
        valid=True,
    )


@pytest.fixture
def small_archive(tmp_path: Path) -> Iterator[Path]:
    with small_file_system(tmp_path / "fs", size_bytes=FILE_SYSTEM_BYTES) as mounted:
        yield mounted


def read_back(directory: Path) -> tuple[list[ArchiveRecord], int]:
    reader = ArchiveReader(directory)
    return list(reader.records()), reader.stats.damaged_records


@pytest.mark.parametrize("fsync", ["always", "never"])
def test_a_batch_that_does_not_fit_leaves_nothing_and_goes_in_later(
    small_archive: Path, fsync: FsyncPolicy
) -> None:
    """1. fill the file system but for ~40 KiB; 2. append batches of 4 records (12 KiB)
    until one fails; 3. it names the segment and ENOSPC, and the archive holds exactly the
    batches that returned, none torn; 4. free the space, append the failed batch again:
    every record is there once, in order."""
    filler = fill_file_system(small_archive, leave_bytes=40 * 1024)
    config = ArchiveConfig(
        directory=small_archive, segment_max_bytes=SEGMENT_MAX_BYTES, fsync=fsync
    )
    written: list[ArchiveRecord] = []
    with ArchiveWriter(config) as writer:
        failure: ArchiveWriteError | None = None
        for start in range(0, 400, 4):
            batch = [record(i) for i in range(start, start + 4)]
            try:
                writer.append(batch)
            except ArchiveWriteError as error:
                failure, failed = error, batch
                break
            written += batch
        assert failure is not None, "the file system never filled"
        assert failure.errno == errno.ENOSPC
        assert failure.path in list_segments(small_archive)
        assert str(failure.path) in str(failure)
        assert written, "not even one batch fitted"
        assert read_back(small_archive) == (written, 0)
        filler.unlink()
        writer.append(failed)
    assert read_back(small_archive) == ([*written, *failed], 0)


def test_a_segment_that_cannot_be_started_leaves_no_file(small_archive: Path) -> None:
    """A full file system at rotation (or at start): no segment file stays behind, however
    often the append is retried, and the next one after space returns takes the next index."""
    config = ArchiveConfig(directory=small_archive, segment_max_bytes=SEGMENT_MAX_BYTES)
    with ArchiveWriter(config) as writer:
        writer.append([record(0, size=SEGMENT_MAX_BYTES - 1000)])
        (first,) = list_segments(small_archive)
        filler = fill_file_system(small_archive, leave_bytes=0)
        for _ in range(5):  # a rotation is due: each try starts a segment and fails
            with pytest.raises(ArchiveWriteError) as failure:
                writer.append([record(1)])
            assert failure.value.errno == errno.ENOSPC
            assert list_segments(small_archive) == [first]
        filler.unlink()
        writer.append([record(1)])
    segments = list_segments(small_archive)
    assert [path.name for path in segments] == [first.name, "segment-0000000002.gsa"]
    assert read_back(small_archive) == ([record(0, size=SEGMENT_MAX_BYTES - 1000), record(1)], 0)


def test_a_writer_opened_on_a_full_file_system_starts_its_segment_once_there_is_room(
    small_archive: Path,
) -> None:
    """Opening writes nothing, so a daemon can start on a full disk and wait."""
    filler = fill_file_system(small_archive, leave_bytes=0)
    config = ArchiveConfig(directory=small_archive)
    with ArchiveWriter(config) as writer:
        assert list_segments(small_archive) == []
        with pytest.raises(ArchiveWriteError):
            writer.append([record(0)])
        assert list_segments(small_archive) == []
        filler.unlink()
        writer.append([record(0)])
    (segment,) = list_segments(small_archive)
    assert segment.read_bytes().startswith(MAGIC)
    assert read_back(small_archive) == ([record(0)], 0)
