"""Lazy calibration gives exactly what eager calibration gives, and `ApidColumns.rows`."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from groundstation.core.decoder import (
    RESULTS,
    ApidColumns,
    Calibration,
    DecodeResult,
    PacketDecoder,
)
from groundstation.core.definitions import load_dictionary
from tests.icd_packets import EVR_FIXED, HELI_IMU, HELI_NAV, hand_pack
from tests.test_decoder_properties import DICTIONARIES, batches, hostile_buffers

PER_PACKET = ("buffer", "offset", "length", "apid", "seq", "time", "result")
MODES: tuple[Calibration, ...] = ("eager", "lazy")


def assert_identical(got: NDArray[Any], want: NDArray[Any], what: str) -> None:
    """Same dtype, shape and bytes (NaN payloads and -0.0 included); text by value."""
    assert got.dtype == want.dtype, what
    assert got.shape == want.shape, what
    if want.dtype == object:
        assert got.tolist() == want.tolist(), what
    else:
        assert np.ascontiguousarray(got).tobytes() == np.ascontiguousarray(want).tobytes(), what


def assert_same_columns(got: ApidColumns, want: ApidColumns) -> None:
    assert (got.apid, got.name) == (want.apid, want.name)
    for name in ("index", "seq", "time"):
        assert_identical(getattr(got, name), getattr(want, name), name)
    assert list(got.fields) == list(want.fields)
    for name, values in want.fields.items():
        assert_identical(got.fields[name], values, f"{want.name}.{name}")


def assert_same_result(lazy: DecodeResult, eager: DecodeResult) -> None:
    for name in PER_PACKET:
        assert_identical(getattr(lazy, name), getattr(eager, name), name)
    assert dict(lazy.lost) == dict(eager.lost)
    assert lazy.counts() == eager.counts()
    assert list(lazy.columns) == list(eager.columns)
    for apid, columns in eager.columns.items():
        assert_same_columns(lazy.columns[apid], columns)


def decoders(vehicle: str) -> tuple[PacketDecoder, PacketDecoder]:
    dictionary = DICTIONARIES[vehicle]
    return PacketDecoder(dictionary), PacketDecoder(dictionary, calibrate="lazy")


@settings(max_examples=200, deadline=None)
@given(st.one_of(hostile_buffers(), batches()), st.data())
def test_lazy_equals_eager_on_any_input(case: tuple[str, list[bytes]], data: st.DataObject) -> None:
    """Hostile and envelope-like batches, decoded twice by the same pair of decoders (the
    second pass reversed, so sequence state differs): every array and field is identical,
    and so is any subset of rows, in whatever order."""
    vehicle, buffers = case
    eager, lazy = decoders(vehicle)
    for batch in (buffers, buffers[::-1]):
        want, got = eager.decode(batch), lazy.decode(batch)
        assert_same_result(got, want)
        verdicts = [RESULTS[code] for code in want.result.tolist()]
        assert want.counts() == Counter(zip(want.apid.tolist(), verdicts, strict=True))
        for apid, columns in want.columns.items():
            count = columns.index.shape[0]
            rows = np.array(
                data.draw(st.lists(st.integers(0, count - 1), max_size=6)), dtype=np.intp
            )
            assert_same_columns(got.columns[apid].rows(rows), columns.rows(rows))


def test_lazy_equals_eager_for_large_threaded_inputs() -> None:
    """Above the helper-thread threshold, with CRC errors and duplicates among IMU packets."""
    dictionary = load_dictionary("ingenuity")
    rng = np.random.default_rng(7)
    packets = [
        hand_pack(102, seq % 16384, HELI_IMU.pack(*rng.integers(-32768, 32767, 60).tolist()))
        for seq in range(20_000)
    ]
    packets[5] = packets[4]  # a duplicate
    stream = bytearray(b"".join(packets))
    stream[1000 * 134 + 40] ^= 0x01  # a CRC error
    eager, lazy = PacketDecoder(dictionary), PacketDecoder(dictionary, calibrate="lazy")
    assert_same_result(lazy.decode([bytes(stream)]), eager.decode([bytes(stream)]))


@pytest.mark.parametrize("calibrate", MODES)
def test_rows_select_imu_packets(calibrate: Calibration) -> None:
    """rows() keeps index, seq, time and (n, samples) fields of the chosen rows, in the
    order asked; rows of rows compose."""
    dictionary = load_dictionary("ingenuity")
    bodies = [HELI_IMU.pack(*range(k, k + 60)) for k in range(5)]
    buffer = b"".join(
        hand_pack(102, k, body, coarse=700_000_000 + k) for k, body in enumerate(bodies)
    )
    whole = PacketDecoder(dictionary, calibrate=calibrate).decode([buffer]).columns[102]
    some = whole.rows(np.array([3, 0, 3], dtype=np.intp))
    assert some.index.tolist() == [3, 0, 3]
    assert some.seq.tolist() == [3, 0, 3]
    assert some.time.tolist() == whole.time[[3, 0, 3]].tolist()
    assert some.fields["ax"].shape == (3, 10)
    for name, values in whole.fields.items():
        assert_identical(some.fields[name], values[[3, 0, 3]], name)
    assert_same_columns(some.rows(np.array([1], dtype=np.intp)), whole.rows(np.array([0])))
    none = whole.rows(np.zeros(0, dtype=np.intp))
    assert none.fields["gz"].shape == (0, 10)
    assert none.fields["gz"].dtype == np.float64


@pytest.mark.parametrize("calibrate", MODES)
def test_rows_of_event_reports_keep_their_text(calibrate: Calibration) -> None:
    """Variable length: the chosen events' severity, id and message; a CRC error and a
    NAV packet between them do not shift the rows."""
    dictionary = load_dictionary("ingenuity")
    nav_body = HELI_NAV.pack(*[0.0] * 9, 0, 0, 0)
    buffer = b"".join(
        [
            hand_pack(103, 0, EVR_FIXED.pack(1, 10) + b"first"),
            hand_pack(101, 0, nav_body),
            hand_pack(103, 1, EVR_FIXED.pack(2, 20) + b"bad crc", crc=0),
            hand_pack(103, 2, EVR_FIXED.pack(3, 30) + "third \u00e9".encode()),
        ]
    )
    events = PacketDecoder(dictionary, calibrate=calibrate).decode([buffer]).columns[103]
    assert events.index.tolist() == [0, 3]
    last = events.rows(np.array([1], dtype=np.intp))
    assert last.index.tolist() == [3]
    assert last.fields["severity"].tolist() == [3]
    assert last.fields["event_id"].tolist() == [30]
    assert last.fields["message"].tolist() == ["third \u00e9"]


def test_lazy_decoder_takes_no_buffers() -> None:
    """No input, no entries, no columns: as eager."""
    dictionary = load_dictionary("ingenuity")
    assert_same_result(
        PacketDecoder(dictionary, calibrate="lazy").decode([]), PacketDecoder(dictionary).decode([])
    )


def test_lazy_fields_survive_the_callers_buffer_being_reused() -> None:
    """A lazy decoder's fields are read after decode returns: they come from its own copy,
    not from a writable buffer the caller reuses (the daemon's shared-memory slots)."""
    dictionary = load_dictionary("ingenuity")
    nav_body = HELI_NAV.pack(1.5, *[0.0] * 8, 0, 0, 0)
    slot = bytearray(hand_pack(101, 0, nav_body))
    columns = PacketDecoder(dictionary, calibrate="lazy").decode([memoryview(slot)]).columns[101]
    slot[:] = bytes(len(slot))
    assert columns.fields["pos_x"].tolist() == [1.5]
