"""The decoder against packets hand-packed from the ICD tables, and its verdicts (ICD 3, 4, 6)."""

from __future__ import annotations

import math
import struct
import warnings
from typing import Any

import numpy as np
import pytest

from groundstation.core.decoder import RESULTS, DecodeResult, PacketDecoder
from groundstation.core.definitions import VehicleDictionary, load_dictionary
from groundstation.core.encoder import encode_packets
from tests.icd_packets import (
    EVR_FIXED,
    HBS_LINK,
    HELI_HK,
    HELI_IMU,
    HELI_NAV,
    ROVER_NAV,
    hand_pack,
    time_of,
)

COARSE, FINE = 700_000_000, 0x4000
NAV_BODY = HELI_NAV.pack(1.5, -2.25, 5.0, 0.5, -0.125, 0.0, 0.1, -0.02, 3.0, 4999, 2, 3)
HK_BODY = HELI_HK.pack(3, 0b10101, 7912, -1234, 87, -61, 2150, -325, 2537, 2541)


@pytest.fixture(scope="module")
def ingenuity() -> VehicleDictionary:
    return load_dictionary("ingenuity")


@pytest.fixture(scope="module")
def perseverance() -> VehicleDictionary:
    return load_dictionary("perseverance")


def nav(seq: int, *, at: int | None = None, **overrides: Any) -> bytes:
    """A valid HELI_NAV packet (or a broken one, through hand_pack's overrides), dated `at`
    seconds after COARSE, by default its count: packet time runs on with the count."""
    return hand_pack(
        101, seq, NAV_BODY, coarse=COARSE + (seq if at is None else at), fine=FINE, **overrides
    )


def results(result: DecodeResult) -> list[str]:
    return [RESULTS[code] for code in result.result.tolist()]


def decode(dictionary: VehicleDictionary, *buffers: bytes) -> DecodeResult:
    return PacketDecoder(dictionary).decode(list(buffers))


# --- golden packets, field by field ----------------------------------------------------------


def test_heli_hk_fields(ingenuity: VehicleDictionary) -> None:
    """HELI_HK: enum and flags as raw integers, scaled fields as float64 (ICD 4)."""
    result = decode(ingenuity, hand_pack(100, 42, HK_BODY, coarse=COARSE, fine=FINE))
    assert results(result) == ["ok"]
    columns = result.columns[100]
    assert columns.name == "HELI_HK"
    assert columns.seq.tolist() == [42]
    assert columns.time.tolist() == [time_of(COARSE, FINE)]
    fields = columns.fields
    assert fields["mode"].dtype == np.int64
    assert fields["mode"].tolist() == [3]
    assert fields["flags"].tolist() == [0b10101]
    assert fields["battery_voltage"].dtype == np.float64
    assert fields["battery_voltage"].tolist() == [7912 * 0.001]
    assert fields["battery_current"].tolist() == [-1234 * 0.01]
    assert fields["battery_soc"].tolist() == [87]
    assert fields["link_rssi"].tolist() == [-61]
    assert fields["battery_temp"].tolist() == [2150 * 0.01]
    assert fields["avionics_temp"].tolist() == [-325 * 0.01]
    assert fields["rotor_rpm_upper"].tolist() == [2537]
    assert fields["rotor_rpm_lower"].tolist() == [2541]


def test_heli_nav_fields(ingenuity: VehicleDictionary) -> None:
    """HELI_NAV: f32 values exact as float32, lidar altitude scaled, enum and flags raw."""
    fields = decode(ingenuity, nav(7)).columns[101].fields
    names = ["pos_x", "pos_y", "pos_z", "vel_x", "vel_y", "vel_z", "roll", "pitch", "yaw"]
    expected = [1.5, -2.25, 5.0, 0.5, -0.125, 0.0, 0.1, -0.02, 3.0]
    for name, value in zip(names, expected, strict=True):
        assert fields[name].dtype == np.float64
        assert fields[name].tolist() == [float(np.float32(value))], name
    assert fields["lidar_alt"].tolist() == [4999 * 0.001]
    assert fields["nav_state"].tolist() == [2]
    assert fields["nav_flags"].tolist() == [3]


