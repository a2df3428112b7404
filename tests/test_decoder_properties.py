"""Properties of the decoder: round trips of any ICD value, and hostile bytes (hypothesis)."""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from groundstation.core.decoder import (
    MALFORMED,
    OK,
    RESULTS,
    DecodeResult,
    PacketDecoder,
    _gather,
)
from groundstation.core.definitions import (
    NUMERIC_TYPES,
    FieldDef,
    PacketDef,
    VehicleDictionary,
    load_dictionary,
)
from groundstation.core.encoder import encode_packet
from tests.icd_packets import crc_bitwise

DICTIONARIES = {name: load_dictionary(name) for name in ("ingenuity", "perseverance")}
TIME = 946728000 + 700_000_000.5


def field_values(field: FieldDef, samples: int) -> st.SearchStrategy[Any]:
    """Any engineering value the ICD allows for the field (one per sample for IMU)."""
    if field.is_text:
        return st.text(max_size=200).filter(lambda text: len(text.encode()) <= 200)
    kind = np.dtype(NUMERIC_TYPES[field.type])
    one: st.SearchStrategy[Any]
    if kind.kind == "f":
        one = st.floats(width=32 if kind.itemsize == 4 else 64, allow_nan=False)
    else:
        info = np.iinfo(kind)
        low, high = int(info.min), int(info.max)
        if field.scale is not None:
            one = st.floats(min_value=low * field.scale, max_value=high * field.scale)
        elif field.enum is not None:
            one = st.one_of(st.sampled_from(list(field.enum.values())), st.integers(low, high))
        else:
            one = st.integers(low, high)
    return st.lists(one, min_size=samples, max_size=samples) if samples > 1 else one


@st.composite
def packets(draw: st.DrawFn) -> tuple[str, list[tuple[PacketDef, dict[str, Any]]]]:
    """A vehicle and a list of its packets with values, in random APID order."""
    vehicle = draw(st.sampled_from(sorted(DICTIONARIES)))
    definitions = list(DICTIONARIES[vehicle].packets.values())
    chosen = draw(st.lists(st.sampled_from(definitions), min_size=1, max_size=8))
    return vehicle, [
        (p, {f.name: draw(field_values(f, p.samples)) for f in p.fields}) for p in chosen
    ]


def expect_close(decoded: Any, value: Any, field: FieldDef) -> None:
    """Ints exact (enum names as their numbers), f32 exact as float32, scaled within 1/2 step."""
    if isinstance(value, list):
        for got, want in zip(decoded, value, strict=True):
            expect_close(got, want, field)
        return
    if field.is_text:
        assert decoded == value
    elif field.type.startswith("f"):
        assert decoded == float(np.float32(value) if field.type == "f32" else value)
    elif field.scale is not None:
        assert abs(decoded - value) <= field.scale / 2 * (1 + 1e-9) + 1e-12 * abs(value)
    elif isinstance(value, str):
        assert field.enum is not None
        assert field.enum[int(decoded)] == value
    else:
        assert decoded == value


@settings(max_examples=200, deadline=None)
@given(packets())
def test_any_icd_value_survives_encode_then_decode(
    case: tuple[str, list[tuple[PacketDef, dict[str, Any]]]],
) -> None:
    """Every value the ICD allows, for every APID of both vehicles, comes back.

    1. Encode random packets (consecutive counts per APID) into one buffer.
    2. Decode: all ok, and each field as `expect_close` says.
    """
    vehicle, chosen = case
    counts: dict[int, int] = {}
    encoded = []
    for packet, values in chosen:
        counts[packet.apid] = counts.get(packet.apid, -1) + 1
        encoded.append(encode_packet(packet, seq=counts[packet.apid], time=TIME, values=values))
    result = PacketDecoder(DICTIONARIES[vehicle]).decode([b"".join(encoded)])
    assert [RESULTS[c] for c in result.result.tolist()] == ["ok"] * len(chosen)
    rows: dict[int, int] = {}
    for position, (packet, values) in enumerate(chosen):
        columns = result.columns[packet.apid]
        row = rows[packet.apid] = rows.get(packet.apid, -1) + 1
        assert columns.index[row] == position
        assert columns.time[row] == TIME
        for field in packet.fields:
            cell = columns.fields[field.name][row]
            # np.asarray would turn text into a fixed-width str array, which drops trailing NULs.
            decoded = cell if field.is_text else np.asarray(cell).tolist()
            expect_close(decoded, values[field.name], field)


