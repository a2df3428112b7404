"""Raw archive: records come back in order, rotation by size, torn tails detected and counted.

Damage in the middle of a segment, and resynchronisation: tests/test_archive_damage.py.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import tempfile
import zlib
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from groundstation.config import ArchiveConfig
from groundstation.ingest.archive import (
    ARCHIVE_START,
    MAGIC,
    ArchiveReader,
    ArchiveRecord,
    ArchiveWriter,
    LogCursor,
    LogPosition,
    archive_end,
    encode_record,
    framed_size,
    list_segments,
)


def record(index: int, *, size: int = 100, valid: bool = True) -> ArchiveRecord:
    return ArchiveRecord(
        topic=f"mars/tm/v{index % 3}",
        received_at=1.7e9 + index / 8,
        payload=bytes([index % 256]) * size,
        valid=valid,
    )


def test_records_round_trip_in_order(tmp_path: Path) -> None:
    written = [record(i, valid=i % 4 != 0) for i in range(50)]
    with ArchiveWriter(ArchiveConfig(directory=tmp_path)) as writer:
        writer.append(written[:20])
        writer.append(written[20:])
        assert writer.records_written == 50
    reader = ArchiveReader(tmp_path)
    assert list(reader.records()) == written
    assert reader.stats.records == 50
    assert reader.stats.damaged_records == 0


def test_the_takeover_mark_round_trips(tmp_path: Path) -> None:
    """Flag bit 1: the first record received after a session takeover (replay counts the
    gap before it taken over, as the live path did)."""
    written = [record(0), replace(record(1), after_takeover=True), record(2, valid=False)]
    with ArchiveWriter(ArchiveConfig(directory=tmp_path)) as writer:
        writer.append(written)
    assert [r.after_takeover for r in ArchiveReader(tmp_path).records()] == [False, True, False]
    assert list(ArchiveReader(tmp_path).records()) == written


def test_framed_size_is_what_a_record_takes_on_disk(tmp_path: Path) -> None:
    written = [record(i, size=i * 37) for i in range(30)]
    with ArchiveWriter(ArchiveConfig(directory=tmp_path)) as writer:
        writer.append(written)
    (segment,) = list_segments(tmp_path)
    assert len(MAGIC) + sum(map(framed_size, written)) == segment.stat().st_size


def test_record_layout_matches_the_documented_format() -> None:
    """An independent packing of the layout in the module docstring decodes the same."""
    topic, payload = b"mars/tm/ingenuity", b"\x81\xa1v\x01"
    body = struct.pack(">dBH", 1.5, 1, len(topic)) + topic + payload
    checked = b"\xa7GSR" + struct.pack(">II", len(body), zlib.crc32(body))
    expected = checked + struct.pack(">I", zlib.crc32(checked)) + body
    assert encode_record(ArchiveRecord("mars/tm/ingenuity", 1.5, payload, valid=True)) == expected


def test_segment_starts_with_the_version_2_magic(tmp_path: Path) -> None:
    with ArchiveWriter(ArchiveConfig(directory=tmp_path)) as writer:
        writer.append([record(0)])
    (segment,) = list_segments(tmp_path)
    assert segment.read_bytes() == b"GSARCH2\n" + encode_record(record(0))


def test_version_1_segments_are_still_read(tmp_path: Path) -> None:
    """An archive written before the record header existed: its records read, in order,
    alongside version-2 segments; a damaged record ends what can be read of its segment."""

    def v1_record(item: ArchiveRecord) -> bytes:
        topic = item.topic.encode()
        body = struct.pack(">dBH", item.received_at, int(item.valid), len(topic))
        body += topic + item.payload
        return struct.pack(">II", len(body), zlib.crc32(body)) + body

    old = [record(i) for i in range(4)]
    encoded = [v1_record(item) for item in old]
    (tmp_path / "segment-0000000001.gsa").write_bytes(b"GSARCH1\n" + b"".join(encoded))
    damaged = bytearray(b"GSARCH1\n" + b"".join(encoded))
    damaged[8 + len(encoded[0]) + 20] ^= 0x01  # inside the second record's body
    (tmp_path / "segment-0000000002.gsa").write_bytes(bytes(damaged))
    with ArchiveWriter(ArchiveConfig(directory=tmp_path)) as writer:
        writer.append([record(9)])
    reader = ArchiveReader(tmp_path)
    assert list(reader.records()) == [*old, old[0], record(9)]
    assert reader.stats.damaged_records == 1
    assert reader.stats.damaged_bytes == sum(len(e) for e in encoded[1:])


def cached_bytes(path: Path) -> int:
    """How much of the file is in the page cache (util-linux `fincore`, in Debian's base)."""
    fincore = shutil.which("fincore")
    assert fincore is not None, "fincore (util-linux) is needed to read the page cache"
    output = subprocess.run(
        [fincore, "--bytes", "--noheadings", "--output", "RES", str(path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return int(output.strip())


def test_records_the_cursor_has_read_leave_the_page_cache(tmp_path: Path) -> None:
    """Once the decoding consumer has read synced records, the archive is not kept in
    memory. (Unsynced pages, with fsync `interval` or `never`, go once written back.)"""
    config = ArchiveConfig(directory=tmp_path, fsync="always")
    with ArchiveWriter(config) as writer:
        writer.append([record(99)])  # starts the segment (synced with it, whatever the policy)
        writer.append([record(i, size=64 * 1024) for i in range(32)])  # 2 MiB
        (segment,) = list_segments(tmp_path)
        assert cached_bytes(segment) >= 32 * 64 * 1024  # written, not yet read
        end = writer.end
        assert end is not None
        cursor = LogCursor(
            tmp_path, LogPosition(segment.name, 0), chunk_bytes=1 << 20, drop_read_pages=True
        )
        read = []
        while batch := cursor.read(end):
            read += batch
        assert read == [record(99), *(record(i, size=64 * 1024) for i in range(32))]
        assert cursor.position == end
        # At most the partial last page, which the next write extends.
        assert cached_bytes(segment) <= 4096


def test_segments_rotate_by_size_and_never_reopen(tmp_path: Path) -> None:
    config = ArchiveConfig(directory=tmp_path, segment_max_bytes=64 * 1024, fsync="never")
    written = [record(i, size=10_000) for i in range(20)]
    with ArchiveWriter(config) as writer:
        for item in written:
            writer.append([item])
    first_run = list_segments(tmp_path)
    assert len(first_run) >= 3
    assert all(path.stat().st_size <= 64 * 1024 for path in first_run)
    with ArchiveWriter(config) as writer:  # a restart starts a new segment
        writer.append([record(99)])
    segments = list_segments(tmp_path)
    assert segments[:-1] == first_run
    assert list(ArchiveReader(tmp_path).records()) == [*written, record(99)]


def test_one_record_larger_than_a_segment_still_goes_in(tmp_path: Path) -> None:
    config = ArchiveConfig(directory=tmp_path, segment_max_bytes=64 * 1024)
    big = record(1, size=200_000)
    with ArchiveWriter(config) as writer:
        writer.append([record(0), big, record(2)])
    assert list(ArchiveReader(tmp_path).records()) == [record(0), big, record(2)]


def test_torn_last_record_is_skipped_and_counted(tmp_path: Path) -> None:
    """kill -9 mid-write: the segment ends in half a record.

    1. write three records; 2. cut the file in the middle of the third;
    3. the reader returns the first two and counts one torn record;
    4. a new writer starts a new segment whose records read normally.
    """
    config = ArchiveConfig(directory=tmp_path)
    with ArchiveWriter(config) as writer:
        writer.append([record(0), record(1), record(2)])
    (segment,) = list_segments(tmp_path)
    segment.write_bytes(segment.read_bytes()[:-30])
    with ArchiveWriter(config) as writer:
        writer.append([record(3)])
    reader = ArchiveReader(tmp_path)
    assert list(reader.records()) == [record(0), record(1), record(3)]
    assert reader.stats.damaged_records == 1
    assert reader.stats.damaged_bytes == len(encode_record(record(2))) - 30


def test_corrupt_record_body_skips_that_record_only(tmp_path: Path) -> None:
    config = ArchiveConfig(directory=tmp_path)
    with ArchiveWriter(config) as writer:
        writer.append([record(0), record(1)])
    (segment,) = list_segments(tmp_path)
    data = bytearray(segment.read_bytes())
    data[len(MAGIC) + 20] ^= 0xFF  # inside the first record's body: its CRC fails
    segment.write_bytes(bytes(data))
    reader = ArchiveReader(tmp_path)
    assert list(reader.records()) == [record(1)]
    assert reader.stats.damaged_records == 1
    assert reader.stats.damaged_bytes == len(encode_record(record(0)))


def test_foreign_file_without_magic_is_skipped(tmp_path: Path) -> None:
    (tmp_path / "segment-0000000001.gsa").write_bytes(b"not an archive")
    (tmp_path / "notes.txt").write_text("ignored: not a segment name")
    reader = ArchiveReader(tmp_path)
    assert list(reader.records()) == []
    assert reader.stats.bad_segments == 1
    assert reader.stats.damaged_bytes == len(b"not an archive")
    assert reader.stats.damaged_records == 0


def test_tail_reads_only_the_newest_segments(tmp_path: Path) -> None:
    config = ArchiveConfig(directory=tmp_path, segment_max_bytes=64 * 1024, fsync="never")
    written = [record(i, size=30_000) for i in range(10)]
    with ArchiveWriter(config) as writer:
        for item in written:
            writer.append([item])
    tail = list(ArchiveReader(tmp_path).records(tail_bytes=1))
    assert tail
    assert tail == written[-len(tail) :]
    assert len(tail) < len(written)
    assert list(ArchiveReader(tmp_path).records(tail_bytes=0)) == []


def test_missing_directory_reads_as_empty(tmp_path: Path) -> None:
    assert list(ArchiveReader(tmp_path / "absent").records()) == []


def test_interval_policy_syncs_when_due(tmp_path: Path) -> None:
    now = [0.0]
    config = ArchiveConfig(directory=tmp_path, fsync="interval", fsync_interval_s=1.0)
    writer = ArchiveWriter(config, clock=lambda: now[0])
    with writer:
        writer.append([record(0)])  # a new segment is synced with its first batch
        assert not writer._unsynced
        writer.append([record(1)])
        assert writer._unsynced  # not due yet
        now[0] = 1.5
        writer.sync_if_due()
        assert not writer._unsynced


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.builds(
            ArchiveRecord,
            topic=st.text(max_size=40),
            received_at=st.floats(allow_nan=False),
            payload=st.binary(max_size=300),
            valid=st.booleans(),
        ),
        max_size=20,
    ),
    st.integers(min_value=0, max_value=10_000),
)
def test_any_truncation_reads_a_prefix(
    tmp_path_factory: pytest.TempPathFactory, records: list[ArchiveRecord], cut: int
) -> None:
    """Cutting a segment anywhere yields a prefix of the records, never an error."""
    directory = tmp_path_factory.mktemp("archive")
    with ArchiveWriter(ArchiveConfig(directory=directory, fsync="never")) as writer:
        writer.append(records)
    if not records:
        assert list_segments(directory) == []  # a segment is made with its first batch
        return
    (segment,) = list_segments(directory)
    data = segment.read_bytes()
    segment.write_bytes(data[: len(MAGIC) + cut])
    read = list(ArchiveReader(directory).records())
    assert read == records[: len(read)]


def test_short_writes_are_resumed_where_they_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writev that stops mid-part (disk nearly full, a signal) loses and repeats nothing."""
    real_writev = os.writev
    calls: list[int] = []

    def short_writev(descriptor: int, parts: list[memoryview]) -> int:
        calls.append(len(parts))
        budget = 1000  # bytes per call: every record is split across calls
        taken: list[bytes] = []
        for part in parts:
            taken.append(bytes(part[:budget]))
            budget -= len(taken[-1])
            if budget == 0:
                break
        return real_writev(descriptor, taken)

    monkeypatch.setattr(os, "writev", short_writev)
    written = [record(i, size=777 + 131 * i) for i in range(20)]
    with ArchiveWriter(ArchiveConfig(directory=tmp_path)) as writer:
        writer.append(written)
    assert len(calls) > len(written)  # the writes really were short
    reader = ArchiveReader(tmp_path)
    assert list(reader.records()) == written
    assert reader.stats.damaged_records == 0
    segment = list_segments(tmp_path)[0].read_bytes()
    assert segment == MAGIC + b"".join(encode_record(r) for r in written)


def read_all(cursor: LogCursor, until: LogPosition) -> list[ArchiveRecord]:
    records: list[ArchiveRecord] = []
    while batch := cursor.read(until):
        records += batch
    return records


def test_cursor_reads_the_archive_in_bounded_chunks_across_segments(tmp_path: Path) -> None:
    """Chunks of at most about 30 kB, whole records only, through three segments and a
    record larger than a chunk; what it reads is what the reader reads."""
    config = ArchiveConfig(directory=tmp_path, segment_max_bytes=64 * 1024, fsync="never")
    written = [record(i, size=7_000 if i != 11 else 100_000) for i in range(30)]
    with ArchiveWriter(config) as writer:
        for item in written:
            writer.append([item])
        end = writer.end
    assert end is not None
    assert len(list_segments(tmp_path)) >= 3
    assert archive_end(tmp_path) == end
    cursor = LogCursor(tmp_path, ARCHIVE_START, chunk_bytes=30_000)
    chunks = []
    while batch := cursor.read(end):
        chunks.append(batch)
    assert [item for chunk in chunks for item in chunk] == written
    assert max(len(chunk) for chunk in chunks) <= 30_000 // 7_000
    assert cursor.position == end
    assert cursor.read(end) == []


def test_cursor_stops_at_the_end_it_is_given_and_goes_on_from_there(tmp_path: Path) -> None:
    config = ArchiveConfig(directory=tmp_path, fsync="never")
    with ArchiveWriter(config) as writer:
        writer.append([record(0), record(1)])
        first_end = writer.end
        writer.append([record(2)])
        second_end = writer.end
    assert first_end is not None
    assert second_end is not None
    cursor = LogCursor(tmp_path, LogPosition(first_end.segment, 0), chunk_bytes=1 << 20)
    assert read_all(cursor, first_end) == [record(0), record(1)]
    assert cursor.position == first_end
    assert read_all(cursor, second_end) == [record(2)]


def test_cursor_skips_and_counts_damage_like_the_reader(tmp_path: Path) -> None:
    config = ArchiveConfig(directory=tmp_path, fsync="never")
    with ArchiveWriter(config) as writer:
        writer.append([record(i, size=1000) for i in range(10)])
    (segment,) = list_segments(tmp_path)
    data = bytearray(segment.read_bytes())
    data[len(MAGIC) + 3 * len(encode_record(record(0, size=1000))) + 40] ^= 0x01  # record 3's body
    data[len(MAGIC) + 6 * len(encode_record(record(0, size=1000))) + 1] ^= 0x01  # record 6's header
    segment.write_bytes(bytes(data))
    reader = ArchiveReader(tmp_path)
    expected = list(reader.records())
    end = archive_end(tmp_path)
    for chunk_bytes in (1 << 20, 2_500, 1_100):
        cursor = LogCursor(tmp_path, LogPosition(segment.name, 0), chunk_bytes=chunk_bytes)
        assert read_all(cursor, end) == expected
        assert len(expected) == 8
        assert cursor.stats.damaged_records >= reader.stats.damaged_records == 2
        assert cursor.stats.damaged_bytes == reader.stats.damaged_bytes


def test_cursor_goes_past_a_removed_segment(tmp_path: Path) -> None:
    config = ArchiveConfig(directory=tmp_path, segment_max_bytes=4096, fsync="never")
    with ArchiveWriter(config) as writer:
        for i in range(6):
            writer.append([record(i, size=3000)])
        end = writer.end
    assert end is not None
    segments = list_segments(tmp_path)
    segments[1].unlink()
    cursor = LogCursor(tmp_path, LogPosition(segments[1].name, 0), chunk_bytes=1 << 20)
    assert read_all(cursor, end) == [record(i, size=3000) for i in range(2, 6)]


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 5000), min_size=1, max_size=25),
    chunk_bytes=st.integers(16, 20_000),
    flips=st.lists(st.integers(0, 10**6), max_size=3),
)
def test_cursor_reads_what_the_reader_reads_in_any_chunking(
    sizes: list[int], chunk_bytes: int, flips: list[int]
) -> None:
    """Any record sizes, any chunk size, a few flipped bits: the same good records."""
    with tempfile.TemporaryDirectory() as name:
        directory = Path(name)
        config = ArchiveConfig(directory=directory, fsync="never")
        with ArchiveWriter(config) as writer:
            writer.append([record(i, size=size) for i, size in enumerate(sizes)])
        (segment,) = list_segments(directory)
        data = bytearray(segment.read_bytes())
        for flip in flips:
            data[len(MAGIC) + flip % (len(data) - len(MAGIC))] ^= 0x10
        segment.write_bytes(bytes(data))
        end = archive_end(directory)
        expected = list(ArchiveReader(directory).records())
        cursor = LogCursor(directory, LogPosition(segment.name, 0), chunk_bytes=chunk_bytes)
        assert read_all(cursor, end) == expected
        assert cursor.position == end
