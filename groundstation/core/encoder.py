"""Build CCSDS space packets from engineering values (ICD sections 3 and 4).

The simulator and the tests use this; the decoder shares only the SCLK conversion
(`packet_time`), and both take the header layout from groundstation.core.ccsds. A value
that does not fit its field is a programmer error in the caller, not bad telemetry, so it
raises ValueError naming the packet and field.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, overload

import numpy as np
from numpy.typing import ArrayLike, NDArray

from groundstation.core.ccsds import (
    CRC_BYTES,
    FINE_PER_SECOND,
    HEADER_BYTES,
    HEADER_DTYPE,
    HEADER_STRUCT,
    MAX_COARSE,
    PACKET_ID_FIXED,
    PACKET_LENGTH_OFFSET,
    SCLK_EPOCH_UNIX_S,
    SEQ_COUNT_MODULUS,
    SEQ_FLAGS_UNSEGMENTED,
)
from groundstation.core.crc import crc16, crc16_rows
from groundstation.core.definitions import NUMERIC_TYPES, FieldDef, PacketDef

__all__ = [
    "encode_packet",
    "encode_packets",
    "packet_time",
    "sclk_from_time",
]


@overload
def packet_time(coarse: int, fine: int) -> float: ...
@overload
def packet_time(coarse: NDArray[Any], fine: NDArray[Any]) -> NDArray[np.float64]: ...
def packet_time(
    coarse: int | NDArray[Any], fine: int | NDArray[Any]
) -> float | NDArray[np.float64]:
    """Packet time in UTC seconds from SCLK (ICD section 3), rounded once to float64."""
    if isinstance(coarse, int) and isinstance(fine, int):
        return (SCLK_EPOCH_UNIX_S + coarse) + fine / FINE_PER_SECOND
    # coarse + fine / 65536 is exact in float64 (48 bits); adding the epoch rounds once,
    # as the scalar form does. In place: this runs over every decoded packet.
    seconds = np.multiply(fine, 1.0 / FINE_PER_SECOND, dtype=np.float64)
    seconds += coarse
    seconds += SCLK_EPOCH_UNIX_S
    return seconds


@overload
def sclk_from_time(time: float) -> tuple[int, int]: ...
@overload
def sclk_from_time(time: NDArray[Any]) -> tuple[NDArray[np.uint32], NDArray[np.uint16]]: ...
def sclk_from_time(
    time: float | NDArray[Any],
) -> tuple[int, int] | tuple[NDArray[np.uint32], NDArray[np.uint16]]:
    """SCLK (coarse, fine) of a packet time: fine = round(fraction * 65536), carried over."""
    if isinstance(time, int | float):
        if not math.isfinite(time):
            raise ValueError(f"packet time {time!r} is not finite")
        offset = time - SCLK_EPOCH_UNIX_S
        coarse = math.floor(offset)
        fine = round((offset - coarse) * FINE_PER_SECOND)
        if fine == FINE_PER_SECOND:
            coarse, fine = coarse + 1, 0
        if not 0 <= coarse <= MAX_COARSE:
            raise ValueError(f"packet time {time!r} is outside the 32-bit SCLK range")
        return coarse, fine
    offsets = np.asarray(time, dtype=np.float64) - SCLK_EPOCH_UNIX_S
    if not np.all(np.isfinite(offsets)):
        raise ValueError("packet times must be finite")
    coarse_f = np.floor(offsets)
    fine_f = np.rint((offsets - coarse_f) * FINE_PER_SECOND)
    carry = fine_f == FINE_PER_SECOND
    coarse_f += carry
    fine_f[carry] = 0
    if offsets.size and (coarse_f.min() < 0 or coarse_f.max() > MAX_COARSE):
        raise ValueError("packet times must lie within the 32-bit SCLK range")
    return coarse_f.astype(np.uint32), fine_f.astype(np.uint16)


def encode_packet(
    packet: PacketDef, *, seq: int | np.integer[Any], time: float, values: Mapping[str, object]
) -> bytes:
    """One packet of any APID, including variable-length event reports with their text."""
    _check_names(packet, values)
    if isinstance(seq, bool) or not isinstance(seq, int | np.integer):
        raise ValueError(f"{packet.name}: sequence count {seq!r} is not an integer")
    if not 0 <= seq < SEQ_COUNT_MODULUS:
        raise ValueError(f"{packet.name}: sequence count {seq!r} is outside 0..16383")
    coarse, fine = sclk_from_time(float(time))
    shape = (1, packet.samples) if packet.samples > 1 else (1,)
    records = np.zeros(shape, dtype=packet.record_dtype)
    for field in packet.numeric_fields:
        records[field.name] = _raw_values(packet, field, values[field.name], shape)
    body = records.tobytes()
    text = packet.text_field
    if text is not None:
        message = values[text.name]
        if not isinstance(message, str):
            raise ValueError(f"{packet.name}.{text.name}: text must be a str, not {message!r}")
        body += message.encode("utf-8")
    length = HEADER_BYTES + len(body) + CRC_BYTES
    if not packet.min_length <= length <= packet.max_length:
        raise ValueError(
            f"{packet.name}: packet would be {length} bytes, "
            f"allowed {packet.min_length}..{packet.max_length} (text too long?)"
        )
    header = HEADER_STRUCT.pack(
        PACKET_ID_FIXED | packet.apid,
        SEQ_FLAGS_UNSEGMENTED | int(seq),
        length - PACKET_LENGTH_OFFSET,
        coarse,
        fine,
    )
    unprotected = header + body
    return unprotected + crc16(unprotected).to_bytes(2, "big")


def encode_packets(
    packet: PacketDef,
    *,
    seq: ArrayLike,
    time: ArrayLike,
    columns: Mapping[str, object],
) -> bytes:
    """n packets of one fixed-length APID, concatenated, built column-wise without a loop."""
    if packet.packet_dtype is None:
        raise ValueError(f"{packet.name} has variable length: use encode_packet")
    _check_names(packet, columns)
    counts = np.asarray(seq)
    if counts.ndim != 1:
        raise ValueError(f"{packet.name}: seq must be one-dimensional, not shape {counts.shape}")
    n = counts.shape[0]
    if counts.dtype.kind not in "iu" and n:
        raise ValueError(f"{packet.name}: seq must hold integers, not {counts.dtype}")
    if n and (counts.min() < 0 or counts.max() >= SEQ_COUNT_MODULUS):
        raise ValueError(f"{packet.name}: sequence counts must lie in 0..16383")
    times = _broadcast(packet, "time", np.asarray(time, dtype=np.float64), (n,))
    coarse, fine = sclk_from_time(times)

    packets = np.zeros(n, dtype=packet.packet_dtype)
    raw = packets.view(np.uint8).reshape(n, packet.max_length)
    header = raw[:, :HEADER_BYTES].view(HEADER_DTYPE)[:, 0]
    header["packet_id"] = PACKET_ID_FIXED | packet.apid
    header["sequence"] = SEQ_FLAGS_UNSEGMENTED | counts
    header["data_length"] = packet.max_length - PACKET_LENGTH_OFFSET
    header["coarse"] = coarse
    header["fine"] = fine
    shape = (n, packet.samples) if packet.samples > 1 else (n,)
    body = packets["body"]
    for field in packet.numeric_fields:
        body[field.name] = _raw_values(packet, field, columns[field.name], shape)
    packets["crc"] = crc16_rows(raw[:, : packet.max_length - CRC_BYTES])
    return packets.tobytes()


def _check_names(packet: PacketDef, values: Mapping[str, object]) -> None:
    """Every field given exactly once: a typo must not silently encode a zero."""
    expected = {f.name for f in packet.fields}
    missing = sorted(expected - set(values))
    unknown = sorted(set(values) - expected)
    if missing or unknown:
        raise ValueError(f"{packet.name}: missing fields {missing}, unknown fields {unknown}")


def _broadcast(
    packet: PacketDef, name: str, values: NDArray[Any], shape: tuple[int, ...]
) -> NDArray[Any]:
    try:
        return np.broadcast_to(values, shape)
    except ValueError:
        raise ValueError(
            f"{packet.name}.{name}: shape {values.shape} does not fit {shape}"
        ) from None


def _raw_values(
    packet: PacketDef, field: FieldDef, values: object, shape: tuple[int, ...]
) -> NDArray[Any]:
    """Invert the calibration of one field (ICD section 4) and check the raw range."""
    where = f"{packet.name}.{field.name}"
    # Enum columns may mix names and numbers: keep them as objects until mapped.
    mixed = field.enum is not None and not isinstance(values, np.ndarray)
    column = np.asarray(values, dtype=object if mixed else None)
    if field.enum is not None and column.dtype.kind in "UO":
        codes = {name: value for value, name in field.enum.items()}
        try:
            column = np.asarray(
                [codes[v] if isinstance(v, str) else v for v in column.ravel().tolist()]
            ).reshape(column.shape)
        except KeyError as error:
            raise ValueError(
                f"{where}: unknown enum name {error.args[0]!r} (known: {', '.join(codes)})"
            ) from None
    column = _broadcast(packet, field.name, column, shape)
    if column.dtype.kind not in "biuf":
        raise ValueError(f"{where}: needs numbers, not {column.dtype}")
    kind = np.dtype(NUMERIC_TYPES[field.type]).newbyteorder("=")
    if kind.kind == "f":
        with np.errstate(over="ignore"):
            converted = column.astype(kind)
        if np.any(np.isfinite(column) & ~np.isfinite(converted)):
            raise ValueError(f"{where}: a value overflows {field.type}")
        return converted
    info = np.iinfo(kind)
    if field.scale is not None:
        with np.errstate(invalid="ignore", over="ignore"):
            column = np.rint(column.astype(np.float64) / field.scale)  # round half to even
        low, high = info.min * field.scale, info.max * field.scale
        low, high = min(low, high), max(low, high)
        unit = f" {field.unit}" if field.unit else ""
        limits = f"{low:g}..{high:g}{unit}"
    else:
        limits = f"{info.min}..{info.max}"
        if column.dtype.kind == "f" and not np.all(np.floor(column) == column):
            raise ValueError(f"{where}: values must be whole numbers")
    if column.size and not (
        np.all(np.isfinite(column)) and column.min() >= info.min and column.max() <= info.max
    ):
        raise ValueError(f"{where}: a value is outside {limits}")
    return column.astype(kind)