def test_heli_imu_fields(ingenuity: VehicleDictionary) -> None:
    """HELI_IMU: each axis is (n, 10), sample by sample, accelerations x0.001, rates x0.0001."""
    raw = np.arange(-30, 30).reshape(10, 6) * 517
    packet = hand_pack(102, 9, HELI_IMU.pack(*raw.ravel().tolist()), coarse=COARSE, fine=FINE)
    fields = decode(ingenuity, packet).columns[102].fields
    for axis, name in enumerate(["ax", "ay", "az", "gx", "gy", "gz"]):
        scale = 0.001 if name.startswith("a") else 0.0001
        assert fields[name].shape == (1, 10)
        assert fields[name][0].tolist() == (raw[:, axis] * scale).tolist(), name


@pytest.mark.parametrize(("vehicle", "apid"), [("ingenuity", 103), ("perseverance", 203)])
def test_event_report_fields(vehicle: str, apid: int) -> None:
    """HELI_EVR / ROVER_EVR: severity and id, text decoded as UTF-8 to the end of the body."""
    message = "motor temp ✓ nominal"
    body = EVR_FIXED.pack(4, 0xBEEF) + message.encode()
    empty = EVR_FIXED.pack(1, 2)
    result = decode(
        load_dictionary(vehicle),
        hand_pack(apid, 1, body) + hand_pack(apid, 2, empty),
    )
    assert results(result) == ["ok", "ok"]
    fields = result.columns[apid].fields
    assert fields["severity"].tolist() == [4, 1]
    assert fields["event_id"].tolist() == [0xBEEF, 2]
    assert fields["message"].tolist() == [message, ""]


def test_event_text_with_bad_utf8_is_replaced(ingenuity: VehicleDictionary) -> None:
    """Invalid UTF-8 in event text becomes U+FFFD instead of losing the event (decisions.md)."""
    body = EVR_FIXED.pack(3, 1) + b"bad \xff\xfe byte"
    fields = decode(ingenuity, hand_pack(103, 0, body)).columns[103].fields
    assert fields["message"].tolist() == ["bad \ufffd\ufffd byte"]


def test_rover_nav_and_hbs_link_fields(perseverance: VehicleDictionary) -> None:
    """ROVER_NAV and HBS_LINK of the rover dictionary, including a u32 above 2**31."""
    rover = hand_pack(200, 5, ROVER_NAV.pack(10.5, -3.0, 0.25, 1.5, 1234.5, 1, 0))
    link = hand_pack(201, 6, HBS_LINK.pack(1, -70, 93, 0, 4_000_000_000, 123_456))
    result = decode(perseverance, rover + link)
    assert results(result) == ["ok", "ok"]
    nav_fields = result.columns[200].fields
    assert [nav_fields[n].tolist()[0] for n in ("pos_x", "pos_y", "pos_z")] == [10.5, -3.0, 0.25]
    assert nav_fields["heading"].tolist() == [1.5]
    assert nav_fields["odometry"].tolist() == [1234.5]
    assert nav_fields["drive_state"].tolist() == [1]
    assert nav_fields["reserved"].tolist() == [0]
    link_fields = result.columns[201].fields
    assert link_fields["heli_link_up"].tolist() == [1]
    assert link_fields["hbs_rssi"].tolist() == [-70]
    assert link_fields["link_quality"].tolist() == [93]
    assert link_fields["packets_relayed"].tolist() == [4_000_000_000]
    assert link_fields["buffer_used"].tolist() == [123_456]
    assert result.columns[201].index.tolist() == [1]


def test_per_packet_arrays(ingenuity: VehicleDictionary) -> None:
    """Per-entry buffer, offset, length, apid, seq and time, in input order across buffers."""
    first = nav(1) + hand_pack(100, 8, HK_BODY, coarse=COARSE, fine=FINE)
    second = nav(2)
    result = decode(ingenuity, first, second)
    assert result.buffer.tolist() == [0, 0, 1]
    assert result.offset.tolist() == [0, 54, 0]
    assert result.length.tolist() == [54, 30, 54]
    assert result.apid.tolist() == [101, 100, 101]
    assert result.seq.tolist() == [1, 8, 2]
    assert result.time.tolist() == [time_of(COARSE + t, FINE) for t in (1, 0, 2)]
    assert result.columns[101].index.tolist() == [0, 2]
    assert result.counts() == {(101, "ok"): 2, (100, "ok"): 1}


