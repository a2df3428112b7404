"""CCSDS space packet framing (ICD section 3): header layout, bit fields, sizes, SCLK.

One definition for everything that reads or builds packets: the decoder, the encoder,
the dictionary checks and the simulator's hand-made faulty packets.
"""

from __future__ import annotations

import struct
from typing import Final

import numpy as np

# Primary header (6 bytes) then secondary header (SCLK, 6 bytes), big-endian; a CRC-16
# closes every packet.
PRIMARY_HEADER_BYTES: Final = 6
SECONDARY_HEADER_BYTES: Final = 6
HEADER_BYTES: Final = PRIMARY_HEADER_BYTES + SECONDARY_HEADER_BYTES
CRC_BYTES: Final = 2
# The data length field counts the bytes after the primary header, minus one.
PACKET_LENGTH_OFFSET: Final = PRIMARY_HEADER_BYTES + 1
MAX_PACKET_BYTES: Final = PRIMARY_HEADER_BYTES + 0x10000

HEADER_DTYPE: Final = np.dtype(
    [
        ("packet_id", ">u2"),  # version 3 bits, type 1 bit, sec. header flag 1 bit, APID 11
        ("sequence", ">u2"),  # sequence flags 2 bits, sequence count 14 bits
        ("data_length", ">u2"),  # bytes after the primary header - 1
        ("coarse", ">u4"),  # SCLK seconds
        ("fine", ">u2"),  # SCLK 1/65536 s
    ]
)
HEADER_STRUCT: Final = struct.Struct(">HHHIH")  # the same header, one packet at a time

# Packet id word: the fixed bits, then the APID.
PACKET_ID_FIXED_MASK: Final = 0xF800
PACKET_ID_FIXED: Final = 0x0800  # version 0, type 0 (telemetry), secondary header flag 1
APID_BITS: Final = 11
APID_MASK: Final = (1 << APID_BITS) - 1
MAX_APID: Final = APID_MASK

# Sequence word: the flags, then the count.
SEQ_FLAGS_MASK: Final = 0xC000
SEQ_FLAGS_UNSEGMENTED: Final = 0xC000
SEQ_COUNT_MASK: Final = 0x3FFF
SEQ_COUNT_MODULUS: Final = SEQ_COUNT_MASK + 1

# Secondary header: spacecraft clock, coarse seconds and 1/65536 s since the SCLK epoch.
SCLK_EPOCH_UNIX_S: Final = 946728000  # 2000-01-01T12:00:00 UTC; leap seconds ignored (ICD 3)
FINE_PER_SECOND: Final = 65536
MAX_COARSE: Final = 0xFFFFFFFF
