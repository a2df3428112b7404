"""The packet dictionary as XTCE 1.2, the format mission control systems read (ICD section 9).

Pure: a VehicleDictionary in, an XML tree out, built with ElementTree from the compiled
definitions, so a field added to `protocols/*.toml` appears here without code changes.
The space system is named after the vehicle; the abstract container `CCSDSPacket` holds
the primary and secondary headers (ICD section 3); each APID is a container that inherits
it, restricted on the APID, and ends with the parameter `crc`.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Final

from groundstation import __version__
from groundstation.core.ccsds import (
    CRC_BYTES,
    FINE_PER_SECOND,
    HEADER_BYTES,
    PRIMARY_HEADER_BYTES,
)
from groundstation.core.definitions import FieldDef, PacketDef, VehicleDictionary

__all__ = [
    "APID_PARAMETER",
    "CRC_PARAMETER",
    "HEADER_CONTAINER",
    "LENGTH_PARAMETER",
    "XTCE_NAMESPACE",
    "export_xtce",
    "xtce_document",
]

XTCE_NAMESPACE: Final = "http://www.omg.org/spec/XTCE/20180204"
HEADER_CONTAINER: Final = "CCSDSPacket"
APID_PARAMETER: Final = "ccsds_apid"
LENGTH_PARAMETER: Final = "ccsds_length"
CRC_PARAMETER: Final = "crc"
MSB_FIRST: Final = "mostSignificantByteFirst"

# ICD section 3, in wire order: (name, bits, unit or None, description).
_HEADER_FIELDS: Final = (
    ("ccsds_version", 3, None, "packet version number, 0"),
    ("ccsds_type", 1, None, "packet type, 0 telemetry"),
    ("ccsds_sec_hdr_flag", 1, None, "secondary header flag, 1"),
    (APID_PARAMETER, 11, None, "application process identifier"),
    ("ccsds_seq_flags", 2, None, "sequence flags, 3 unsegmented"),
    ("ccsds_seq_count", 14, None, "sequence count per APID, wraps at 16384"),
    (LENGTH_PARAMETER, 16, None, "packet data length: bytes after the primary header - 1"),
    ("sclk_coarse", 32, "s", "SCLK seconds since 2000-01-01T12:00:00 UTC"),
    ("sclk_fine", 16, "s", "SCLK fraction of a second, raw units of 1/65536 s"),
)


@dataclass(frozen=True, kw_only=True)
class _Parameter:
    """One XTCE parameter: its name, its type's name, and the field it reads."""

    name: str
    type_name: str
    description: str | None
    field: FieldDef
    packet: PacketDef


def _q(tag: str) -> str:
    return f"{{{XTCE_NAMESPACE}}}{tag}"


def _sub(parent: ET.Element, tag: str, **attributes: str | None) -> ET.Element:
    """A child element; attributes given as None are left out."""
    present = {key: value for key, value in attributes.items() if value is not None}
    return ET.SubElement(parent, _q(tag), present)


def export_xtce(dictionary: VehicleDictionary) -> str:
    """The XTCE document as text: UTF-8 declaration, `xtce:` prefix, two-space indent."""
    root = xtce_document(dictionary)
    ET.register_namespace("xtce", XTCE_NAMESPACE)  # the prefix Yamcs' examples use
    tree = ET.ElementTree(root)
    ET.indent(tree, space="  ")
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def xtce_document(dictionary: VehicleDictionary) -> ET.Element:
    """The `SpaceSystem` element of one vehicle's packet dictionary."""
    space_system = ET.Element(_q("SpaceSystem"), {"name": dictionary.vehicle})
    _sub(space_system, "Header", validationStatus="Working", version=__version__)
    telemetry = _sub(space_system, "TelemetryMetaData")
    types = _sub(telemetry, "ParameterTypeSet")
    parameters = _sub(telemetry, "ParameterSet")
    containers = _sub(telemetry, "ContainerSet")

    for name, bits, unit, description in _HEADER_FIELDS:
        _header_type(types, name=name, bits=bits, unit=unit, description=description)
        _sub(parameters, "Parameter", name=name, parameterTypeRef=f"{name}_Type")
    _crc_type(types)
    _sub(parameters, "Parameter", name=CRC_PARAMETER, parameterTypeRef=f"{CRC_PARAMETER}_Type")

    header = _sub(
        containers,
        "SequenceContainer",
        name=HEADER_CONTAINER,
        abstract="true",
        shortDescription="CCSDS primary header and SCLK secondary header (ICD section 3)",
    )
    header_entries = _sub(header, "EntryList")
    for name, *_ in _HEADER_FIELDS:
        _sub(header_entries, "ParameterRefEntry", parameterRef=name)

    names = _parameter_names(dictionary)
    declared: set[str] = set()
    declared_types: set[str] = set()
    for packet in dictionary.packets.values():
        container = _sub(
            containers,
            "SequenceContainer",
            name=packet.name,
            shortDescription=packet.description or packet.name,
        )
        entries = _sub(container, "EntryList")
        for parameter in _packet_parameters(packet, names):
            if parameter.type_name not in declared_types:
                declared_types.add(parameter.type_name)
                _parameter_type(types, parameter)
            if parameter.name not in declared:
                declared.add(parameter.name)
                _sub(
                    parameters,
                    "Parameter",
                    name=parameter.name,
                    parameterTypeRef=parameter.type_name,
                    shortDescription=parameter.description,
                )
            _sub(entries, "ParameterRefEntry", parameterRef=parameter.name)
        _sub(entries, "ParameterRefEntry", parameterRef=CRC_PARAMETER)
        base = _sub(container, "BaseContainer", containerRef=HEADER_CONTAINER)
        criteria = _sub(base, "RestrictionCriteria")
        _sub(criteria, "Comparison", parameterRef=APID_PARAMETER, value=str(packet.apid))
    return space_system


