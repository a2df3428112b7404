"""The msgpack envelope (ICD section 2): valid ones parse, every invalid one has a reason."""

from __future__ import annotations

from urllib.parse import unquote_to_bytes

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from groundstation.core.envelope import (
    BAD_TOPIC_PREFIX,
    Envelope,
    Invalid,
    bad_topic_name,
    check_arrival,
    check_topic,
    pack_envelope,
    unpack_envelope,
)

VEHICLES = frozenset({"ingenuity", "perseverance"})
LIMIT = 1 << 20


def unpack(payload: bytes) -> Envelope | Invalid:
    return unpack_envelope(payload, max_payload_bytes=LIMIT, vehicles=VEHICLES)


def valid_document(**changes: object) -> dict[str, object]:
    document: dict[str, object] = {
        "v": 1,
        "relay": "perseverance",
        "vehicle": "ingenuity",
        "seq": 7,
        "ert": 1.7e9,
        "packets": b"\x01\x02",
    }
    document.update(changes)
    return document


def test_round_trip_of_a_valid_envelope() -> None:
    """pack_envelope's output unpacks to the same fields; extra keys are ignored."""
    payload = msgpack.packb({**valid_document(), "extra": [1, 2, 3]}, use_bin_type=True)
    envelope = unpack(payload)
    assert envelope == Envelope(
        version=1, relay="perseverance", vehicle="ingenuity", seq=7, ert=1.7e9, packets=b"\x01\x02"
    )
    assert unpack(
        pack_envelope(relay="r", vehicle="perseverance", seq=2**32 + 3, ert=5, packets=b"x")
    ) == Envelope(version=1, relay="r", vehicle="perseverance", seq=3, ert=5.0, packets=b"x")


@pytest.mark.parametrize(
    ("document", "reason", "vehicle"),
    [
        ([1, 2], "not_a_map", "unknown"),
        (valid_document(v=2), "bad_version", "ingenuity"),
        (valid_document(v=True), "bad_version", "ingenuity"),
        (valid_document(vehicle="curiosity"), "unknown_vehicle", "unknown"),
        (valid_document(vehicle=3), "bad_vehicle", "unknown"),
        (valid_document(relay=""), "bad_relay", "ingenuity"),
        (valid_document(seq=-1), "bad_seq", "ingenuity"),
        (valid_document(seq=2**32), "bad_seq", "ingenuity"),
        (valid_document(seq=1.0), "bad_seq", "ingenuity"),
        (valid_document(ert="now"), "bad_ert", "ingenuity"),
        (valid_document(ert=float("nan")), "bad_ert", "ingenuity"),
        (valid_document(packets="text, not bin"), "bad_packets", "ingenuity"),
        (valid_document(packets=b""), "bad_packets", "ingenuity"),
    ],
)
def test_invalid_fields_have_stable_reasons(document: object, reason: str, vehicle: str) -> None:
    """Each way an envelope can break gives its own reason and the vehicle if it is known."""
    result = unpack(msgpack.packb(document, use_bin_type=True))
    assert isinstance(result, Invalid)
    assert (result.reason, result.vehicle) == (reason, vehicle)


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\xc1",  # never-used msgpack byte
        b"\x91" * 100_000,  # nesting deeper than the unpacker's stack
        b"\xc6\xff\xff\xff\xff",  # bin claiming 4 GiB
        b"\xdd\xff\xff\xff\xff",  # array claiming 4 billion entries
        b"\xdf\x7f\xff\xff\xff",  # map claiming 2 billion entries
        b"\x81\x91\x01\x02",  # map with an array as a key
        b"\x81\x01\x02",  # map with an int key
        b"\xd4\x05\x00",  # unknown ext type
        msgpack.packb(valid_document()) + b"\x00",  # trailing bytes
    ],
)
def test_hostile_payloads_are_invalid_not_exceptions(payload: bytes) -> None:
    """Resource-exhaustion and malformed msgpack are refused as `not_msgpack`."""
    result = unpack(payload)
    assert isinstance(result, Invalid)
    assert result.reason == "not_msgpack"


