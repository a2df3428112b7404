"""Prometheus remote write 1.0: the `WriteRequest` protobuf, snappy-block compressed.

Only four messages are needed, each with two or one fields, so they are encoded here by
hand from the protobuf wire format (docs/decisions.md, "Remote write without a protobuf
runtime"):

    WriteRequest { repeated TimeSeries timeseries = 1; }
    TimeSeries   { repeated Label labels = 1; repeated Sample samples = 2; }
    Label        { string name = 1; string value = 2; }
    Sample       { double value = 1; int64 timestamp = 2; }   // timestamp in ms

Pure: no I/O. The receiver wants each series' labels sorted by name (`__name__` among
them) and its samples in time order; `encode_write_request` puts them so.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import cramjam

__all__ = [
    "CONTENT_ENCODING",
    "CONTENT_TYPE",
    "PROTOCOL_VERSION",
    "Series",
    "compress",
    "encode_write_request",
]

CONTENT_TYPE: Final = "application/x-protobuf"
CONTENT_ENCODING: Final = "snappy"
PROTOCOL_VERSION: Final = "0.1.0"  # the header value remote write 1.0 specifies

_WIRE_VARINT: Final = 0
_WIRE_FIXED64: Final = 1
_WIRE_LENGTH_DELIMITED: Final = 2
_DOUBLE: Final = struct.Struct("<d")


@dataclass(frozen=True, slots=True)
class Series:
    """One time series: its labels (`__name__` included) and (ms timestamp, value) samples."""

    labels: Mapping[str, str]
    samples: Sequence[tuple[int, float]]


def _varint(value: int) -> bytes:
    """Base-128 varint; a negative int64 as its two's complement (10 bytes), as protobuf does."""
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _key(field: int, wire_type: int) -> bytes:
    return _varint(field << 3 | wire_type)


def _length_delimited(field: int, body: bytes) -> bytes:
    return _key(field, _WIRE_LENGTH_DELIMITED) + _varint(len(body)) + body


def _label(name: str, value: str) -> bytes:
    return _length_delimited(1, name.encode()) + _length_delimited(2, value.encode())


def _sample(timestamp_ms: int, value: float) -> bytes:
    # proto3 leaves zero-valued scalars out; writing them is valid too, and simpler to check.
    return (
        _key(1, _WIRE_FIXED64) + _DOUBLE.pack(value) + _key(2, _WIRE_VARINT) + _varint(timestamp_ms)
    )


def _time_series(series: Series) -> bytes:
    parts = [_length_delimited(1, _label(n, v)) for n, v in sorted(series.labels.items())]
    parts.extend(_length_delimited(2, _sample(t, v)) for t, v in sorted(series.samples))
    return b"".join(parts)


def encode_write_request(series: Iterable[Series]) -> bytes:
    """The uncompressed `WriteRequest` holding these series."""
    parts = []
    for one in series:
        if "__name__" not in one.labels:
            raise ValueError(f"a series needs a __name__ label: {dict(one.labels)}")
        parts.append(_length_delimited(1, _time_series(one)))
    return b"".join(parts)


def compress(message: bytes) -> bytes:
    """Snappy block format (not the framed stream format), as remote write requires."""
    return bytes(cramjam.snappy.compress_raw(message))