def check_invariants(result: DecodeResult, buffers: list[bytes]) -> None:
    """Only documented verdicts; entries tile each buffer; only sound packets are trusted."""
    assert set(result.result.tolist()) <= set(range(len(RESULTS)))
    for number, buffer in enumerate(buffers):
        mine = np.flatnonzero(result.buffer == number)
        offsets, lengths = result.offset[mine], result.length[mine]
        assert int(lengths.sum()) == len(buffer)  # every byte accounted, exactly once
        assert offsets.tolist() == (np.cumsum(lengths) - lengths).tolist()
        codes = result.result[mine]
        assert MALFORMED not in codes[:-1].tolist()  # a malformed tail ends its buffer
        for offset, length, code in zip(offsets, lengths, codes, strict=True):
            if code != MALFORMED:
                packet = buffer[offset : offset + length]
                assert crc_bitwise(packet) == 0 or RESULTS[code] == "crc_error"
                assert length >= 14
    for apid, columns in result.columns.items():
        assert (result.result[columns.index] == OK).all()
        assert (result.apid[columns.index] == apid).all()
        for values in columns.fields.values():
            assert values.shape[0] == columns.index.shape[0]


@st.composite
def hostile_buffers(draw: st.DrawFn) -> tuple[str, list[bytes]]:
    """Random bytes, or valid packets truncated, bit-flipped, spliced and shuffled."""
    vehicle, chosen = draw(packets())
    valid = [encode_packet(p, seq=i, time=TIME, values=v) for i, (p, v) in enumerate(chosen)]
    buffers = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["random", "truncated", "flipped", "spliced"]))
        if kind == "random":
            buffers.append(draw(st.binary(max_size=400)))
            continue
        data = bytearray(b"".join(draw(st.permutations(valid))))
        if kind == "truncated":
            data = data[: draw(st.integers(0, len(data)))]
        elif kind == "flipped":
            for _ in range(draw(st.integers(1, 5))):
                data[draw(st.integers(0, len(data) - 1))] ^= 1 << draw(st.integers(0, 7))
        else:
            cut = draw(st.integers(0, len(data)))
            data = data[:cut] + draw(st.binary(max_size=30)) + data[cut:]
        buffers.append(bytes(data))
    return vehicle, buffers


@settings(max_examples=300, deadline=None)
@given(hostile_buffers())
def test_hostile_bytes_give_only_documented_verdicts(case: tuple[str, list[bytes]]) -> None:
    """Random, truncated, bit-flipped or spliced buffers never raise and add up exactly.

    The same decoder then takes a second, shuffled pass (its carried state must hold up).
    """
    vehicle, buffers = case
    decoder = PacketDecoder(DICTIONARIES[vehicle])
    check_invariants(decoder.decode(buffers), buffers)
    check_invariants(decoder.decode(buffers[::-1]), buffers[::-1])
    assert all(math.isfinite(value) for value in decoder.decode([]).lost.values())


@st.composite
def batches(draw: st.DrawFn) -> tuple[str, list[bytes]]:
    """Envelope-like batches: buffers of one fixed-length APID, mixed ones, hostile ones."""
    vehicle, hostile = draw(hostile_buffers())
    fixed = [p for p in DICTIONARIES[vehicle].packets.values() if p.fixed_length]
    buffers = list(hostile)
    for _ in range(draw(st.integers(0, 4))):
        packet = draw(st.sampled_from(fixed))
        values = {f.name: draw(field_values(f, packet.samples)) for f in packet.fields}
        first = draw(st.integers(0, 16383))
        buffers.append(
            b"".join(
                encode_packet(packet, seq=(first + k) % 16384, time=TIME, values=values)
                for k in range(draw(st.integers(1, 5)))
            )
        )
    return vehicle, draw(st.permutations(buffers))