def _parameter_names(dictionary: VehicleDictionary) -> Mapping[tuple[int, str], str]:
    """XTCE parameter name per (APID, field): the field name, qualified only where needed.

    A space system's parameters share one namespace. A field name used by several packets
    with the same definition (`reserved`) is one parameter in all their containers; used
    with different definitions, each is qualified with its packet name (`HELI_HK_x`).
    """
    by_name: dict[str, list[tuple[int, FieldDef]]] = {}
    for packet in dictionary.packets.values():
        for field in packet.fields:
            by_name.setdefault(field.name, []).append((packet.apid, field))
    names: dict[tuple[int, str], str] = {}
    reserved = {name for name, *_ in _HEADER_FIELDS} | {CRC_PARAMETER}
    for name, uses in by_name.items():
        meanings = [replace(field, offset=0) for _, field in uses]  # where it lies is no matter
        shared = all(m == meanings[0] for m in meanings) and name not in reserved
        for apid, field in uses:
            names[(apid, field.name)] = (
                name if shared else f"{dictionary.packets[apid].name}_{name}"
            )
    return names


def _packet_parameters(
    packet: PacketDef, names: Mapping[tuple[int, str], str]
) -> Iterator[_Parameter]:
    """The body's parameters in wire order; sample records unrolled as `ax_0` … `gz_9`.

    The samples of one field share its type; each says when it was sampled.
    """
    fields = sorted(packet.fields, key=lambda f: f.offset)
    for sample in range(packet.samples):
        for field in fields:
            base = names[(packet.apid, field.name)]
            description = _description(field)
            name = base
            if packet.samples > 1:
                name = f"{base}_{sample}"
                offset_s = sample * (packet.sample_interval_s or 0.0)
                when = f"sample {sample}, at packet time + {offset_s:g} s"
                description = when if description is None else f"{description}; {when}"
            yield _Parameter(
                name=name,
                type_name=f"{base}_Type",
                description=description,
                field=field,
                packet=packet,
            )


def _description(field: FieldDef) -> str | None:
    """What a reader needs beyond the type: the flag bits, the TOML's own description."""
    if field.bits is not None:
        return "flag byte: " + ", ".join(f"bit{bit} {name}" for bit, name in field.bits.items())
    return field.description


def _integer_encoding(parent: ET.Element, *, bits: int, signed: bool) -> ET.Element:
    return _sub(
        parent,
        "IntegerDataEncoding",
        sizeInBits=str(bits),
        encoding="twosComplement" if signed else "unsigned",
        byteOrder=MSB_FIRST,
    )


def _unit_set(parent: ET.Element, unit: str | None) -> None:
    units = _sub(parent, "UnitSet")
    if unit is not None:
        ET.SubElement(units, _q("Unit")).text = unit


def _polynomial(encoding: ET.Element, scale: float) -> None:
    """engineering = scale × raw, as XTCE's one-term polynomial (ICD section 4 `×s`)."""
    calibrator = _sub(_sub(encoding, "DefaultCalibrator"), "PolynomialCalibrator")
    _sub(calibrator, "Term", coefficient=repr(scale), exponent="1")


