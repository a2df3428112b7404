"""The packet dictionary as tables for people (Markdown) and programs (JSON).

Pure and deterministic: the same TOML always gives the same text, so the packet-dictionary
part of the interface document can be this output verbatim and a test can say so.
"""

from __future__ import annotations

from typing import Any

from groundstation.core.ccsds import CRC_BYTES, HEADER_BYTES
from groundstation.core.definitions import FieldDef, PacketDef, VehicleDictionary

__all__ = ["dictionary_json", "dictionary_markdown"]


def dictionary_json(dictionary: VehicleDictionary) -> dict[str, Any]:
    """Every packet and field with all it declares; enum and bit keys as decimal strings."""
    return {
        "vehicle": dictionary.vehicle,
        "packets": [
            {
                "apid": packet.apid,
                "name": packet.name,
                "description": packet.description,
                "min_length": packet.min_length,
                "max_length": packet.max_length,
                "samples": packet.samples,
                "sample_interval_s": packet.sample_interval_s,
                "fields": [_field_json(field) for field in packet.fields],
            }
            for packet in dictionary.packets.values()
        ],
    }


def _field_json(field: FieldDef) -> dict[str, Any]:
    return {
        "name": field.name,
        "offset": field.offset,
        "type": field.type,
        "size": field.size,
        "scale": field.scale,
        "unit": field.unit,
        "enum": None if field.enum is None else {str(k): v for k, v in field.enum.items()},
        "bits": None if field.bits is None else {str(k): v for k, v in field.bits.items()},
        "description": field.description,
    }


def dictionary_markdown(dictionary: VehicleDictionary) -> str:
    """One section per vehicle: per APID a field table, then its enum and flag-bit tables."""
    lines = [f"### Vehicle `{dictionary.vehicle}`", ""]
    for packet in dictionary.packets.values():
        lines += _packet_markdown(packet)
    return "\n".join(lines).rstrip("\n") + "\n"


def _packet_markdown(packet: PacketDef) -> list[str]:
    lines = [f"**APID {packet.apid} `{packet.name}`** — {_packet_summary(packet)}", ""]
    if packet.samples > 1:
        record = packet.record_dtype.itemsize
        first = packet.fields[0].name
        lines += [
            f"{packet.samples} samples of {record} bytes, one after another, sample k "
            f"(0–{packet.samples - 1}) at packet time + k × {packet.sample_interval_s!r} s; "
            f"offsets are within one sample, and each field decodes as {packet.samples} values "
            f"(in XTCE `{first}_0` … `{first}_{packet.samples - 1}`).",
            "",
        ]
    lines += ["| off | name | type | calibration / unit |", "| --- | --- | --- | --- |"]
    for field in sorted(packet.fields, key=lambda f: f.offset):
        lines.append(f"| {field.offset} | {field.name} | {_type(field)} | {_calibration(field)} |")
    lines.append("")
    for field in packet.fields:
        if field.enum is not None:
            lines += [f"`{packet.name}.{field.name}` values:", "", "| value | name |"]
            lines.append("| --- | --- |")
            lines += [f"| {value} | {name} |" for value, name in field.enum.items()]
            lines.append("")
        if field.bits is not None:
            lines += [f"`{packet.name}.{field.name}` bits:", "", "| bit | name |"]
            lines.append("| --- | --- |")
            lines += [f"| {bit} | {name} |" for bit, name in field.bits.items()]
            lines.append("")
    return lines


def _packet_summary(packet: PacketDef) -> str:
    overhead = HEADER_BYTES + CRC_BYTES
    if packet.fixed_length:
        size = f"body {packet.max_length - overhead} bytes, packet {packet.max_length} bytes"
    else:
        size = (
            f"body {packet.min_length - overhead} to "
            f"{packet.max_length - overhead} bytes, packet {packet.min_length} to "
            f"{packet.max_length} bytes"
        )
    return f"{packet.description}, {size}" if packet.description else size


def _type(field: FieldDef) -> str:
    if field.is_text:
        return "UTF-8 text to the end of the body"
    return field.type


def _calibration(field: FieldDef) -> str:
    parts: list[str] = []
    if field.enum is not None:
        parts.append("enum (values below; another value decodes as its number)")
    if field.bits is not None:
        parts.append("flag byte, decoded as an integer (bits below)")
    if field.scale is not None:
        parts.append(f"×{field.scale!r}")
    if field.unit is not None:
        parts.append(field.unit)
    if field.description is not None:
        parts.append(f"— {field.description}")
    return " ".join(parts)