@settings(max_examples=200, deadline=None)
@given(batches())
def test_one_call_equals_one_call_per_buffer(case: tuple[str, list[bytes]]) -> None:
    """A batch decoded in one call gives what one call per buffer gives, in order.

    Covers the one-APID fast path, the header walk and their merge across buffers.
    """
    vehicle, buffers = case
    together = PacketDecoder(DICTIONARIES[vehicle]).decode(buffers)
    alone = PacketDecoder(DICTIONARIES[vehicle])
    parts = [alone.decode([buffer]) for buffer in buffers]
    check_invariants(together, buffers)
    for name in ("offset", "length", "apid", "seq", "time", "result"):
        joined = np.concatenate([getattr(p, name) for p in parts])
        np.testing.assert_array_equal(getattr(together, name), joined, err_msg=name)
    for apid in DICTIONARIES[vehicle].packets:
        assert together.lost[apid] == sum(p.lost[apid] for p in parts)
        pieces = [p.columns[apid] for p in parts if apid in p.columns]
        if not pieces:
            assert apid not in together.columns
            continue
        for field, values in together.columns[apid].fields.items():
            expected = np.concatenate([piece.fields[field] for piece in pieces])
            np.testing.assert_array_equal(values, expected)


Entry = tuple[int, int, int, bool]


def walk_one_by_one(dictionary: VehicleDictionary, buffer: bytes) -> list[Entry]:
    """Step 1 as the ICD says it, a header at a time: (offset, length, APID, is tail) per
    entry; the walk stops at the first header that is not sound, which begins a malformed
    tail (APID -1 unless it starts like a packet id). Independent of the vectorised split."""
    entries = []
    at = 0
    while at < len(buffer):
        head = buffer[at : at + 6]
        sound = len(head) == 6 and head[0] & 0xF8 == 0x08 and head[2] & 0xC0 == 0xC0
        if sound:
            apid = (head[0] & 0x07) << 8 | head[1]
            length = struct.unpack(">H", head[4:6])[0] + 7
            packet = dictionary.packets.get(apid)
            low, high = (packet.min_length, packet.max_length) if packet else (14, 65542)
            sound = low <= length <= high and at + length <= len(buffer)
        if not sound:
            looks_like_id = len(buffer) - at >= 2 and buffer[at] & 0xF8 == 0x08
            tail_apid = (buffer[at] & 0x07) << 8 | buffer[at + 1] if looks_like_id else -1
            entries.append((at, len(buffer) - at, tail_apid, True))
            return entries
        entries.append((at, length, apid, False))
        at += length
    return entries


@settings(max_examples=300, deadline=None)
@given(batches())
def test_split_finds_what_a_header_by_header_walk_finds(case: tuple[str, list[bytes]]) -> None:
    """The vectorised split (fast path, chain walk, merge) against the walk it replaces."""
    vehicle, buffers = case
    sizes = np.array([len(b) for b in buffers], dtype=np.int64)
    split = PacketDecoder(DICTIONARIES[vehicle]).split(
        np.frombuffer(b"".join(buffers), np.uint8), sizes
    )
    starts = np.cumsum(sizes) - sizes
    is_tail = np.zeros(split.offset.shape[0], dtype=np.bool_)
    is_tail[split.tail] = True
    found = [
        (int(buffer), (int(offset - starts[buffer]), int(length), int(apid), bool(tail)))
        for buffer, offset, length, apid, tail in zip(
            split.buffer, split.offset, split.length, split.apid, is_tail, strict=True
        )
    ]
    expected = [
        (number, entry)
        for number, buffer in enumerate(buffers)
        for entry in walk_one_by_one(DICTIONARIES[vehicle], buffer)
    ]
    assert found == expected


@given(st.binary(min_size=1, max_size=300), st.data())
def test_gather_takes_the_bytes_at_each_offset(data: bytes, draw: st.DataObject) -> None:
    """_gather (one copy per item of a strided void view) against slicing the bytes."""
    width = draw.draw(st.integers(1, len(data)))
    offsets = draw.draw(st.lists(st.integers(0, len(data) - width), max_size=20))
    gathered = _gather(np.frombuffer(data, np.uint8), np.array(offsets, dtype=np.int64), width)
    assert gathered.shape == (len(offsets), width)
    assert [bytes(row) for row in gathered] == [data[at : at + width] for at in offsets]