# --- verdicts -----------------------------------------------------------------------------------


def test_crc_error_is_counted_and_lost(ingenuity: VehicleDictionary) -> None:
    """A bad CRC is crc_error (not used), and its count is lost once a later packet arrives."""
    result = decode(ingenuity, nav(0) + nav(1, crc=0x1234) + nav(2))
    assert results(result) == ["ok", "crc_error", "ok"]
    assert result.apid.tolist() == [101, 101, 101]
    assert result.columns[101].seq.tolist() == [0, 2]
    assert result.lost[101] == 1


def test_crc_error_whatever_the_apid(ingenuity: VehicleDictionary) -> None:
    """An APID outside the dictionary with a bad CRC is crc_error, not unknown_apid."""
    result = decode(ingenuity, hand_pack(300, 0, b"\x00" * 4, crc=0))
    assert results(result) == ["crc_error"]


def test_unknown_apid(ingenuity: VehicleDictionary) -> None:
    """A CRC-valid APID outside the dictionary is unknown_apid, of any sound length."""
    result = decode(ingenuity, hand_pack(300, 0, b"\x01" * 9) + nav(0) + hand_pack(2047, 5, b""))
    assert results(result) == ["unknown_apid", "ok", "unknown_apid"]
    assert result.apid.tolist() == [300, 101, 2047]
    assert result.seq.tolist() == [0, 0, 5]
    assert set(result.columns) == {101}


@pytest.mark.parametrize(
    ("broken", "tail_apid", "after"),
    [
        pytest.param(nav(3, length=55)[:55], 101, nav(2), id="wrong-length-for-known-apid"),
        pytest.param(nav(3)[:53], 101, b"", id="length-past-the-end"),
        pytest.param(nav(3)[:5], 101, b"", id="short-primary-header"),
        pytest.param(nav(3)[:1], -1, b"", id="one-byte"),
        pytest.param(nav(3, first_word=0x2865), -1, nav(2), id="version-bits-not-zero"),
        pytest.param(nav(3, first_word=0x1865), -1, nav(2), id="type-bit-set"),
        pytest.param(nav(3, first_word=0x0065), -1, nav(2), id="no-secondary-header-flag"),
        pytest.param(
            hand_pack(300, 0, b"", length=10)[:10], 300, nav(2), id="shorter-than-both-headers"
        ),
    ],
)
def test_malformed_tail_covers_the_rest_of_the_buffer(
    ingenuity: VehicleDictionary, broken: bytes, tail_apid: int, after: bytes
) -> None:
    """A structural fault makes one malformed entry from there to the end of its buffer.

    1. Two good packets, the broken bytes, then maybe a good packet that can't be trusted.
    2. Expect ok, ok, one malformed entry covering all the rest, in byte accounting too;
       the tail's apid is the header's when its first two bytes look like a packet id.
    """
    buffer = nav(0) + nav(1) + broken + after
    result = decode(ingenuity, buffer)
    assert results(result) == ["ok", "ok", "malformed"]
    assert result.offset.tolist() == [0, 54, 108]
    assert result.length.tolist() == [54, 54, len(buffer) - 108]
    assert result.apid.tolist() == [101, 101, tail_apid]
    assert result.seq[2] == -1
    assert math.isnan(result.time[2])


def test_unsegmented_flags_are_required(ingenuity: VehicleDictionary) -> None:
    """Sequence flags other than 0b11 make the packet malformed (ICD 3: unsegmented only)."""
    packet = bytearray(nav(4))
    packet[2] &= 0x7F  # sequence flags 0b01
    result = decode(ingenuity, nav(3) + bytes(packet))
    assert results(result) == ["ok", "malformed"]


def test_duplicate(ingenuity: VehicleDictionary) -> None:
    """A count already seen in the window is duplicate and not used for values."""
    result = decode(ingenuity, nav(5) + nav(6) + nav(5))
    assert results(result) == ["ok", "ok", "duplicate"]
    assert result.columns[101].index.tolist() == [0, 1]
    assert result.lost[101] == 0


