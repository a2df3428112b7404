"""CRC-16/CCITT-FALSE (ICD section 3): a scalar reference, and a compiled form for many packets.

The compiled form reads eight bytes per step ("slicing by 8"): by linearity, the register
after eight bytes is the XOR of eight table lookups, one per byte, each table holding a
byte's effect followed by 0-7 zero bytes. The eight lookups are independent, so the
processor runs them in parallel instead of waiting on one lookup per byte.
"""

from __future__ import annotations

import functools
from typing import Final

import numpy as np
from numpy.typing import NDArray

from groundstation.core.compiled import compiled

__all__ = ["crc16", "crc16_rows"]

POLY: Final = 0x1021
INIT: Final = 0xFFFF
_SLICES: Final = 8


@functools.cache
def _byte_table() -> tuple[int, ...]:
    """T[x]: register ``x << 8`` clocked through 8 zero bits (the classic byte table)."""
    table = []
    for value in range(256):
        crc = value << 8
        for _ in range(8):
            crc = ((crc << 1) ^ POLY if crc & 0x8000 else crc << 1) & 0xFFFF
        table.append(crc)
    return tuple(table)


@functools.cache
def _slice_tables() -> NDArray[np.int64]:
    """Row k: a byte's effect on the register followed by k zero bytes (row 0 is T)."""
    tables = np.zeros((_SLICES, 256), dtype=np.int64)
    tables[0] = _byte_table()
    for k in range(1, _SLICES):
        before = tables[k - 1]
        tables[k] = ((before << 8) & 0xFFFF) ^ tables[0][before >> 8]
    tables.flags.writeable = False
    return tables


def crc16(data: bytes | bytearray | memoryview) -> int:
    """CRC-16/CCITT-FALSE of one message: the reference the compiled version is tested against."""
    table = _byte_table()
    crc = INIT
    for byte in bytes(data):
        crc = ((crc << 8) & 0xFFFF) ^ table[(crc >> 8) ^ byte]
    return crc


def crc16_rows(rows: NDArray[np.uint8]) -> NDArray[np.uint16]:
    """CRC-16/CCITT-FALSE of each row of an (n, L) array (any strides)."""
    if rows.ndim != 2 or rows.dtype != np.uint8:
        raise ValueError(f"crc16_rows needs an (n, L) uint8 array, not {rows.dtype} {rows.shape}")
    result = np.empty(rows.shape[0], dtype=np.uint16)
    _crc_rows(rows, _slice_tables(), result)
    return result


@compiled(
    "void(Array(uint8, 2, 'A', readonly=True), Array(int64, 2, 'C', readonly=True),"
    " Array(uint16, 1, 'C'))"
)
def _crc_rows(rows: NDArray[np.uint8], t: NDArray[np.int64], out: NDArray[np.uint16]) -> None:
    length = rows.shape[1]
    whole = length - length % 8
    for i in range(rows.shape[0]):
        row = rows[i]
        crc = np.int64(INIT)
        for j in range(0, whole, 8):
            # The register meets the first two bytes; the other six enter as they are.
            first = crc ^ (np.int64(row[j]) << 8 | np.int64(row[j + 1]))
            crc = (
                t[7, first >> 8]
                ^ t[6, first & 0xFF]
                ^ t[5, row[j + 2]]
                ^ t[4, row[j + 3]]
                ^ t[3, row[j + 4]]
                ^ t[2, row[j + 5]]
                ^ t[1, row[j + 6]]
                ^ t[0, row[j + 7]]
            )
        for j in range(whole, length):
            crc = ((crc << 8) & 0xFFFF) ^ t[0, (crc >> 8) ^ np.int64(row[j])]
        out[i] = crc
