"""Load the packet dictionaries in protocols/ and compile them once into numpy layouts.

The TOML files are the single source of truth for the decoder and the simulator (ICD
section 4). Loading validates everything and names the file, packet and field at fault;
compiling turns each fixed-layout packet into a big-endian structured dtype that the
decoder lays over many packets at once.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

import numpy as np

from groundstation.core.ccsds import CRC_BYTES, HEADER_BYTES, MAX_APID, MAX_PACKET_BYTES
from groundstation.errors import DefinitionError, UnknownVehicleError

# Big-endian numpy types of the ICD's field types; `text` is handled apart.
NUMERIC_TYPES: Final[Mapping[str, str]] = MappingProxyType(
    {
        "u8": "u1",
        "i8": "i1",
        "u16": ">u2",
        "i16": ">i2",
        "u32": ">u4",
        "i32": ">i4",
        "f32": ">f4",
        "f64": ">f8",
    }
)
TEXT_TYPE: Final = "text"

_PACKET_KEYS: Final = frozenset(
    {
        "apid",
        "name",
        "description",
        "length",
        "min_length",
        "max_length",
        "samples",
        "sample_interval_s",
        "field",
    }
)
_FIELD_KEYS: Final = frozenset(
    {"name", "offset", "type", "scale", "unit", "enum", "bits", "description"}
)


@dataclass(frozen=True, kw_only=True)
class FieldDef:
    """One field of a packet body, as the ICD table row describes it."""

    name: str
    offset: int
    type: str
    size: int
    scale: float | None = None
    unit: str | None = None
    enum: Mapping[int, str] | None = None
    bits: Mapping[int, str] | None = None
    description: str | None = None

    @property
    def is_text(self) -> bool:
        return self.type == TEXT_TYPE


@dataclass(frozen=True, kw_only=True)
class PacketDef:
    """One APID: its layout, calibrations and the numpy dtype compiled from them."""

    apid: int
    name: str
    description: str | None
    min_length: int
    max_length: int
    samples: int
    sample_interval_s: float | None
    fields: tuple[FieldDef, ...]
    record_dtype: np.dtype[np.void]
    """Layout of one body record (the whole body unless `samples` > 1), text excluded."""
    packet_dtype: np.dtype[np.void] | None
    """Layout of the whole packet for fixed-length APIDs: `body` holds the records."""

    @property
    def fixed_length(self) -> bool:
        return self.min_length == self.max_length

    @property
    def text_field(self) -> FieldDef | None:
        return next((f for f in self.fields if f.is_text), None)

    @property
    def numeric_fields(self) -> tuple[FieldDef, ...]:
        return tuple(f for f in self.fields if not f.is_text)

    def field(self, name: str) -> FieldDef:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(f"{self.name} has no field {name!r}")


@dataclass(frozen=True, kw_only=True)
class VehicleDictionary:
    """All packet definitions of one vehicle, by APID."""

    vehicle: str
    packets: Mapping[int, PacketDef]
    source: str

    def by_name(self, name: str) -> PacketDef:
        for packet in self.packets.values():
            if packet.name == name:
                return packet
        raise KeyError(f"{self.vehicle} has no packet {name!r}")


def default_protocols_dir() -> Path:
    """The protocols/ folder shipped with the package (works from a checkout and a wheel)."""
    return Path(str(resources.files("groundstation.protocols")))


def load_dictionaries(directory: Path | None = None) -> dict[str, VehicleDictionary]:
    """Load every `*.toml` in the folder, keyed by vehicle name."""
    folder = default_protocols_dir() if directory is None else directory
    files = sorted(folder.glob("*.toml"))
    if not files:
        raise DefinitionError(f"{folder}: no packet definitions (*.toml) found")
    dictionaries: dict[str, VehicleDictionary] = {}
    for path in files:
        dictionary = load_dictionary_file(path)
        if dictionary.vehicle in dictionaries:
            raise DefinitionError(
                f"{path}: vehicle {dictionary.vehicle!r} is also defined in "
                f"{dictionaries[dictionary.vehicle].source}"
            )
        dictionaries[dictionary.vehicle] = dictionary
    return dictionaries


def load_dictionary(vehicle: str, directory: Path | None = None) -> VehicleDictionary:
    """The dictionary of one vehicle; an unknown vehicle is an UnknownVehicleError."""
    dictionaries = load_dictionaries(directory)
    try:
        return dictionaries[vehicle]
    except KeyError:
        known = ", ".join(sorted(dictionaries))
        raise UnknownVehicleError(f"unknown vehicle {vehicle!r} (known: {known})") from None


def load_dictionary_file(path: Path) -> VehicleDictionary:
    """Parse and validate one vehicle's TOML file."""
    try:
        with path.open("rb") as stream:
            document = tomllib.load(stream)
    except OSError as error:
        raise DefinitionError(f"{path}: cannot read: {error.strerror}") from error
    except tomllib.TOMLDecodeError as error:
        raise DefinitionError(f"{path}: not valid TOML: {error}") from error
    return parse_dictionary(document, source=str(path))


