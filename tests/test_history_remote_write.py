"""Remote-write encoding, read back by a decoder written from the protobuf wire spec."""

from __future__ import annotations

import math
import struct

import cramjam
import pytest
from hypothesis import given
from hypothesis import strategies as st

from groundstation.consumers.history.remote_write import Series, compress, encode_write_request


def read_varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, at


def fields(data: bytes) -> list[tuple[int, int | bytes | float]]:
    """(field number, value) pairs: varints as int, fixed64 as double, length-delimited as bytes."""
    out: list[tuple[int, int | bytes | float]] = []
    at = 0
    while at < len(data):
        key, at = read_varint(data, at)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, at = read_varint(data, at)
            out.append((number, value - (1 << 64) if value >= 1 << 63 else value))
        elif wire == 1:
            out.append((number, struct.unpack_from("<d", data, at)[0]))
            at += 8
        elif wire == 2:
            length, at = read_varint(data, at)
            out.append((number, data[at : at + length]))
            at += length
        else:
            raise AssertionError(f"unexpected wire type {wire}")
    assert at == len(data)
    return out


def decode(message: bytes) -> list[tuple[list[tuple[str, str]], list[tuple[int, float]]]]:
    series = []
    for number, body in fields(message):
        assert number == 1
        assert isinstance(body, bytes)
        labels: list[tuple[str, str]] = []
        samples: list[tuple[int, float]] = []
        for inner, value in fields(body):
            assert isinstance(value, bytes)
            parts = dict(fields(value))
            if inner == 1:
                name, label = parts[1], parts[2]
                assert isinstance(name, bytes)
                assert isinstance(label, bytes)
                labels.append((name.decode(), label.decode()))
            else:
                assert inner == 2
                timestamp, sample = parts[2], parts[1]
                assert isinstance(timestamp, int)
                assert isinstance(sample, float)
                samples.append((timestamp, sample))
        series.append((labels, samples))
    return series


def test_known_bytes_of_one_sample() -> None:
    message = encode_write_request([Series({"__name__": "up"}, [(1, 1.0)])])
    label = b"\x0a\x08__name__" + b"\x12\x02up"
    sample = b"\x09" + struct.pack("<d", 1.0) + b"\x10\x01"
    series = b"\x0a" + bytes([len(label)]) + label + b"\x12" + bytes([len(sample)]) + sample
    assert message == b"\x0a" + bytes([len(series)]) + series


def test_labels_sorted_and_samples_in_time_order() -> None:
    message = encode_write_request(
        [Series({"vehicle": "ingenuity", "__name__": "gs_x", "axis": "z"}, [(5, 2.0), (3, 1.0)])]
    )
    [(labels, samples)] = decode(message)
    assert [name for name, _ in labels] == ["__name__", "axis", "vehicle"]
    assert samples == [(3, 1.0), (5, 2.0)]


def test_a_series_without_a_name_is_refused() -> None:
    with pytest.raises(ValueError, match="__name__"):
        encode_write_request([Series({"vehicle": "x"}, [(1, 1.0)])])


names = st.text(st.characters(codec="utf-8"), min_size=1, max_size=20)
finite = st.floats(allow_nan=False)
timestamps = st.integers(min_value=-(1 << 62), max_value=(1 << 62))


@given(
    st.lists(
        st.tuples(
            st.dictionaries(names, st.text(max_size=30), max_size=5),
            st.dictionaries(timestamps, finite, min_size=1, max_size=20),
        ),
        max_size=10,
    )
)
def test_round_trip(raw: list[tuple[dict[str, str], dict[int, float]]]) -> None:
    series = [Series({**labels, "__name__": "gs_m"}, list(s.items())) for labels, s in raw]
    decoded = decode(encode_write_request(series))
    assert len(decoded) == len(series)
    for (labels, samples), original in zip(decoded, series, strict=True):
        assert labels == sorted(original.labels.items())
        assert samples == sorted(original.samples)


def test_nan_survives() -> None:
    [(_, [(_, value)])] = decode(encode_write_request([Series({"__name__": "m"}, [(0, math.nan)])]))
    assert math.isnan(value)


@given(st.binary(max_size=5000))
def test_snappy_block_round_trip(data: bytes) -> None:
    assert bytes(cramjam.snappy.decompress_raw(compress(data))) == data
