"""The XTCE export (ICD section 9) against the official schema and an independent decoder.

`space_packet_parser` reads the exported XTCE and decodes the same packets as
`groundstation decode`: 2,000 per APID of both vehicles built by the simulator, and 2,000
per APID hand-packed with `struct` from the ICD tables with values across each field's
range. Every engineering value must be equal: f32 fields bit for bit at f32, calibrated
values as the same float64 product, enums by name, text as the same string.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import struct
import tempfile
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xmlschema
from groundstation.simulators.physics import Flight
from groundstation.simulators.profiles import PROFILES
from groundstation.simulators.stream import PacketStream
from groundstation.simulators.stress import StressGenerator
from groundstation.simulators.telemetry import fly
from hypothesis import given, settings
from hypothesis import strategies as st
from space_packet_parser.xtce.definitions import XtcePacketDefinition

from groundstation.cli import main
from groundstation.core.decoder import PacketDecoder
from groundstation.core.definitions import (
    PacketDef,
    load_dictionaries,
    load_dictionary,
    parse_dictionary,
)
from groundstation.core.records import packet_records
from groundstation.core.xtce import XTCE_NAMESPACE, export_xtce
from tests.icd_packets import (
    EVR_FIXED,
    HBS_LINK,
    HELI_HK,
    HELI_IMU,
    SCLK_EPOCH,
    crc_bitwise,
    hand_pack,
)

PACKETS_PER_APID = 2000
DICTIONARIES = load_dictionaries()
VEHICLES = sorted(DICTIONARIES)
NS = {"xtce": XTCE_NAMESPACE}
HEADER_NAMES = [
    "ccsds_version",
    "ccsds_type",
    "ccsds_sec_hdr_flag",
    "ccsds_apid",
    "ccsds_seq_flags",
    "ccsds_seq_count",
    "ccsds_length",
    "sclk_coarse",
    "sclk_fine",
]


@cache
def xtce_schema() -> xmlschema.XMLSchema:
    """The XTCE 1.2 XSD as space_packet_parser ships it (the OMG's SpaceSystem.xsd)."""
    xsd = resources.files("space_packet_parser") / "xtce" / "schemas" / "SpaceSystem.xsd"
    with resources.as_file(xsd) as path:
        return xmlschema.XMLSchema(str(path))


def spp_definition(text: str, tmp_path: Path) -> XtcePacketDefinition:
    path = tmp_path / "dictionary.xml"
    path.write_text(text, encoding="utf-8")
    return XtcePacketDefinition.from_xtce(path)


# --- the document ----------------------------------------------------------------------


@pytest.mark.parametrize("vehicle", VEHICLES)
def test_export_validates_against_the_xtce_1_2_schema(vehicle: str) -> None:
    """The whole export of each vehicle is valid XTCE 1.2, with no error at all."""
    text = export_xtce(DICTIONARIES[vehicle])
    errors = [f"{e.path}: {e.reason}" for e in xtce_schema().iter_errors(text)]
    assert errors == []


@pytest.mark.parametrize("vehicle", VEHICLES)
def test_export_has_the_structure_of_icd_section_9(vehicle: str) -> None:
    """Space system named after the vehicle, abstract header, one restricted container per
    APID whose entries are the body in wire order (IMU unrolled) and then `crc`."""
    dictionary = DICTIONARIES[vehicle]
    root = ET.fromstring(export_xtce(dictionary))
    assert root.tag == f"{{{XTCE_NAMESPACE}}}SpaceSystem"
    assert root.get("name") == vehicle
    containers = {
        c.get("name"): c for c in root.iterfind(".//xtce:ContainerSet/xtce:SequenceContainer", NS)
    }
    header = containers.pop("CCSDSPacket")
    assert header.get("abstract") == "true"
    assert entries(header) == HEADER_NAMES
    assert set(containers) == {p.name for p in dictionary.packets.values()}
    for packet in dictionary.packets.values():
        container = containers[packet.name]
        base = container.find("xtce:BaseContainer", NS)
        assert base is not None
        assert base.get("containerRef") == "CCSDSPacket"
        comparison = base.find("xtce:RestrictionCriteria/xtce:Comparison", NS)
        assert comparison is not None
        assert (comparison.get("parameterRef"), comparison.get("value")) == (
            "ccsds_apid",
            str(packet.apid),
        )
        assert entries(container) == [*expected_body_names(packet), "crc"]
    crc_type = root.find(".//xtce:IntegerParameterType[@name='crc_Type']", NS)
    assert crc_type is not None
    assert crc_type.get("signed") == "false"
    encoding = crc_type.find("xtce:IntegerDataEncoding", NS)
    assert encoding is not None
    assert encoding.get("sizeInBits") == "16"
    crc = encoding.find("xtce:ErrorDetectCorrect/xtce:CRC", NS)
    assert crc is not None
    assert (crc.get("width"), crc.get("reflectData", "false")) == ("16", "false")
    assert [
        crc.findtext(f"xtce:{tag}", namespaces=NS)
        for tag in ("Polynomial", "InitRemainder", "FinalXOR")
    ] == ["1021", "FFFF", "0000"]


def entries(container: ET.Element) -> list[str]:
    return [
        str(e.get("parameterRef"))
        for e in container.iterfind("xtce:EntryList/xtce:ParameterRefEntry", NS)
    ]


def expected_body_names(packet: PacketDef) -> list[str]:
    fields = sorted(packet.fields, key=lambda f: f.offset)
    if packet.samples == 1:
        return [f.name for f in fields]
    return [f"{f.name}_{k}" for k in range(packet.samples) for f in fields]


def test_calibrations_enums_flags_and_text_are_expressed_in_xtce() -> None:
    """×0.001 V is a one-term polynomial with its unit; enums list every label; flag bytes
    are plain integers that name their bits; the EVR text's size comes from the length."""
    root = ET.fromstring(export_xtce(DICTIONARIES["ingenuity"]))

    def parameter_type(name: str) -> ET.Element:
        found = root.find(f".//xtce:ParameterTypeSet/*[@name='{name}_Type']", NS)
        assert found is not None, name
        return found

    voltage = parameter_type("battery_voltage")
    assert voltage.tag == f"{{{XTCE_NAMESPACE}}}FloatParameterType"
    assert [u.text for u in voltage.iterfind("xtce:UnitSet/xtce:Unit", NS)] == ["V"]
    term = voltage.find(".//xtce:PolynomialCalibrator/xtce:Term", NS)
    assert term is not None
    assert (float(term.get("coefficient", "")), term.get("exponent")) == (
        0.001,
        "1",
    )
    current = parameter_type("battery_current").find("xtce:IntegerDataEncoding", NS)
    assert current is not None
    assert current.get("encoding") == "twosComplement"
    assert current.get("byteOrder") == "mostSignificantByteFirst"

    mode = parameter_type("mode")
    assert mode.tag == f"{{{XTCE_NAMESPACE}}}EnumeratedParameterType"
    labels = [(e.get("value"), e.get("label")) for e in mode.iterfind(".//xtce:Enumeration", NS)]
    table = DICTIONARIES["ingenuity"].by_name("HELI_HK").field("mode").enum
    assert table is not None
    assert labels == [(str(v), n) for v, n in table.items()]

    flags = parameter_type("flags")
    assert flags.tag == f"{{{XTCE_NAMESPACE}}}IntegerParameterType"
    assert "bit0 heater_on" in flags.get("shortDescription", "")
    assert "bit4 motor_overtemp" in flags.get("shortDescription", "")

    message = parameter_type("message").find("xtce:StringDataEncoding", NS)
    assert message is not None
    assert message.get("encoding") == "UTF-8"
    dynamic = message.find("xtce:Variable/xtce:DynamicValue", NS)
    assert dynamic is not None
    ref = dynamic.find("xtce:ParameterInstanceRef", NS)
    adjust = dynamic.find("xtce:LinearAdjustment", NS)
    assert ref is not None
    assert ref.get("parameterRef") == "ccsds_length"
    assert ref.get("useCalibratedValue") == "false"
    # text bytes = data length + 7 - 12 - 3 - 2 = data length - 10 (ICD sections 3 and 4)
    assert adjust is not None
    assert (adjust.get("slope"), adjust.get("intercept")) == ("8", "-80")
    variable = message.find("xtce:Variable", NS)
    assert variable is not None
    assert variable.get("maxSizeInBits") == str(8 * 200)


def test_export_is_deterministic() -> None:
    """The same dictionary gives the same bytes (no dates, no set order)."""
    for vehicle in VEHICLES:
        assert export_xtce(load_dictionary(vehicle)) == export_xtce(DICTIONARIES[vehicle])


# --- packets ---------------------------------------------------------------------------


def simulated_packets(vehicle: str) -> list[bytes]:
    """2,000 packets per APID from the simulator: a flown flight 3 first (as many as it
    has, up to 2,000), then the stress generator's packets to make up the rest."""
    rng = np.random.default_rng(17)
    counts: dict[int, int] = {}
    telemetry = fly(
        Flight(PROFILES["flight3"], rng),
        dictionaries=DICTIONARIES,
        rng=rng,
        start_time=1_700_000_000.0,
        counts=counts,
        store_and_forward=False,
    )
    chosen: dict[int, list[bytes]] = {apid: [] for apid in DICTIONARIES[vehicle].packets}
    for packet in stream_packets(telemetry.streams[vehicle]):
        apid = int.from_bytes(packet[:2], "big") & 0x7FF
        if len(chosen[apid]) < PACKETS_PER_APID:
            chosen[apid].append(packet)
    wanted = {
        DICTIONARIES[vehicle].packets[apid].name: float(PACKETS_PER_APID - len(packets))
        for apid, packets in chosen.items()
        if len(packets) < PACKETS_PER_APID
    }
    generator = StressGenerator(
        dictionaries=DICTIONARIES,
        mix=wanted,
        rate_pps=sum(wanted.values()),
        start_time=telemetry.end_time + 10.0,
        counts=counts,
        max_packets=None,
        duration_s=1.0,
    )
    for streams, _ in generator.chunks():
        for packet in stream_packets(streams[vehicle]):
            chosen[int.from_bytes(packet[:2], "big") & 0x7FF].append(packet)
    assert {apid: len(p) for apid, p in chosen.items()} == dict.fromkeys(chosen, PACKETS_PER_APID)
    return [packet for packets in chosen.values() for packet in packets]


def stream_packets(stream: PacketStream) -> Iterator[bytes]:
    data = stream.data.tobytes()
    for offset, length in zip(stream.offset.tolist(), stream.length.tolist(), strict=True):
        yield data[offset : offset + length]


def random_f32_words(rng: random.Random, n: int) -> list[int]:
    """Any 32-bit pattern: normal, subnormal, zero, infinite and NaN floats alike."""
    return [rng.getrandbits(32) for _ in range(n)]


TEXT_ALPHABET = "abcxyz 019_-.:ÅéüßΩ°→✓🚁"


def random_text(rng: random.Random) -> bytes:
    text = "".join(rng.choice(TEXT_ALPHABET) for _ in range(rng.randint(0, 200)))
    encoded = text.encode("utf-8")
    while len(encoded) > 200:  # trim whole characters to the ICD's 200 bytes
        text = text[:-1]
        encoded = text.encode("utf-8")
    return encoded


# Bodies of ICD section 4, hand-packed; f32 fields as raw 32-bit words.
BODIES: dict[int, Callable[[random.Random], bytes]] = {
    100: lambda r: HELI_HK.pack(
        r.randint(0, 5),
        r.randint(0, 255),
        r.randint(0, 0xFFFF),
        r.randint(-0x8000, 0x7FFF),
        r.randint(0, 255),
        r.randint(-128, 127),
        r.randint(-0x8000, 0x7FFF),
        r.randint(-0x8000, 0x7FFF),
        r.randint(0, 0xFFFF),
        r.randint(0, 0xFFFF),
    ),
    101: lambda r: struct.pack(
        ">9IHBB", *random_f32_words(r, 9), r.randint(0, 0xFFFF), r.randint(0, 4), r.randint(0, 255)
    ),
    102: lambda r: HELI_IMU.pack(*(r.randint(-0x8000, 0x7FFF) for _ in range(60))),
    103: lambda r: EVR_FIXED.pack(r.randint(0, 4), r.randint(0, 0xFFFF)) + random_text(r),
    200: lambda r: struct.pack(
        ">5IBB", *random_f32_words(r, 5), r.randint(0, 2), r.randint(0, 255)
    ),
    201: lambda r: HBS_LINK.pack(
        r.randint(0, 255),
        r.randint(-128, 127),
        r.randint(0, 255),
        r.randint(0, 255),
        r.getrandbits(32),
        r.getrandbits(32),
    ),
    203: lambda r: EVR_FIXED.pack(r.randint(0, 4), r.randint(0, 0xFFFF)) + random_text(r),
}


def _crc_table() -> tuple[int, ...]:
    """ICD section 3's CRC of each single byte from a zero register, for a byte-wise CRC."""
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
        table.append(crc & 0xFFFF)
    return tuple(table)


CRC_TABLE = _crc_table()


def crc_bytewise(data: bytes) -> int:
    """The same CRC a byte at a time (8x faster than crc_bitwise; checked against it)."""
    crc = 0xFFFF
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ CRC_TABLE[(crc >> 8) ^ byte]
    return crc


def test_bytewise_crc_is_the_icd_crc() -> None:
    """The fast CRC used below equals the bit-by-bit transcription of ICD section 3."""
    rng = random.Random(3)
    for length in (0, 1, 2, 14, 217):
        data = bytes(rng.getrandbits(8) for _ in range(length))
        assert crc_bytewise(data) == crc_bitwise(data)
    assert crc_bytewise(b"123456789") == 0x29B1  # the catalogue check value


def hand_packed_packets(vehicle: str) -> list[bytes]:
    """2,000 packets per APID with random values in range; times rise, counts wrap."""
    rng = random.Random(f"xtce-{vehicle}")
    packets = []
    for apid in DICTIONARIES[vehicle].packets:
        for i in range(PACKETS_PER_APID):
            unprotected = hand_pack(
                apid,
                (i * 7) % 16384,
                BODIES[apid](rng),
                coarse=700_000_000 + i,
                fine=rng.randint(0, 0xFFFF),
                crc=0,
            )[:-2]
            packets.append(unprotected + struct.pack(">H", crc_bytewise(unprotected)))
    return packets


SOURCES: dict[str, Callable[[str], list[bytes]]] = {
    "simulator": simulated_packets,
    "hand-packed": hand_packed_packets,
}


@pytest.mark.parametrize("source", sorted(SOURCES))
@pytest.mark.parametrize("vehicle", VEHICLES)
def test_independent_decoder_agrees_with_groundstation_decode(
    vehicle: str, source: str, tmp_path: Path
) -> None:
    """1. Build 2,000 packets of every APID of the vehicle. 2. Decode them with the ground
    station's decoder into the records `groundstation decode` prints. 3. Decode each with
    space_packet_parser from the XTCE export. 4. Header, every field and the CRC agree."""
    dictionary = DICTIONARIES[vehicle]
    packets = SOURCES[source](vehicle)
    records = list(
        packet_records(PacketDecoder(dictionary).decode([b"".join(packets)]), dictionary)
    )
    assert [r["result"] for r in records] == ["ok"] * len(packets)
    definition = spp_definition(export_xtce(dictionary), tmp_path)
    compared: dict[int, int] = {}
    for packet, record in zip(packets, records, strict=True):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # spp warns when it parses fewer bits than given
            parsed = definition.parse_bytes(packet)
        compare(dictionary.packets[record["apid"]], packet, record, parsed)
        compared[record["apid"]] = compared.get(record["apid"], 0) + 1
    assert compared == dict.fromkeys(dictionary.packets, PACKETS_PER_APID)


def compare(packet: PacketDef, data: bytes, record: dict[str, Any], parsed: Any) -> None:
    """One packet: spp's values (a dict of parameter name -> value) against our record."""
    where = f"{packet.name} seq {record['seq']}"
    names = list(parsed.keys())
    assert names == [*HEADER_NAMES, *expected_body_names(packet), "crc"], where
    assert parsed["ccsds_apid"] == packet.apid == record["apid"], where
    assert parsed["ccsds_seq_count"] == record["seq"], where
    coarse, fine = struct.unpack_from(">IH", data, 6)
    assert (parsed["sclk_coarse"], float(parsed["sclk_fine"])) == (coarse, fine / 65536), where
    assert (SCLK_EPOCH + parsed["sclk_coarse"]) + float(parsed["sclk_fine"]) == record["time"]
    assert parsed["crc"] == crc_bytewise(data[:-2]), where
    for field in packet.fields:
        ours = record["fields"][field.name]
        if packet.samples > 1:
            theirs = [parsed[f"{field.name}_{k}"] for k in range(packet.samples)]
            for k, (a, b) in enumerate(zip(ours, theirs, strict=True)):
                assert same_value(field.type, a, b), f"{where} {field.name}_{k}: {a!r} != {b!r}"
        else:
            theirs = parsed[field.name]
            assert same_value(field.type, ours, theirs), (
                f"{where} {field.name}: {ours!r} != {theirs!r}"
            )


def same_value(type_name: str, ours: Any, theirs: Any) -> bool:
    """Equal to the field type's precision; our JSON's null is a non-finite float."""
    if isinstance(ours, str):
        return ours == str(theirs)
    if ours is None:
        return not math.isfinite(float(theirs))
    if type_name == "f32":
        return bool(np.float32(ours) == np.float32(float(theirs)))
    if isinstance(ours, float):
        # raw × scale, which our records print at the scale's precision (30.993, not
        # 30.993000000000002): equal to far below the type's resolution.
        return math.isclose(ours, float(theirs), rel_tol=1e-12, abs_tol=1e-12)
    return bool(ours == int(theirs))


# --- what XTCE cannot say --------------------------------------------------------------


def test_enum_value_outside_the_table_is_a_number_for_us_and_an_error_for_xtce(
    tmp_path: Path,
) -> None:
    """ICD section 4 decodes an enum value outside its table as the number; XTCE has no
    such fallback, and space_packet_parser refuses the packet (docs/interfaces.md)."""
    dictionary = DICTIONARIES["ingenuity"]
    body = HELI_HK.pack(9, 0, 23100, 0, 80, -60, 0, 0, 0, 0)
    packet = hand_pack(100, 1, body)
    record = next(packet_records(PacketDecoder(dictionary).decode([packet]), dictionary))
    assert record["fields"]["mode"] == 9
    definition = spp_definition(export_xtce(dictionary), tmp_path)
    with pytest.raises(ValueError, match="9"):
        definition.parse_bytes(packet)


def test_invalid_utf8_text_is_replaced_by_us_and_refused_by_space_packet_parser(
    tmp_path: Path,
) -> None:
    """Event text that is not UTF-8: our decoder shows U+FFFD for the bad bytes, so the
    operator still sees the event; space_packet_parser raises (docs/interfaces.md)."""
    dictionary = DICTIONARIES["ingenuity"]
    packet = hand_pack(103, 1, EVR_FIXED.pack(3, 77) + b"\xff\xfeok")
    record = next(packet_records(PacketDecoder(dictionary).decode([packet]), dictionary))
    assert record["result"] == "ok"
    assert record["fields"]["message"] == "\ufffd\ufffdok"
    definition = spp_definition(export_xtce(dictionary), tmp_path)
    with pytest.raises(UnicodeDecodeError):
        definition.parse_bytes(packet)


# --- a changed dictionary --------------------------------------------------------------


def test_a_field_added_to_the_toml_appears_in_the_export(tmp_path: Path) -> None:
    """1. Copy protocols/ and add a calibrated field `heater_power` to HELI_HK (packet 32
    bytes). 2. Export from the copy. 3. The export validates, names the field with its
    unit and calibrator, and space_packet_parser decodes the new field from a packet."""
    protocols = tmp_path / "protocols"
    shutil.copytree(Path(str(resources.files("groundstation.protocols"))), protocols)
    toml = protocols / "ingenuity.toml"
    text = toml.read_text(encoding="utf-8")
    hk_start = text.index('name = "HELI_HK"')
    text = text[:hk_start] + text[hk_start:].replace("length = 30", "length = 32", 1)
    marker = '  name = "rotor_rpm_lower"\n  offset = 14\n  type = "u16"\n  unit = "rpm"\n'
    assert marker in text
    added = '\n  [[packet.field]]\n  name = "heater_power"\n  offset = 16\n  type = "u16"\n'
    added += '  scale = 0.05\n  unit = "W"\n'
    toml.write_text(text.replace(marker, marker + added), encoding="utf-8")

    dictionary = load_dictionary("ingenuity", protocols)
    exported = export_xtce(dictionary)
    assert list(xtce_schema().iter_errors(exported)) == []
    root = ET.fromstring(exported)
    power = root.find(".//xtce:ParameterTypeSet/*[@name='heater_power_Type']", NS)
    assert power is not None
    assert [u.text for u in power.iterfind("xtce:UnitSet/xtce:Unit", NS)] == ["W"]
    term = power.find(".//xtce:Term", NS)
    assert term is not None
    assert float(term.get("coefficient", "")) == 0.05
    hk = root.find(".//xtce:SequenceContainer[@name='HELI_HK']", NS)
    assert hk is not None
    assert entries(hk)[-2:] == ["heater_power", "crc"]

    body = HELI_HK.pack(3, 1, 23100, -1520, 80, -66, 950, -150, 2537, 2536) + struct.pack(">H", 240)
    packet = hand_pack(100, 1, body)
    parsed = spp_definition(exported, tmp_path).parse_bytes(packet)
    record = next(packet_records(PacketDecoder(dictionary).decode([packet]), dictionary))
    assert record["fields"]["heater_power"] == float(parsed["heater_power"]) == 240 * 0.05


# --- the command line ------------------------------------------------------------------


def test_cli_export_writes_the_same_document(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`export-xtce --out FILE` writes what stdout shows, and both are the export."""
    out = tmp_path / "perseverance.xml"
    assert main(["dictionary", "export-xtce", "--vehicle", "perseverance", "--out", str(out)]) == 0
    assert main(["dictionary", "export-xtce", "--vehicle", "perseverance"]) == 0
    expected = export_xtce(DICTIONARIES["perseverance"])
    assert out.read_text(encoding="utf-8") == expected == capsys.readouterr().out


def test_cli_unknown_vehicle_is_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dictionary", "show", "--vehicle", "voyager"]) == 2
    assert "unknown vehicle 'voyager'" in capsys.readouterr().err


@pytest.mark.parametrize("vehicle", VEHICLES)
def test_show_json_carries_every_field(vehicle: str, capsys: pytest.CaptureFixture[str]) -> None:
    """The JSON form lists every packet and field with the dictionary's own values."""
    assert main(["dictionary", "show", "--vehicle", vehicle, "--format", "json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    dictionary = DICTIONARIES[vehicle]
    assert shown["vehicle"] == vehicle
    assert [p["apid"] for p in shown["packets"]] == list(dictionary.packets)
    for entry, packet in zip(shown["packets"], dictionary.packets.values(), strict=True):
        assert [f["name"] for f in entry["fields"]] == [f.name for f in packet.fields]
        for f, field in zip(entry["fields"], packet.fields, strict=True):
            assert (f["offset"], f["type"], f["scale"], f["unit"]) == (
                field.offset,
                field.type,
                field.scale,
                field.unit,
            )


def markdown_of(vehicle: str, capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["dictionary", "show", "--vehicle", vehicle]) == 0
    return capsys.readouterr().out


def test_show_markdown_has_the_icd_tables(capsys: pytest.CaptureFixture[str]) -> None:
    """A table per APID with offset, name, type and calibration; enum and flag tables."""
    text = markdown_of("ingenuity", capsys)
    assert text == markdown_of("ingenuity", capsys)  # deterministic
    assert "**APID 100 `HELI_HK`** — housekeeping, 1 Hz, body 16 bytes, packet 30 bytes" in text
    assert "| 2 | battery_voltage | u16 | ×0.001 V |" in text
    assert "| 4 | battery_current | i16 | ×0.01 A |" in text
    assert "| 5 | SAFE |" in text
    assert "| 4 | motor_overtemp |" in text
    assert "body 3 to 203 bytes, packet 17 to 217 bytes" in text
    assert "| 3 | message | UTF-8 text to the end of the body |  |" in text
    assert "| 10 | gz | i16 | ×0.0001 rad/s |" in text
    for packet in DICTIONARIES["ingenuity"].packets.values():
        for field in packet.fields:
            assert f"| {field.offset} | {field.name} | " in text
    rover = markdown_of("perseverance", capsys)
    assert rover.startswith("### Vehicle `perseverance`\n")
    assert "| 20 | drive_state | u8 | enum" in rover


# --- any dictionary --------------------------------------------------------------------

_STRUCT_CODES = {"u8": "B", "i8": "b", "u16": "H", "i16": "h", "u32": "I", "i32": "i"}
_FLOAT_WORDS = {"f32": "I", "f64": "Q"}  # floats packed as raw words: any bit pattern
_SIZES = {"u8": 1, "i8": 1, "u16": 2, "i16": 2, "u32": 4, "i32": 4, "f32": 4, "f64": 8}


@st.composite
def packet_documents(draw: st.DrawFn) -> tuple[dict[str, Any], list[tuple[str, int]]]:
    """A one-packet TOML document of any numeric layout, and one packet's raw values."""
    fields: list[dict[str, Any]] = []
    raws: list[tuple[str, int]] = []
    offset = 0
    for i in range(draw(st.integers(1, 8))):
        type_name = draw(st.sampled_from(sorted(_SIZES)))
        field: dict[str, Any] = {"name": f"f{i}", "offset": offset, "type": type_name}
        size = _SIZES[type_name]
        offset += size
        if type_name in _FLOAT_WORDS:
            raws.append((_FLOAT_WORDS[type_name], draw(st.integers(0, 2 ** (8 * size) - 1))))
            fields.append(field)
            continue
        signed = type_name.startswith("i")
        low, high = (
            (-(2 ** (8 * size - 1)), 2 ** (8 * size - 1) - 1)
            if signed
            else (0, 2 ** (8 * size) - 1)
        )
        kind = draw(st.sampled_from(["plain", "scale", "enum", "bits"]))
        raw = draw(st.integers(low, high))
        if kind == "scale":
            field["scale"] = draw(st.sampled_from([0.5, 0.001, -0.25, 1e-6, 3.0]))
            field["unit"] = "V"
        elif kind == "enum":
            others = draw(st.sets(st.integers(low, high), max_size=3))
            field["enum"] = {str(v): f"E{v}".replace("-", "M") for v in {raw, *others}}
        elif kind == "bits":
            field["bits"] = {
                str(b): f"bit{b}"
                for b in draw(st.sets(st.integers(0, 8 * size - 1), min_size=1, max_size=4))
            }
        raws.append((_STRUCT_CODES[type_name], raw))
        fields.append(field)
    document = {
        "vehicle": "testcraft",
        "packet": [
            {
                "apid": draw(st.integers(0, 0x7FF)),
                "name": "PKT",
                "length": 14 + offset,
                "field": fields,
            }
        ],
    }
    return document, raws


@settings(max_examples=25, deadline=None)
@given(packet_documents())
def test_any_numeric_dictionary_exports_valid_xtce_that_decodes_alike(
    case: tuple[dict[str, Any], list[tuple[str, int]]],
) -> None:
    """For any layout of integer, calibrated, enum, flag and float fields: the export
    validates, and space_packet_parser decodes a hand-packed packet as our decoder does."""
    document, raws = case
    dictionary = parse_dictionary(document, source="hypothesis")
    exported = export_xtce(dictionary)
    assert list(xtce_schema().iter_errors(exported)) == []
    (packet_def,) = dictionary.packets.values()
    body = struct.pack(">" + "".join(code for code, _ in raws), *(raw for _, raw in raws))
    packet = hand_pack(packet_def.apid, 5, body)
    record = next(packet_records(PacketDecoder(dictionary).decode([packet]), dictionary))
    assert record["result"] == "ok"
    with tempfile.TemporaryDirectory() as folder:
        parsed = spp_definition(exported, Path(folder)).parse_bytes(packet)
    compare(packet_def, packet, record, parsed)
