"""CRC-16/CCITT-FALSE: the check vector, and the compiled form against the scalar one."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from groundstation.core.crc import crc16, crc16_rows
from tests.icd_packets import crc_bitwise


def test_check_vector() -> None:
    """The catalogue check value of CRC-16/CCITT-FALSE: "123456789" -> 0x29B1."""
    assert crc16(b"123456789") == 0x29B1
    assert crc16_rows(np.frombuffer(b"123456789", dtype=np.uint8).reshape(1, 9))[0] == 0x29B1


def test_empty_message_is_the_initial_value() -> None:
    """No bytes leave the register at init 0xFFFF, in both forms (also for zero-width rows)."""
    assert crc16(b"") == 0xFFFF
    assert crc16_rows(np.zeros((3, 0), dtype=np.uint8)).tolist() == [0xFFFF] * 3
    assert crc16_rows(np.zeros((0, 7), dtype=np.uint8)).shape == (0,)


@given(st.binary(max_size=300))
def test_scalar_matches_bitwise_definition(data: bytes) -> None:
    """The table-driven scalar CRC equals a bit-by-bit transcription of the ICD definition."""
    assert crc16(data) == crc_bitwise(data)


@given(
    st.integers(min_value=0, max_value=40).flatmap(
        lambda width: st.lists(st.binary(min_size=width, max_size=width), max_size=30)
    )
)
def test_rows_match_scalar(messages: list[bytes]) -> None:
    """crc16_rows gives each row's scalar CRC, for even and odd widths alike."""
    width = len(messages[0]) if messages else 5
    rows = np.frombuffer(b"".join(messages), dtype=np.uint8).reshape(len(messages), width)
    assert crc16_rows(rows).tolist() == [crc16(m) for m in messages]


@given(st.binary(min_size=200, max_size=400), st.integers(1, 9), st.integers(0, 30))
def test_rows_of_strided_views(data: bytes, step: int, width: int) -> None:
    """Zero-copy views (row stride != width, odd start offsets) give the same CRCs."""
    buffer = np.frombuffer(data, dtype=np.uint8)
    rows = np.lib.stride_tricks.as_strided(
        buffer[1:], shape=((len(data) - 1 - width) // step, width), strides=(step, 1)
    )
    assert crc16_rows(rows).tolist() == [crc16(bytes(row)) for row in rows]


def test_many_rows_of_odd_width() -> None:
    """Many rows of a width with an odd byte after the 8-byte steps match the scalar CRC."""
    rows = np.random.default_rng(7).integers(0, 256, size=(40_000, 5), dtype=np.uint8)
    assert crc16_rows(rows).tolist() == [crc16(row.tobytes()) for row in rows]


def test_packet_wide_rows() -> None:
    """HELI_IMU-wide rows (134 bytes: sixteen 8-byte steps and 6 bytes) match the scalar CRC."""
    rows = np.random.default_rng(8).integers(0, 256, size=(9_000, 134), dtype=np.uint8)
    assert crc16_rows(rows).tolist() == [crc16(row.tobytes()) for row in rows]


def test_appended_crc_leaves_zero_residue() -> None:
    """A message followed by its big-endian CRC has CRC 0 (the decoder relies on this)."""
    message = b"mars relay"
    assert crc16(message + crc16(message).to_bytes(2, "big")) == 0


def test_rows_reject_other_shapes() -> None:
    """crc16_rows is for (n, L) uint8 arrays only: anything else is a programmer error."""
    with pytest.raises(ValueError, match=r"\(n, L\) uint8"):
        crc16_rows(np.zeros(5, dtype=np.uint8))
    with pytest.raises(ValueError, match=r"\(n, L\) uint8"):
        crc16_rows(np.zeros((2, 5), dtype=np.uint16))