def parse_dictionary(document: Mapping[str, Any], *, source: str) -> VehicleDictionary:
    """Validate a parsed document and compile its packets."""
    unknown = set(document) - {"vehicle", "packet"}
    if unknown:
        raise DefinitionError(f"{source}: unknown key(s) {sorted(unknown)}")
    vehicle = document.get("vehicle")
    if not isinstance(vehicle, str) or not vehicle:
        raise DefinitionError(f"{source}: `vehicle` must be a non-empty string")
    raw_packets = document.get("packet")
    if not isinstance(raw_packets, list) or not raw_packets:
        raise DefinitionError(f"{source}: no [[packet]] tables")
    packets: dict[int, PacketDef] = {}
    names: set[str] = set()
    for index, raw in enumerate(raw_packets):
        packet = _parse_packet(raw, where=f"{source}: packet #{index + 1}")
        where = f"{source}: packet {packet.name} (APID {packet.apid})"
        if packet.apid in packets:
            raise DefinitionError(
                f"{where}: duplicate APID, also used by {packets[packet.apid].name}"
            )
        if packet.name in names:
            raise DefinitionError(f"{where}: duplicate packet name")
        packets[packet.apid] = packet
        names.add(packet.name)
    return VehicleDictionary(
        vehicle=vehicle, packets=MappingProxyType(dict(sorted(packets.items()))), source=source
    )