def _header_type(
    types: ET.Element, *, name: str, bits: int, unit: str | None, description: str
) -> None:
    if name == "sclk_fine":  # engineering value in seconds, the ICD's 1/65536 s units
        element = _sub(
            types,
            "FloatParameterType",
            name=f"{name}_Type",
            sizeInBits="64",
            shortDescription=description,
        )
        _unit_set(element, unit)
        encoding = _integer_encoding(element, bits=bits, signed=False)
        _polynomial(encoding, 1.0 / FINE_PER_SECOND)
        return
    element = _sub(
        types,
        "IntegerParameterType",
        name=f"{name}_Type",
        signed="false",
        sizeInBits=str(bits),
        shortDescription=description,
    )
    _unit_set(element, unit)
    _integer_encoding(element, bits=bits, signed=False)


def _crc_type(types: ET.Element) -> None:
    element = _sub(
        types,
        "IntegerParameterType",
        name=f"{CRC_PARAMETER}_Type",
        signed="false",
        sizeInBits=str(8 * CRC_BYTES),
        shortDescription=(
            "CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF, no reflection, xorout 0) "
            "over every byte before it"
        ),
    )
    _unit_set(element, None)
    encoding = _integer_encoding(element, bits=8 * CRC_BYTES, signed=False)
    # XTCE 1.2 ErrorDetectCorrect: the algorithm, computed from the start of the packet up
    # to this parameter. Yamcs checks CRCs in its link preprocessor instead (docs).
    check = _sub(_sub(encoding, "ErrorDetectCorrect"), "CRC", width="16", reference="start")
    check.set("bitsFromReference", "0")
    ET.SubElement(check, _q("Polynomial")).text = "1021"
    ET.SubElement(check, _q("InitRemainder")).text = "FFFF"
    ET.SubElement(check, _q("FinalXOR")).text = "0000"


def _parameter_type(types: ET.Element, parameter: _Parameter) -> None:
    """The type of one body parameter: its encoding on the wire and its engineering form."""
    field = parameter.field
    name = parameter.type_name
    description = _description(field)
    bits = 8 * field.size
    signed = field.type.startswith("i")
    if field.is_text:
        element = _sub(types, "StringParameterType", name=name, shortDescription=description)
        _unit_set(element, field.unit)
        encoding = _sub(element, "StringDataEncoding", encoding="UTF-8")
        _text_size(encoding, parameter.packet, field)
    elif field.type.startswith("f"):
        element = _sub(
            types,
            "FloatParameterType",
            name=name,
            sizeInBits=str(bits),
            shortDescription=description,
        )
        _unit_set(element, field.unit)
        _sub(
            element,
            "FloatDataEncoding",
            sizeInBits=str(bits),
            encoding="IEEE754_1985",
            byteOrder=MSB_FIRST,
        )
    elif field.enum is not None:
        element = _sub(types, "EnumeratedParameterType", name=name, shortDescription=description)
        _unit_set(element, field.unit)
        _integer_encoding(element, bits=bits, signed=signed)
        enumerations = _sub(element, "EnumerationList")
        for value, label in field.enum.items():
            _sub(enumerations, "Enumeration", value=str(value), label=label)
    elif field.scale is not None:
        element = _sub(
            types, "FloatParameterType", name=name, sizeInBits="64", shortDescription=description
        )
        _unit_set(element, field.unit)
        _polynomial(_integer_encoding(element, bits=bits, signed=signed), field.scale)
    else:
        element = _sub(
            types,
            "IntegerParameterType",
            name=name,
            signed="true" if signed else "false",
            sizeInBits=str(bits),
            shortDescription=description,
        )
        _unit_set(element, field.unit)
        _integer_encoding(element, bits=bits, signed=signed)


def _text_size(encoding: ET.Element, packet: PacketDef, field: FieldDef) -> None:
    """The text runs to the CRC: its size in bits follows from the packet data length.

    total bytes = data length + 7 (ICD section 3), so the text has
    data length + 7 - 12 (headers) - offset - 2 (CRC) bytes.
    """
    intercept_bytes = PRIMARY_HEADER_BYTES + 1 - HEADER_BYTES - field.offset - CRC_BYTES
    max_bytes = packet.max_length - HEADER_BYTES - field.offset - CRC_BYTES
    variable = _sub(encoding, "Variable", maxSizeInBits=str(8 * max_bytes))
    dynamic = _sub(variable, "DynamicValue")
    _sub(dynamic, "ParameterInstanceRef", parameterRef=LENGTH_PARAMETER, useCalibratedValue="false")
    _sub(dynamic, "LinearAdjustment", slope="8", intercept=str(8 * intercept_bytes))
