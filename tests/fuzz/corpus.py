"""The fixed corpus of hostile payloads: resource exhaustion and malformed input, by name.

Every entry is built deterministically from the ICD (sections 2, 3 and 6) and says what the
ground station must make of it. The unit tests (tests/test_hostile.py), the daemon-level
test (tests/test_reliability_hostile.py) and the fuzz target's seed corpus
(`python -m tests.fuzz.corpus DIR`) all read this one list.
"""

from __future__ import annotations

import argparse
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import msgpack

from groundstation.core.envelope import InvalidReason, pack_envelope
from tests.icd_packets import HELI_HK, crc_bitwise, hand_pack

DEFAULT_MAX_PAYLOAD_BYTES: Final = 16 * 1024 * 1024  # ICD section 6 default
HUGE_U32: Final = b"\xff\xff\xff\xff"  # a declared length of 4 GiB - 1 (or 4 G entries)
DEEP: Final = 100_000  # nesting levels, far past msgpack's stack limit (1024)

# ICD section 2: the six fields of a valid envelope, in the order pack_envelope writes them.
VALID_FIELDS: Final[dict[str, object]] = {
    "v": 1,
    "relay": "perseverance",
    "vehicle": "ingenuity",
    "seq": 1,
    "ert": 1.7e9,
    "packets": b"\x00" * 30,
}


@dataclass(frozen=True, kw_only=True)
class HostileEnvelope:
    """One MQTT payload the daemon must refuse with `reason`, whatever it costs to look at."""

    name: str
    payload: bytes
    reason: InvalidReason
    why: str


@dataclass(frozen=True, kw_only=True)
class HostileBuffer:
    """One `packets` buffer of a valid envelope whose packets the decoder must not trust."""

    name: str
    buffer: bytes
    ok_packets: int  # packets that are fine and must still be decoded
    why: str


def packb(value: object) -> bytes:
    """msgpack bytes of a value, str as str and bytes as bin (ICD section 2)."""
    packed: bytes = msgpack.packb(value, use_bin_type=True)
    return packed


def envelope_with_raw(
    field: str | None = None, raw: bytes = b"", *, extra: Sequence[tuple[bytes, bytes]] = ()
) -> bytes:
    """A valid envelope's map, with one field's value (or extra raw key/value pairs) spliced in.

    The splice is raw msgpack bytes, so that it can declare lengths it does not have.
    """
    entries = [
        (packb(key), raw if key == field else packb(value)) for key, value in VALID_FIELDS.items()
    ]
    entries.extend(extra)
    return b"\xde" + struct.pack(">H", len(entries)) + b"".join(k + v for k, v in entries)


def valid_envelope(seq: int = 1) -> bytes:
    """A valid envelope holding one valid HELI_HK packet (the message that must follow)."""
    packet = hand_pack(100, seq % 16384, bytes(HELI_HK.size))
    return pack_envelope(
        relay="perseverance", vehicle="ingenuity", seq=seq, ert=1.7e9, packets=packet
    )


