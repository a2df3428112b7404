"""JSON records of decoded packets (groundstation.core.records), as `decode` and `replay` print
them."""

from __future__ import annotations

import json
import struct

from groundstation.core.decoder import PacketDecoder
from groundstation.core.definitions import load_dictionary
from groundstation.core.records import packet_records, summary
from tests.icd_packets import EVR_FIXED, HELI_HK, HELI_IMU, HELI_NAV, hand_pack, time_of

INGENUITY = load_dictionary("ingenuity")


def test_records_per_packet_in_input_order() -> None:
    """ok packets carry fields (enum names, flag ints, IMU lists, text); others do not.

    1. HK with mode 3 (FLIGHT), IMU, EVR, HK with mode 9 (outside the table), a bad CRC,
       an unknown APID, a duplicate, then a malformed tail.
    2. Each record as the issue specifies; the tail is only {"result", "offset"}.
    """
    hk = HELI_HK.pack(3, 0b101, 7912, -1234, 87, -61, 2150, -325, 2537, 2541)
    odd_mode = HELI_HK.pack(9, 0, 0, 0, 0, 0, 0, 0, 0, 0)
    imu = HELI_IMU.pack(*range(60))
    evr = EVR_FIXED.pack(2, 77) + "spin-up ✓".encode()
    buffer = b"".join(
        [
            hand_pack(100, 1, hk, coarse=5, fine=0x8000),
            hand_pack(102, 1, imu),
            hand_pack(103, 1, evr),
            hand_pack(100, 2, odd_mode),
            hand_pack(101, 1, HELI_NAV.pack(*[0.0] * 9, 0, 0, 0), crc=0),
            hand_pack(500, 3, b""),
            hand_pack(100, 2, odd_mode),
            b"\x08",
        ]
    )
    records = list(packet_records(PacketDecoder(INGENUITY).decode([buffer]), INGENUITY))
    assert [r["result"] for r in records] == [
        "ok", "ok", "ok", "ok", "crc_error", "unknown_apid", "duplicate", "malformed"
    ]  # fmt: skip
    first = records[0]
    assert first == {
        "apid": 100,
        "name": "HELI_HK",
        "seq": 1,
        "time": time_of(5, 0x8000),
        "result": "ok",
        "fields": {
            "mode": "FLIGHT",
            "flags": 5,
            "battery_voltage": 7912 * 0.001,
            "battery_current": -1234 * 0.01,
            "battery_soc": 87,
            "link_rssi": -61,
            "battery_temp": 2150 * 0.01,
            "avionics_temp": -325 * 0.01,
            "rotor_rpm_upper": 2537,
            "rotor_rpm_lower": 2541,
        },
    }
    assert records[1]["fields"]["ax"] == [round(k * 6 * 0.001, 3) for k in range(10)]
    assert records[1]["fields"]["gz"] == [round((k * 6 + 5) * 0.0001, 4) for k in range(10)]
    assert records[2]["fields"] == {"severity": "WARNING", "event_id": 77, "message": "spin-up ✓"}
    assert records[3]["fields"]["mode"] == 9  # outside the enum table: its number
    assert "fields" not in records[4]
    assert records[5]["name"] is None
    assert records[5]["apid"] == 500
    assert "fields" not in records[6]
    assert records[7] == {"result": "malformed", "offset": len(buffer) - 1}
    json.dumps(records, allow_nan=False)  # all plain JSON values


def test_non_finite_floats_are_null() -> None:
    """JSON has no NaN or infinity: an f32 field holding one is written as null."""
    body = HELI_NAV.pack(float("nan"), float("inf"), *[0.0] * 7, 0, 0, 0)
    result = PacketDecoder(INGENUITY).decode([hand_pack(101, 0, body)])
    (record,) = packet_records(result, INGENUITY)
    assert record["fields"]["pos_x"] is None
    assert record["fields"]["pos_y"] is None


def test_summary_adds_up_calls() -> None:
    """Totals over several results: all six result names, net loss per APID as strings.
    Counts 0 and 3 lose 1 and 2; 1 arrives late (older than 3) and takes one back."""
    decoder = PacketDecoder(INGENUITY)
    nav = HELI_NAV.pack(*[0.0] * 9, 0, 0, 0)
    first = decoder.decode([hand_pack(101, 0, nav) + hand_pack(101, 3, nav, coarse=700_000_003)])
    late = hand_pack(101, 1, nav, coarse=700_000_001)
    second = decoder.decode([late + struct.pack(">H", 0x0865)])
    totals = summary([first, second], decode_seconds=0.5)
    assert totals == {
        "packets": 4,
        "results": {
            **{"ok": 3, "crc_error": 0, "malformed": 1, "unknown_apid": 0},
            **{"duplicate": 0, "clock_error": 0},
        },
        "lost": {"100": 0, "101": 1, "102": 0, "103": 0},
        "packets_per_second": 8.0,
    }
    assert summary([], decode_seconds=0.0)["packets_per_second"] is None
