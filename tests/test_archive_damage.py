"""A damaged archive record hides nothing else: the reader resynchronises and counts it.

Every test writes real segment files with the real `ArchiveWriter`, damages the bytes on
disk (flipped bits, an overwritten length, a cut tail) at the start, middle and end of a
segment, and checks that every intact record is read, in order, and the rest counted.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from groundstation.config import ArchiveConfig
from groundstation.ingest.archive import (
    MAGIC,
    ArchiveReader,
    ArchiveRecord,
    ArchiveWriter,
    encode_record,
    list_segments,
)
from tests.daemon_support import HK_PER_ENVELOPE, envelope, replay_summary

HEADER_BYTES = 16  # record magic, body length, body CRC, header CRC
SEGMENT_RECORDS = 900
OK_PACKETS = 'gs_packets_total{apid="100",result="ok",vehicle="ingenuity"}'
LOST_PACKETS = 'gs_packets_lost_total{apid="100",vehicle="ingenuity"}'
LOST_ENVELOPES = 'gs_envelopes_lost_total{vehicle="ingenuity"}'


def record(index: int, *, size: int = 200) -> ArchiveRecord:
    return ArchiveRecord(
        topic="mars/tm/ingenuity",
        received_at=1.7e9 + index,
        payload=bytes((index + k) % 256 for k in range(size)),
        valid=index % 5 != 0,
    )


def write_segment(directory: Path, records: list[ArchiveRecord]) -> tuple[Path, list[int]]:
    """One segment written by the archive writer; returns it and where each record starts."""
    with ArchiveWriter(ArchiveConfig(directory=directory, fsync="never")) as writer:
        writer.append(records)
    (segment,) = list_segments(directory)
    starts = [len(MAGIC)]
    for item in records[:-1]:
        starts.append(starts[-1] + len(encode_record(item)))
    assert segment.stat().st_size == starts[-1] + len(encode_record(records[-1]))
    return segment, starts


def damage(segment: Path, change: Callable[[bytearray], None]) -> None:
    data = bytearray(segment.read_bytes())
    change(data)
    segment.write_bytes(bytes(data))


def flip_body_bit(at: int) -> Callable[[bytearray], None]:
    def change(data: bytearray) -> None:
        data[at + HEADER_BYTES + 30] ^= 0x10

    return change


def flip_header_bit(at: int) -> Callable[[bytearray], None]:
    def change(data: bytearray) -> None:
        data[at + 1] ^= 0x01  # in the record magic

    return change


def overwrite_length(at: int) -> Callable[[bytearray], None]:
    def change(data: bytearray) -> None:
        data[at + 4 : at + 8] = struct.pack(">I", 64)  # a plausible, wrong length

    return change


DAMAGES = {
    "flipped body bit": flip_body_bit,
    "flipped header bit": flip_header_bit,
    "overwritten length": overwrite_length,
}
POSITIONS = {"start": 0, "middle": 17, "end": 39}


@pytest.mark.parametrize("position", POSITIONS)
@pytest.mark.parametrize("kind", DAMAGES)
def test_one_damaged_record_is_skipped_and_counted(
    tmp_path: Path, kind: str, position: str
) -> None:
    """Damage one record of 40 (first, middle or last): the other 39 read, in order; one
    damaged record is counted with exactly its bytes."""
    written = [record(i) for i in range(40)]
    segment, starts = write_segment(tmp_path, written)
    index = POSITIONS[position]
    damage(segment, DAMAGES[kind](starts[index]))
    reader = ArchiveReader(tmp_path)
    assert list(reader.records()) == written[:index] + written[index + 1 :]
    assert reader.stats.records == 39
    assert reader.stats.damaged_records == 1
    assert reader.stats.damaged_bytes == len(encode_record(written[index]))
    assert reader.stats.bad_segments == 0


@pytest.mark.parametrize("cut", [1, HEADER_BYTES - 1, HEADER_BYTES + 5, -1])
def test_cut_tail_loses_only_the_cut_record(tmp_path: Path, cut: int) -> None:
    """A segment cut inside its last record (in the header, in the body, one byte short)."""
    written = [record(i) for i in range(10)]
    segment, starts = write_segment(tmp_path, written)
    size = segment.stat().st_size
    end = starts[-1] + cut if cut > 0 else size + cut
    damage(segment, lambda data: data.__delitem__(slice(end, None)))
    reader = ArchiveReader(tmp_path)
    assert list(reader.records()) == written[:-1]
    assert reader.stats.damaged_records == 1
    assert reader.stats.damaged_bytes == end - starts[-1]


def test_damaged_magic_line_hides_no_record(tmp_path: Path) -> None:
    written = [record(i) for i in range(5)]
    segment, _ = write_segment(tmp_path, written)
    damage(segment, lambda data: data.__setitem__(3, data[3] ^ 0x40))
    reader = ArchiveReader(tmp_path)
    assert list(reader.records()) == written
    assert reader.stats.damaged_records == 0
    assert reader.stats.damaged_bytes == len(MAGIC)
    assert reader.stats.bad_segments == 0


def test_zeroed_stretch_across_records_counts_once(tmp_path: Path) -> None:
    """4 KiB of zeros from the middle of record 3 to the middle of record 7 (a lost disk
    block): records 0-2 and 8-19 read; the stretch counts as one damaged record, its bytes
    from record 3's header to record 8's."""
    written = [record(i, size=1000) for i in range(20)]
    segment, starts = write_segment(tmp_path, written)
    zero_from = starts[3] + 500
    damage(segment, lambda data: data.__setitem__(slice(zero_from, zero_from + 4096), bytes(4096)))
    assert starts[7] < zero_from + 4096 < starts[8]
    reader = ArchiveReader(tmp_path)
    assert list(reader.records()) == written[:3] + written[8:]
    assert reader.stats.damaged_records == 1
    assert reader.stats.damaged_bytes == starts[8] - starts[3]


def test_damage_in_one_segment_leaves_the_next_whole(tmp_path: Path) -> None:
    config = ArchiveConfig(directory=tmp_path, segment_max_bytes=8192, fsync="never")
    written = [record(i, size=1000) for i in range(30)]
    with ArchiveWriter(config) as writer:
        for start in range(0, len(written), 3):  # a batch never spans two segments
            writer.append(written[start : start + 3])
    segments = list_segments(tmp_path)
    assert len(segments) >= 3
    damage(segments[0], flip_body_bit(len(MAGIC)))
    reader = ArchiveReader(tmp_path)
    assert list(reader.records()) == written[1:]
    assert reader.stats.damaged_records == 1


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    count=st.integers(min_value=1, max_value=12),
    sizes=st.lists(st.integers(min_value=0, max_value=400), min_size=12, max_size=12),
    target=st.integers(min_value=0),
    edits=st.lists(
        st.tuples(st.integers(min_value=0), st.integers(min_value=1, max_value=255)),
        min_size=1,
        max_size=8,
    ),
    cut=st.booleans(),
)
def test_random_damage_to_one_record_never_loses_an_intact_one(
    tmp_path_factory: pytest.TempPathFactory,
    *,
    count: int,
    sizes: list[int],
    target: int,
    edits: list[tuple[int, int]],
    cut: bool,
) -> None:
    """XOR up to 8 bytes anywhere in one record (header or body), and for the last record
    maybe cut the segment inside it: every other record reads, in order; one damaged
    record is counted, with every byte not in an intact record."""
    directory = tmp_path_factory.mktemp("archive")
    written = [record(i, size=sizes[i]) for i in range(count)]
    segment, starts = write_segment(directory, written)
    index = target % count
    length = len(encode_record(written[index]))
    masks: dict[int, int] = {}
    for offset, mask in edits:
        masks[offset % length] = masks.get(offset % length, 0) ^ mask
    assume(any(masks.values()))  # edits of one byte that cancel change nothing
    data = bytearray(segment.read_bytes())
    for offset, mask in masks.items():
        data[starts[index] + offset] ^= mask
    if cut and index == count - 1:
        # A cut at the record's first byte would leave a whole segment, one record shorter.
        del data[starts[index] + max(1, edits[0][0] % length) :]
    segment.write_bytes(bytes(data))
    reader = ArchiveReader(directory)
    assert list(reader.records()) == written[:index] + written[index + 1 :]
    assert reader.stats.damaged_records == 1
    assert reader.stats.damaged_bytes == len(data) - sum(
        len(encode_record(item)) for i, item in enumerate(written) if i != index
    ) - len(MAGIC)


@pytest.mark.parametrize(("kind", "index"), [("flipped body bit", 5), ("overwritten length", 450)])
def test_replay_process_recovers_a_damaged_segment(tmp_path: Path, kind: str, index: int) -> None:
    """`groundstation replay` on 900 archived envelopes with one damaged record.

    1. the archive writer stores 900 hand-packed envelopes (3 HK packets each) in one segment;
    2. record `index` is damaged on disk;
    3. replay, a real process, decodes the other 899 (2,697 packets ok), reports one
       damaged record with its bytes, and counts the damaged envelope's 3 packets lost.
    """
    archive = tmp_path / "archive"
    written = [
        ArchiveRecord("mars/tm/ingenuity", 1.7e9 + seq, envelope(seq), valid=True)
        for seq in range(SEGMENT_RECORDS)
    ]
    segment, starts = write_segment(archive, written)
    damage(segment, DAMAGES[kind](starts[index]))
    summary = replay_summary(archive)
    assert summary["archive"] == {
        "segments": 1,
        "records": SEGMENT_RECORDS - 1,
        "damaged_records": 1,
        "damaged_bytes": len(encode_record(written[index])),
        "bad_segments": 0,
    }
    counters = summary["counters"]
    assert counters[OK_PACKETS] == (SEGMENT_RECORDS - 1) * HK_PER_ENVELOPE
    assert counters[LOST_PACKETS] == HK_PER_ENVELOPE
    assert counters[LOST_ENVELOPES] == 1