def hostile_envelopes(
    *, max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
) -> list[HostileEnvelope]:
    """The envelope-level corpus; `max_payload_bytes` sizes the one over-the-limit payload."""
    valid = valid_envelope()
    return [
        # Declared lengths far beyond the payload: must not be allocated up front.
        _case("bin32_4gib_alone", b"\xc6" + HUGE_U32, "not_msgpack", "a bin claiming 4 GiB"),
        _case(
            "bin32_4gib_as_packets",
            envelope_with_raw("packets", b"\xc6" + HUGE_U32 + bytes(16)),
            "not_msgpack",
            "the packets bin claims 4 GiB and holds 16 bytes",
        ),
        _case(
            "str32_4gib_as_relay",
            envelope_with_raw("relay", b"\xdb" + HUGE_U32 + b"a" * 16),
            "not_msgpack",
            "the relay string claims 4 GiB",
        ),
        _case("array32_4g_alone", b"\xdd" + HUGE_U32, "not_msgpack", "4 G array entries"),
        _case("map32_4g_alone", b"\xdf" + HUGE_U32, "not_msgpack", "4 G map entries"),
        _case(
            "array32_4g_in_extra_key",
            envelope_with_raw(extra=[(packb("x"), b"\xdd" + HUGE_U32)]),
            "not_msgpack",
            "an ignored extra key still may not declare 4 G entries",
        ),
        _case("ext32_4gib_alone", b"\xc9" + HUGE_U32 + b"\x05", "not_msgpack", "a 4 GiB ext"),
        _case(
            "str_over_str_limit_as_relay",
            envelope_with_raw("relay", packb("r" * (64 * 1024 + 1))),
            "not_msgpack",
            "a real string longer than the unpacker's 64 KiB string limit",
        ),
        # Deep nesting: msgpack's C unpacker has a fixed stack; recursion must not happen.
        _case("deep_arrays", b"\x91" * DEEP + b"\xc0", "not_msgpack", "arrays nested 100 k deep"),
        _case(
            "deep_maps",
            (b"\x81" + packb("k")) * DEEP + b"\xc0",
            "not_msgpack",
            "maps nested 100 k deep",
        ),
        _case(
            "deep_in_extra_key",
            envelope_with_raw(extra=[(packb("x"), b"\x91" * DEEP + b"\xc0")]),
            "not_msgpack",
            "deep nesting under an ignored key",
        ),
        # Huge real containers: rejected by the entry limits, not after building them.
        _case(
            "huge_map_100k_int_keys",
            b"\xdf"
            + struct.pack(">I", 100_000)
            + b"".join(packb(i) + b"\xc0" for i in range(100_000)),
            "not_msgpack",
            "a real map of 100 k entries",
        ),
        _case(
            "huge_map_1000_str_keys",
            envelope_with_raw(extra=[(packb(f"k{i}"), b"\xc0") for i in range(1000)]),
            "not_msgpack",
            "a valid envelope with 1000 extra keys",
        ),
        _case(
            "huge_array_1m_nils_as_packets",
            envelope_with_raw(
                "packets", b"\xdd" + struct.pack(">I", 1_000_000) + b"\xc0" * 1_000_000
            ),
            "not_msgpack",
            "a real array of a million nils",
        ),
        # Keys that are not strings (ICD section 2 keys are str).
        _case(
            "int_key",
            envelope_with_raw(extra=[(packb(1), packb(2))]),
            "not_msgpack",
            "an int key beside valid fields",
        ),
        _case("array_key", b"\x81\x92\x01\x02\x03", "not_msgpack", "an unhashable array key"),
        _case("map_key", b"\x81\x81\x01\x02\x03", "not_msgpack", "an unhashable map key"),
        _case("nil_key", b"\x81\xc0\x01", "not_msgpack", "a nil key"),
        _case("float_key", b"\x81" + packb(1.5) + b"\x01", "not_msgpack", "a float key"),
        _case(
            "bin_keys",
            b"\x86" + b"".join(packb(k.encode()) + packb(v) for k, v in VALID_FIELDS.items()),
            "bad_version",
            "every field name as bin instead of str: no field is found",
        ),
        # Extension types: none is part of the envelope.
        _case("fixext1_type5_alone", b"\xd4\x05\x00", "not_msgpack", "an unknown ext"),
        _case(
            "fixext1_as_packets",
            envelope_with_raw("packets", b"\xd4\x05\x00"),
            "not_msgpack",
            "an unknown ext where the bin belongs",
        ),
        _case(
            "timestamp_ext_as_ert",
            envelope_with_raw("ert", b"\xd6\xff" + struct.pack(">I", 1_700_000_000)),
            "not_msgpack",
            "msgpack's own timestamp ext is not a float",
        ),
        _case(
            "empty_ext_as_relay",
            envelope_with_raw("relay", b"\xc7\x00\x05"),
            "bad_relay",
            "a zero-length ext passes the unpacker but is not a str",
        ),
        _case("empty_ext_alone", b"\xc7\x00\x05", "not_a_map", "a zero-length ext"),
        # Length fields past the end of the payload.
        _case(
            "str8_past_end_as_relay",
            envelope_with_raw("relay", b"\xd9\xc8abc"),
            "not_msgpack",
            "a string claiming 200 bytes of which 3 are there",
        ),
        _case(
            "bin16_past_end_as_packets",
            envelope_with_raw("packets", b"\xc5\x10\x00" + bytes(10)),
            "not_msgpack",
            "a bin claiming 4096 bytes of which 10 are there",
        ),
        _case(
            "map16_past_end",
            b"\xde\x00\x0a" + packb("v") + packb(1),
            "not_msgpack",
            "a map claiming 10 entries of which 1 is there",
        ),
        _case(
            "float64_past_end_as_ert",
            envelope_with_raw("ert", b"\xcb\x41\xd9"),
            "not_msgpack",
            "a float64 cut after 2 of its 8 bytes",
        ),
        _case("truncated_envelope", valid[:-1], "not_msgpack", "a valid envelope minus a byte"),
        _case("empty_payload", b"", "not_msgpack", "zero bytes"),
        _case("two_envelopes", valid + valid, "not_msgpack", "trailing data after the map"),
        _case(
            "invalid_utf8_relay",
            envelope_with_raw("relay", b"\xa3\xff\xfe\xfd"),
            "not_msgpack",
            "a str that is not UTF-8",
        ),
        # Values of the right msgpack family but out of the ICD's range.
        _case(
            "seq_uint64",
            envelope_with_raw("seq", packb(2**64 - 1)),
            "bad_seq",
            "seq past uint32",
        ),
        _case(
            "seq_int64_min",
            envelope_with_raw("seq", packb(-(2**63))),
            "bad_seq",
            "a negative seq",
        ),
        _case("ert_infinite", envelope_with_raw("ert", packb(float("inf"))), "bad_ert", "inf ert"),
        _case(
            "version_uint64",
            envelope_with_raw("v", packb(2**64 - 1)),
            "bad_version",
            "a version past any int the daemon knows",
        ),
        # The configured maximum (ICD section 6): refused before unpacking.
        _case(
            "payload_over_the_limit",
            pack_envelope(
                relay="perseverance",
                vehicle="ingenuity",
                seq=1,
                ert=1.7e9,
                packets=bytes(max_payload_bytes),
            ),
            "too_large",
            "a valid envelope one packets-bin larger than the limit",
        ),
    ]