# --- sequence accounting through the decoder -------------------------------------------------


def test_sequence_wraps_at_16384(ingenuity: VehicleDictionary) -> None:
    """Counts 16382, 16383, 0, 1 advance by one each: all ok, nothing lost."""
    packets = (nav(seq, at=at) for at, seq in enumerate((16382, 16383, 0, 1)))
    result = decode(ingenuity, b"".join(packets))
    assert results(result) == ["ok"] * 4
    assert result.lost[101] == 0


def test_late_packet_takes_one_back(ingenuity: VehicleDictionary) -> None:
    """0, 1, 3 loses 2 (lost 1); 2 arriving later is ok and takes it back (lost -1 then)."""
    decoder = PacketDecoder(ingenuity)
    first = decoder.decode([nav(0) + nav(1) + nav(3)])
    assert first.lost[101] == 1
    late = decoder.decode([nav(2)])
    assert results(late) == ["ok"]
    assert late.lost[101] == -1
    again = decoder.decode([nav(2)])
    assert results(again) == ["duplicate"]
    assert again.lost[101] == 0


def test_window_edges(ingenuity: VehicleDictionary) -> None:
    """d == 8192 is ahead (8191 lost); a count 8191 behind newest is within the window.

    1. 5, then 8196 (d = 8191) one second on: ahead, 8190 lost.
    2. 5 again, its time again: 8191 behind newest, seen -> duplicate.
    3. 6, older than newest: late, counted lost -> ok, lost -1.
    4. 4, newer than newest: d = 8192 -> ahead, 8191 more lost.
    """
    decoder = PacketDecoder(ingenuity)
    steps = [
        (5, 10, "ok", 0),
        (8196, 20, "ok", 8190),
        (5, 10, "duplicate", 0),
        (6, 11, "ok", -1),
        (4, 30, "ok", 8191),
    ]
    for seq, at, verdict, lost in steps:
        result = decoder.decode([nav(seq, at=at)])
        assert results(result) == [verdict], seq
        assert result.lost[101] == lost, seq


def test_count_before_the_first_packet_takes_nothing_back(ingenuity: VehicleDictionary) -> None:
    """100 then 99: 99 predates the first packet seen, so it was never counted lost."""
    result = decode(ingenuity, nav(100) + nav(99))
    assert results(result) == ["ok", "ok"]
    assert result.lost[101] == 0


def test_state_is_carried_across_calls_and_per_apid(ingenuity: VehicleDictionary) -> None:
    """The same decoder remembers counts per APID between calls; APIDs do not interfere."""
    decoder = PacketDecoder(ingenuity)
    decoder.decode([b"".join(nav(seq) for seq in range(10))])
    result = decoder.decode([nav(5) + hand_pack(100, 5, HK_BODY) + nav(12)])
    assert results(result) == ["duplicate", "ok", "ok"]
    assert result.lost == {100: 0, 101: 2, 102: 0, 103: 0}


def test_malformed_tail_in_the_middle_buffer(ingenuity: VehicleDictionary) -> None:
    """A malformed tail ends only its own buffer; the next buffer decodes normally.

    Byte accounting: the entries of each buffer add up to its length.
    """
    buffers = [nav(0) + nav(1), nav(2) + b"\x08\x65\xc0", nav(3) + nav(4)]
    result = decode(ingenuity, *buffers)
    assert results(result) == ["ok", "ok", "ok", "malformed", "ok", "ok"]
    assert result.buffer.tolist() == [0, 0, 1, 1, 2, 2]
    assert result.offset.tolist() == [0, 54, 0, 54, 0, 54]
    for number, buffer in enumerate(buffers):
        assert int(result.length[result.buffer == number].sum()) == len(buffer)
    assert result.lost[101] == 0


def test_empty_input(ingenuity: VehicleDictionary) -> None:
    """No buffers, or empty ones, give no entries and no loss."""
    for buffers in ([], [b""], [b"", b""]):
        result = PacketDecoder(ingenuity).decode(buffers)
        assert result.result.shape == (0,)
        assert result.columns == {}
        assert set(result.lost.values()) == {0}


