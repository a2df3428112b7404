"""Packets hand-packed with `struct` straight from the ICD tables, independent of our code.

The encoder and decoder tests compare against these, so nothing here may import from
`groundstation` (the CRC is a bit-by-bit transcription of ICD section 3, not our tables).
"""

from __future__ import annotations

import struct
from typing import Final

SCLK_EPOCH: Final = 946728000  # ICD section 3: SCLK counts from 2000-01-01T12:00:00 UTC

# Body layouts of ICD section 4, one struct format per APID (big-endian).
HELI_HK: Final = struct.Struct(">BBHhBbhhHH")  # mode flags volt curr soc rssi btemp atemp rpm rpm
HELI_NAV: Final = struct.Struct(">9fHBB")  # pos xyz, vel xyz, roll pitch yaw, lidar, state, flags
HELI_IMU: Final = struct.Struct(">60h")  # 10 samples of ax ay az gx gy gz
EVR_FIXED: Final = struct.Struct(">BH")  # severity, event_id, then UTF-8 text
ROVER_NAV: Final = struct.Struct(">5fBB")  # pos xyz, heading, odometry, drive_state, reserved
HBS_LINK: Final = struct.Struct(">BbBBII")  # link_up rssi quality reserved relayed buffer_used


def crc_bitwise(data: bytes) -> int:
    """CRC-16/CCITT-FALSE one bit at a time: poly 0x1021, init 0xFFFF, no reflection."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def hand_pack(
    apid: int,
    seq: int,
    body: bytes,
    *,
    coarse: int = 700_000_000,
    fine: int = 0,
    length: int | None = None,
    first_word: int | None = None,
    crc: int | None = None,
) -> bytes:
    """One packet per ICD section 3; the keyword overrides build deliberately broken ones."""
    total = 12 + len(body) + 2
    data_length = total - 7 if length is None else length - 7
    word0 = (0b000 << 13) | (0 << 12) | (1 << 11) | apid if first_word is None else first_word
    header = struct.pack(">HHHIH", word0, (0b11 << 14) | seq, data_length, coarse, fine)
    unprotected = header + body
    check = crc_bitwise(unprotected) if crc is None else crc
    return unprotected + struct.pack(">H", check)


def time_of(coarse: int, fine: int) -> float:
    """Packet time of ICD section 3, computed the obvious way."""
    return SCLK_EPOCH + coarse + fine / 65536