def test_payload_over_the_limit_is_refused_before_unpacking() -> None:
    """A payload larger than max_payload_bytes is invalid whatever it holds."""
    payload = pack_envelope(relay="r", vehicle="ingenuity", seq=1, ert=1.0, packets=b"x" * 100)
    result = unpack_envelope(payload, max_payload_bytes=50, vehicles=VEHICLES)
    assert isinstance(result, Invalid)
    assert result.reason == "too_large"


@given(st.binary(max_size=512))
def test_any_bytes_give_an_envelope_or_a_reason(payload: bytes) -> None:
    """Random bytes never raise: the result is always one of the two types."""
    assert isinstance(unpack(payload), Envelope | Invalid)


# --- checks that need the arrival: topic and time (ICD section 6) ------------------------

SCLK_EPOCH = 946728000  # 2000-01-01T12:00:00 UTC, ICD section 3
RECEIVED = 1.8e9


def arrived(
    *, topic: str = "mars/tm/ingenuity", received_at: float = RECEIVED, **changes: object
) -> Envelope | Invalid:
    envelope = unpack(msgpack.packb(valid_document(**changes), use_bin_type=True))
    assert isinstance(envelope, Envelope)
    return check_arrival(envelope, topic=topic, received_at=received_at, max_clock_skew_s=60.0)


def test_topic_must_name_the_envelopes_vehicle() -> None:
    """mars/tm/perseverance carrying an ingenuity envelope is invalid; a bridge prefix is not."""
    mismatch = arrived(topic="mars/tm/perseverance")
    assert isinstance(mismatch, Invalid)
    assert (mismatch.reason, mismatch.vehicle) == ("topic_mismatch", "ingenuity")
    assert "perseverance" in mismatch.detail
    assert isinstance(arrived(topic="site-a/mars/tm/ingenuity"), Envelope)
    assert isinstance(arrived(topic="ingenuity"), Envelope)
    assert isinstance(arrived(topic="mars/tm/"), Invalid)


@pytest.mark.parametrize(
    ("ert", "reason"),
    [
        (SCLK_EPOCH - 0.001, "ert_before_epoch"),
        (-1e308, "ert_before_epoch"),
        (0, "ert_before_epoch"),
        (RECEIVED + 60.001, "ert_in_future"),
        (1e308, "ert_in_future"),
    ],
)
def test_impossible_ert_is_invalid(ert: float, reason: str) -> None:
    """Before the SCLK epoch, or more than max_clock_skew_s after the receive time."""
    result = arrived(ert=ert)
    assert isinstance(result, Invalid)
    assert (result.reason, result.vehicle) == (reason, "ingenuity")


@pytest.mark.parametrize("ert", [SCLK_EPOCH, SCLK_EPOCH + 1.0, RECEIVED - 1e8, RECEIVED + 60.0])
def test_possible_ert_is_valid(ert: float) -> None:
    """The epoch itself, historical data and a relay clock up to 60 s ahead are valid."""
    result = arrived(ert=ert)
    assert isinstance(result, Envelope)
    assert result.ert == ert


@pytest.mark.parametrize(
    "raw", [b"mars/tm/\xff", b"mars/tm/+", b"#", b"", b"a%b/\xc3(", bytes(range(256))]
)
def test_bad_topic_name_keeps_the_bytes_and_is_invalid(raw: bytes) -> None:
    """The placeholder of an unusable topic name gives its bytes back and validates as
    `bad_topic` (ICD section 6); no wildcard survives in it (aiomqtt refuses those)."""
    topic = bad_topic_name(raw)
    assert "+" not in topic
    assert "#" not in topic
    assert unquote_to_bytes(topic.removeprefix(BAD_TOPIC_PREFIX)) == raw
    invalid = check_topic(topic)
    assert invalid is not None
    assert invalid.reason == "bad_topic"
    assert check_topic("mars/tm/ingenuity") is None
