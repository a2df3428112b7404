"""JSON-ready records of decoded packets, shared by `groundstation decode` and `replay`.

Pure: a DecodeResult in, plain dicts out (no clock, no I/O). Values follow ICD section 4:
calibrated numbers, enums as their names (a value outside the table as its number), flag
bytes as integers, IMU axes as lists of 10 numbers, event text as a string. JSON has no
NaN or infinity, so a non-finite number (possible in an f32 field) is written as null.
Numbers carry the precision of their type: the shortest repr of a float32, the decimals
of a scale.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from decimal import Decimal
from typing import Any

import numpy as np
from numpy.typing import NDArray

from groundstation.core.decoder import MALFORMED, RESULTS, ApidColumns, DecodeResult
from groundstation.core.definitions import FieldDef, VehicleDictionary

__all__ = ["packet_records", "summary"]

_Rows = dict[int, tuple[Mapping[str, list[Any]], int]]


def packet_records(result: DecodeResult, dictionary: VehicleDictionary) -> Iterator[dict[str, Any]]:
    """One record per entry, in input order; a malformed tail is {"result", "offset"} only.

    Keys: apid, name (null for an APID outside the dictionary), seq, time (packet time, UTC
    seconds), result, and for ok packets fields (ICD field names).
    """
    rows = _ok_rows(result, dictionary)
    names = {apid: packet.name for apid, packet in dictionary.packets.items()}
    entries = zip(
        result.apid.tolist(),
        result.seq.tolist(),
        result.time.tolist(),
        result.result.tolist(),
        result.offset.tolist(),
        strict=True,
    )
    for position, (apid, seq, time, code, offset) in enumerate(entries):
        if code == MALFORMED:
            yield {"result": RESULTS[code], "offset": offset}
            continue
        record: dict[str, Any] = {
            "apid": apid,
            "name": names.get(apid),
            "seq": seq,
            "time": _finite(time),
            "result": RESULTS[code],
        }
        if position in rows:
            fields, row = rows[position]
            record["fields"] = {name: values[row] for name, values in fields.items()}
        yield record


def summary(results: Iterable[DecodeResult], *, decode_seconds: float) -> dict[str, Any]:
    """Totals of one or more decode calls; the caller owns the clock that timed them.

    Keys: packets (entries, a malformed tail counting as one), results (all six result
    names), lost (net packets lost per APID, keys decimal strings), packets_per_second.
    """
    packets = 0
    by_result = dict.fromkeys(RESULTS, 0)
    lost: dict[str, int] = {}
    for result in results:
        packets += int(result.result.shape[0])
        for code, count in enumerate(np.bincount(result.result, minlength=len(RESULTS))):
            by_result[RESULTS[code]] += int(count)
        for apid, count in result.lost.items():
            lost[str(apid)] = lost.get(str(apid), 0) + count
    return {
        "packets": packets,
        "results": by_result,
        "lost": lost,
        "packets_per_second": packets / decode_seconds if decode_seconds > 0 else None,
    }


def _ok_rows(result: DecodeResult, dictionary: VehicleDictionary) -> _Rows:
    """Entry position -> (its APID's fields as lists of JSON values, row), for ok packets."""
    rows: _Rows = {}
    for columns in result.columns.values():
        fields = _json_fields(columns, dictionary)
        for row, position in enumerate(columns.index.tolist()):
            rows[position] = (fields, row)
    return rows


def _json_fields(columns: ApidColumns, dictionary: VehicleDictionary) -> dict[str, list[Any]]:
    """Each column as a list of JSON values, converted column by column (tolist is fast)."""
    packet = dictionary.packets[columns.apid]
    fields: dict[str, list[Any]] = {}
    for name, values in columns.fields.items():
        field = packet.field(name)
        fields[name] = [_json_value(value, field) for value in _as_precise(values, field).tolist()]
    return fields


def _as_precise(values: NDArray[Any], field: FieldDef) -> NDArray[Any]:
    """Values carrying only the precision of their type, so JSON prints -27.3, not float noise.

    An f32 field goes through numpy's shortest round-trip repr of the float32; a scaled
    integer is rounded to the decimals of its scale (raw x 0.001 has three).
    """
    if field.type == "f32":
        return values.astype(np.float32).astype(str).astype(np.float64)
    if field.scale is not None:
        return np.round(values, _decimals(field.scale))
    return values


def _decimals(scale: float) -> int:
    """Decimal places of a scale as written in the dictionary: 0.001 -> 3, 0.5 -> 1, 2 -> 0."""
    exponent = Decimal(repr(scale)).as_tuple().exponent
    return max(0, -exponent) if isinstance(exponent, int) else 0


def _json_value(value: Any, field: FieldDef) -> Any:
    """One decoded value as JSON: enum names, null for non-finite floats, lists for samples."""
    if isinstance(value, list):  # HELI_IMU: one value per sample
        return [_json_value(item, field) for item in value]
    if isinstance(value, float):
        return _finite(value)
    if field.enum is not None and isinstance(value, int):
        return field.enum.get(value, value)
    return value


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None