def hostile_buffers() -> list[HostileBuffer]:
    """The packet-level corpus for vehicle `ingenuity` (ICD sections 3, 4 and 6)."""
    housekeeping = hand_pack(100, 1, bytes(HELI_HK.size))
    return [
        _buffer(
            "length_past_end",
            hand_pack(100, 1, bytes(HELI_HK.size), length=65_542),
            0,
            "a header declaring 64 KiB in a 30-byte buffer",
        ),
        _buffer("one_byte", b"\x08", 0, "less than a primary header"),
        _buffer("five_bytes", housekeeping[:5], 0, "a primary header cut short"),
        _buffer("all_ones", b"\xff" * 4096, 0, "4 KiB of 0xFF: version 7, a command packet"),
        _buffer("all_zeros", bytes(4096), 0, "4 KiB of zeros: no secondary header"),
        _buffer(
            "wrong_version",
            hand_pack(100, 1, bytes(HELI_HK.size), first_word=(0b111 << 13) | (1 << 11) | 100),
            0,
            "version bits 7",
        ),
        _buffer(
            "segmented",
            _with_sequence_flags(housekeeping, 0b01),
            0,
            "a first segment: the ICD only allows unsegmented packets",
        ),
        _buffer(
            "known_apid_wrong_length",
            hand_pack(100, 1, bytes(HELI_HK.size - 1)) + housekeeping,
            0,
            "HELI_HK one byte short: the rest of the buffer cannot be trusted",
        ),
        _buffer(
            "event_body_too_long",
            hand_pack(103, 1, b"\x01\x00\x01" + b"x" * 201),
            0,
            "an event report with 201 bytes of text (200 allowed)",
        ),
        _buffer(
            "event_invalid_utf8",
            hand_pack(103, 1, b"\x01\x00\x01" + b"\xff\xfe\xfd"),
            1,
            "an event report whose text is not UTF-8 still decodes",
        ),
        _buffer(
            "crc_error_then_ok",
            hand_pack(100, 1, bytes(HELI_HK.size), crc=0) + hand_pack(100, 2, bytes(HELI_HK.size)),
            1,
            "a bad CRC, then a good packet in the same buffer",
        ),
        _buffer(
            "many_unknown_apids",
            b"".join(hand_pack(2000, i % 16384, b"") for i in range(70_000)),
            0,
            "70 k empty packets of an APID not in the dictionary (~1 MiB)",
        ),
        _buffer(
            "many_duplicates",
            housekeeping * 10_000,
            1,
            "the same housekeeping packet 10 k times",
        ),
        _buffer(
            "sequence_jump",
            hand_pack(100, 0, bytes(HELI_HK.size)) + hand_pack(100, 8000, bytes(HELI_HK.size)),
            2,
            "7999 packets skipped between two good ones",
        ),
    ]


def _case(name: str, payload: bytes, reason: InvalidReason, why: str) -> HostileEnvelope:
    return HostileEnvelope(name=name, payload=payload, reason=reason, why=why)


def _buffer(name: str, buffer: bytes, ok_packets: int, why: str) -> HostileBuffer:
    return HostileBuffer(name=name, buffer=buffer, ok_packets=ok_packets, why=why)


def _with_sequence_flags(packet: bytes, flags: int) -> bytes:
    """The packet with other sequence flags and its CRC recomputed (ICD section 3)."""
    word = struct.unpack_from(">H", packet, 2)[0]
    unprotected = packet[:2] + struct.pack(">H", (flags << 14) | (word & 0x3FFF)) + packet[4:-2]
    return unprotected + struct.pack(">H", crc_bitwise(unprotected))


def write_seed_corpus(directory: Path) -> int:
    """Write every corpus entry as one seed file for the fuzzer; returns how many."""
    directory.mkdir(parents=True, exist_ok=True)
    # The fuzz target reads the first byte as the mode: 0 envelope, 1 packet buffer.
    count = 0
    for case in hostile_envelopes(max_payload_bytes=1 << 20):
        (directory / f"envelope-{case.name}").write_bytes(b"\x00" + case.payload)
        count += 1
    for buffer in hostile_buffers():
        (directory / f"packets-{buffer.name}").write_bytes(b"\x01" + buffer.buffer)
        count += 1
    (directory / "envelope-valid").write_bytes(b"\x00" + valid_envelope())
    return count + 1


def main() -> None:
    """`python -m tests.fuzz.corpus DIR`: the seed corpus for tests/fuzz/fuzz_ingest.py."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("directory", type=Path)
    args = parser.parse_args()
    print(f"wrote {write_seed_corpus(args.directory)} seeds to {args.directory}")


if __name__ == "__main__":
    main()