def _require_int(value: object, *, where: str, key: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise DefinitionError(f"{where}: `{key}` must be an integer")
    if not low <= value <= high:
        raise DefinitionError(f"{where}: `{key}` = {value} is outside {low}..{high}")
    return value


def _parse_packet(raw: object, *, where: str) -> PacketDef:
    if not isinstance(raw, dict):
        raise DefinitionError(f"{where}: must be a table")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise DefinitionError(f"{where}: `name` must be a non-empty string")
    where = f"{where.rsplit(': ', 1)[0]}: packet {name}"
    unknown = set(raw) - _PACKET_KEYS
    if unknown:
        raise DefinitionError(f"{where}: unknown key(s) {sorted(unknown)}")
    apid = _require_int(raw.get("apid"), where=where, key="apid", low=0, high=MAX_APID)
    samples = _require_int(raw.get("samples", 1), where=where, key="samples", low=1, high=65536)
    interval = raw.get("sample_interval_s")
    if interval is not None and (not isinstance(interval, int | float) or interval <= 0):
        raise DefinitionError(f"{where}: `sample_interval_s` must be a positive number")
    if samples > 1 and interval is None:
        raise DefinitionError(f"{where}: `samples` > 1 needs `sample_interval_s`")

    raw_fields = raw.get("field")
    if not isinstance(raw_fields, list) or not raw_fields:
        raise DefinitionError(f"{where}: no [[packet.field]] tables")
    fields = tuple(
        _parse_field(f, where=f"{where}, field #{i + 1}") for i, f in enumerate(raw_fields)
    )
    min_length, max_length = _packet_lengths(raw, fields, samples=samples, where=where)
    record_dtype = _record_dtype(fields, where=where)
    packet_dtype: np.dtype[np.void] | None = None
    if min_length == max_length:
        packet_dtype = np.dtype(
            {
                "names": ["header", "body", "crc"],
                "formats": [
                    np.dtype((np.uint8, (HEADER_BYTES,))),
                    np.dtype((record_dtype, (samples,))) if samples > 1 else record_dtype,
                    np.dtype(">u2"),
                ],
                "offsets": [0, HEADER_BYTES, max_length - CRC_BYTES],
                "itemsize": max_length,
            }
        )
    return PacketDef(
        apid=apid,
        name=name,
        description=raw.get("description"),
        min_length=min_length,
        max_length=max_length,
        samples=samples,
        sample_interval_s=None if interval is None else float(interval),
        fields=fields,
        record_dtype=record_dtype,
        packet_dtype=packet_dtype,
    )


def _parse_field(raw: object, *, where: str) -> FieldDef:
    if not isinstance(raw, dict):
        raise DefinitionError(f"{where}: must be a table")
    name = raw.get("name")
    if not isinstance(name, str) or not name.isidentifier():
        raise DefinitionError(f"{where}: `name` must be an identifier-like string")
    where = f"{where.rsplit(', ', 1)[0]}, field {name}"
    unknown = set(raw) - _FIELD_KEYS
    if unknown:
        raise DefinitionError(f"{where}: unknown key(s) {sorted(unknown)}")
    offset = _require_int(raw.get("offset"), where=where, key="offset", low=0, high=0xFFFF)
    type_name = str(raw.get("type"))
    if type_name != TEXT_TYPE and type_name not in NUMERIC_TYPES:
        known = ", ".join([*NUMERIC_TYPES, TEXT_TYPE])
        raise DefinitionError(f"{where}: unknown type {raw.get('type')!r} (known: {known})")
    size = 0 if type_name == TEXT_TYPE else np.dtype(NUMERIC_TYPES[type_name]).itemsize
    scale = raw.get("scale")
    if scale is not None and (
        isinstance(scale, bool) or not isinstance(scale, int | float) or scale == 0
    ):
        raise DefinitionError(f"{where}: `scale` must be a non-zero number")
    unit = raw.get("unit")
    if unit is not None and not isinstance(unit, str):
        raise DefinitionError(f"{where}: `unit` must be a string")
    enum = _parse_names(raw.get("enum"), type_name=type_name, where=where, key="enum")
    bits = _parse_names(raw.get("bits"), type_name=type_name, where=where, key="bits")
    if (enum or bits or scale is not None) and type_name == TEXT_TYPE:
        raise DefinitionError(f"{where}: a text field takes no scale, enum or bits")
    if enum and bits:
        raise DefinitionError(f"{where}: a field is an enum or a flag byte, not both")
    if (enum or bits) and scale is not None:
        raise DefinitionError(f"{where}: enum and flag fields take no scale")
    return FieldDef(
        name=name,
        offset=offset,
        type=type_name,
        size=size,
        scale=None if scale is None else float(scale),
        unit=unit,
        enum=enum,
        bits=bits,
        description=raw.get("description"),
    )


def _parse_names(
    raw: object, *, type_name: object, where: str, key: str
) -> Mapping[int, str] | None:
    """Validate an `enum` (value -> name) or `bits` (bit number -> name) table."""
    if raw is None:
        return None
    if not isinstance(raw, dict) or not raw:
        raise DefinitionError(f"{where}: `{key}` must be a non-empty table")
    if type_name not in NUMERIC_TYPES or str(type_name).startswith("f"):
        raise DefinitionError(f"{where}: `{key}` needs an integer type, not {type_name!r}")
    kind = np.dtype(NUMERIC_TYPES[str(type_name)])
    info = np.iinfo(kind)
    low, high = (0, kind.itemsize * 8 - 1) if key == "bits" else (int(info.min), int(info.max))
    names: dict[int, str] = {}
    for raw_value, label in raw.items():
        try:
            value = int(raw_value)
        except ValueError:
            raise DefinitionError(f"{where}: {key} key {raw_value!r} is not an integer") from None
        if not low <= value <= high:
            raise DefinitionError(f"{where}: {key} value {value} is outside {low}..{high}")
        if not isinstance(label, str) or not label:
            raise DefinitionError(f"{where}: {key} {value} needs a non-empty name")
        if label in names.values():
            raise DefinitionError(f"{where}: {key} name {label!r} is used twice")
        names[value] = label
    return MappingProxyType(dict(sorted(names.items())))


def _packet_lengths(
    raw: Mapping[str, Any], fields: tuple[FieldDef, ...], *, samples: int, where: str
) -> tuple[int, int]:
    """Check that the fields tile the body exactly and match the declared packet length."""
    overhead = HEADER_BYTES + CRC_BYTES
    names = [f.name for f in fields]
    for name in names:
        if names.count(name) > 1:
            raise DefinitionError(f"{where}, field {name}: duplicate field name")
    text = [f for f in fields if f.is_text]
    if len(text) > 1 or (text and fields[-1] is not text[0]):
        raise DefinitionError(f"{where}, field {text[-1].name}: text must be the single last field")
    if text and samples > 1:
        raise DefinitionError(f"{where}, field {text[0].name}: text cannot repeat in samples")

    position = 0
    for f in sorted(fields, key=lambda f: f.offset):
        if f.offset < position:
            raise DefinitionError(f"{where}, field {f.name}: overlaps the field before it")
        if f.offset > position:
            raise DefinitionError(
                f"{where}, field {f.name}: bytes {position}..{f.offset - 1} are not covered"
            )
        position = f.offset + f.size
    record_bytes = position
    fixed_body = record_bytes * samples

    if text:
        if "length" in raw:
            raise DefinitionError(f"{where}: a packet with text has min_length/max_length")
        low = _require_int(
            raw.get("min_length"), where=where, key="min_length", low=0, high=MAX_PACKET_BYTES
        )
        high = _require_int(
            raw.get("max_length"), where=where, key="max_length", low=0, high=MAX_PACKET_BYTES
        )
        if low != overhead + fixed_body:
            raise DefinitionError(
                f"{where}: min_length {low} does not match the fields "
                f"({overhead} header and CRC + {fixed_body} body = {overhead + fixed_body})"
            )
        if high < low:
            raise DefinitionError(f"{where}: max_length {high} is below min_length {low}")
        return low, high
    if "min_length" in raw or "max_length" in raw:
        raise DefinitionError(f"{where}: a fixed-layout packet declares `length` only")
    length = _require_int(
        raw.get("length"), where=where, key="length", low=0, high=MAX_PACKET_BYTES
    )
    if length != overhead + fixed_body:
        raise DefinitionError(
            f"{where}: length {length} does not match the fields "
            f"({overhead} header and CRC + {fixed_body} body = {overhead + fixed_body})"
        )
    return length, length


def _record_dtype(fields: tuple[FieldDef, ...], *, where: str) -> np.dtype[np.void]:
    numeric = [f for f in fields if not f.is_text]
    try:
        return np.dtype(
            {
                "names": [f.name for f in numeric],
                "formats": [NUMERIC_TYPES[f.type] for f in numeric],
                "offsets": [f.offset for f in numeric],
                "itemsize": sum(f.size for f in numeric),
            }
        )
    except (ValueError, TypeError) as error:  # pragma: no cover - checks above catch these
        raise DefinitionError(f"{where}: cannot compile layout: {error}") from error