def test_memoryview_buffers(ingenuity: VehicleDictionary) -> None:
    """memoryview buffers (zero-copy slices of a payload) decode like bytes."""
    payload = b"xx" + nav(0) + nav(1)
    result = PacketDecoder(ingenuity).decode([memoryview(payload)[2:]])
    assert results(result) == ["ok", "ok"]
    result = PacketDecoder(ingenuity).decode([memoryview(payload)[2:56], memoryview(payload)[56:]])
    assert results(result) == ["ok", "ok"]


def test_signalling_nan_is_data(ingenuity: VehicleDictionary) -> None:
    """An f32 field holding a signalling NaN decodes to NaN without a floating-point warning."""
    body = struct.pack(">I", 0x7FA00000) + NAV_BODY[4:]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fields = decode(ingenuity, hand_pack(101, 0, body)).columns[101].fields
    assert math.isnan(fields["pos_x"][0])


def test_fixed_length_apids_sharing_a_length_with_events(ingenuity: VehicleDictionary) -> None:
    """An event report as long as a HELI_NAV packet (54 bytes) is not decoded as navigation."""
    event = hand_pack(103, 0, EVR_FIXED.pack(1, 9) + b"x" * 37)
    assert len(event) == 54
    result = decode(ingenuity, nav(0) + event + nav(1))
    assert results(result) == ["ok", "ok", "ok"]
    assert result.columns[101].index.tolist() == [0, 2]
    assert result.columns[103].fields["message"].tolist() == ["x" * 37]


def test_many_buffers_and_one_buffer_agree(ingenuity: VehicleDictionary) -> None:
    """Decoding a large stream in one call (two threads) equals decoding it in small calls.

    The stream has CRC errors, duplicates and gaps, and is large enough for the threaded path.
    """
    packet = ingenuity.packets[101]
    count = 60_000
    rng = np.random.default_rng(3)
    seq = np.arange(count) % 16384
    seq[rng.integers(0, count, 50)] = rng.integers(0, 16384, 50)  # duplicates and jumps
    columns: dict[str, object] = {
        f.name: rng.normal(size=count) for f in packet.fields if f.type == "f32"
    }
    columns |= {"lidar_alt": rng.uniform(0, 60, count), "nav_state": 2, "nav_flags": 1}
    stream = bytearray(
        encode_packets(packet, seq=seq, time=1.7e9 + np.arange(count) / 30, columns=columns)
    )
    for offset in rng.integers(0, count, 40) * 54 + rng.integers(12, 54, 40):
        stream[offset] ^= 0x10  # body or CRC only: a broken header would end the buffer
    whole = PacketDecoder(ingenuity).decode([bytes(stream)])
    pieces = PacketDecoder(ingenuity)
    parts = [
        pieces.decode([bytes(stream[start : start + 54_000])])
        for start in range(0, len(stream), 54_000)
    ]
    assert whole.result.tolist() == np.concatenate([p.result for p in parts]).tolist()
    assert whole.seq.tolist() == np.concatenate([p.seq for p in parts]).tolist()
    assert whole.lost[101] == sum(p.lost[101] for p in parts)
    for name, values in whole.columns[101].fields.items():
        joined = np.concatenate([p.columns[101].fields[name] for p in parts])
        np.testing.assert_array_equal(values, joined)


def test_joined_buffers_must_be_the_buffers_back_to_back(ingenuity: VehicleDictionary) -> None:
    """`joined` spares the decoder its copy; one of another size is a caller's error."""
    buffers = [nav(seq) + nav(seq + 10) for seq in range(3)]
    decoder = PacketDecoder(ingenuity, calibrate="lazy")
    given = decoder.decode(buffers, joined=memoryview(b"".join(buffers)))
    own = PacketDecoder(ingenuity, calibrate="lazy").decode(buffers)
    assert np.array_equal(given.offset, own.offset)
    assert np.array_equal(given.buffer, own.buffer)
    assert given.counts() == own.counts() == {(101, "ok"): 6}
    assert given.columns[101].fields["pos_z"].tolist() == [5.0] * 6
    with pytest.raises(ValueError, match="joined holds"):
        decoder.decode(buffers, joined=memoryview(b"".join(buffers[:2])))
