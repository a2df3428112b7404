"""The msgpack envelope of ICD section 2: unpacked with explicit limits, never trusted.

`unpack_envelope` never raises on bad input: it returns an `Invalid` with a stable reason
(the `reason` of the log line) so that the caller counts, logs and archives it (ICD
section 6). `check_arrival` then applies what needs the arrival's context: the topic must
name the envelope's vehicle, and `ert` must be a possible time. `pack_envelope` is the
inverse of unpacking, for the simulator and the tests.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass
from typing import Final, Literal, TypeGuard
from urllib.parse import quote_from_bytes

import msgpack

from groundstation.core.ccsds import SCLK_EPOCH_UNIX_S

ENVELOPE_VERSION: Final = 1
SEQ_MODULUS: Final = 2**32
UNKNOWN_VEHICLE: Final = "unknown"
# ICD section 6: clocks of the relay chain and the ground station may disagree by this
# much; an `ert` further ahead of the receive time, or a packet time further ahead of its
# envelope's `ert`, is impossible.
DEFAULT_MAX_CLOCK_SKEW_S: Final = 60.0

# Limits for msgpack's unpacker: an envelope is a small map of short strings and one bin.
# They bound what a hostile payload can make us allocate before we look at it.
MAX_MAP_ENTRIES: Final = 64
MAX_ARRAY_ENTRIES: Final = 1024
MAX_STR_BYTES: Final = 64 * 1024

InvalidReason = Literal[
    "too_large",
    "not_msgpack",
    "not_a_map",
    "bad_version",
    "bad_relay",
    "bad_vehicle",
    "unknown_vehicle",
    "bad_seq",
    "bad_ert",
    "bad_packets",
    "topic_mismatch",
    "ert_before_epoch",
    "ert_in_future",
    "bad_topic",
]

# Topics beginning with `$` are the broker's own (MQTT 3.1.1 and 5, section 4.7.2), never
# telemetry: this one marks a topic name that arrived unusable (`bad_topic_name`).
BAD_TOPIC_PREFIX: Final = "$groundstation/bad-topic/"
MAX_TOPIC_CHARS: Final = 65535  # an MQTT topic name's limit (a 16-bit length)


def bad_topic_name(raw: bytes) -> str:
    """What a topic name that is not a usable one (not UTF-8, a wildcard in it, empty) is
    archived as: the prefix and its bytes percent-encoded (RFC 3986, so that
    `urllib.parse.unquote_to_bytes` gives them back), cut at the topic length limit."""
    return (BAD_TOPIC_PREFIX + quote_from_bytes(raw, safe="/"))[:MAX_TOPIC_CHARS]


def check_topic(topic: str) -> Invalid | None:
    """ICD section 6: a payload that arrived on an unusable topic name is invalid."""
    if topic.startswith(BAD_TOPIC_PREFIX):
        return Invalid(reason="bad_topic", detail=topic[len(BAD_TOPIC_PREFIX) :][:80])
    return None


@dataclass(frozen=True, kw_only=True, slots=True)
class Envelope:
    """A valid envelope: where the packets came from, and the packets themselves."""

    version: int
    relay: str
    vehicle: str
    seq: int
    ert: float
    packets: bytes | memoryview  # bytes as unpacked; a view where a caller holds one


@dataclass(frozen=True, kw_only=True, slots=True)
class Invalid:
    """Why a payload is not a valid envelope, and which vehicle it claimed (if known)."""

    reason: InvalidReason
    vehicle: str = UNKNOWN_VEHICLE
    detail: str = ""


def unpack_envelope(
    payload: bytes, *, max_payload_bytes: int, vehicles: Collection[str]
) -> Envelope | Invalid:
    """Parse one MQTT payload; `vehicles` are the names that have a packet dictionary."""
    if len(payload) > max_payload_bytes:
        return Invalid(
            reason="too_large", detail=f"{len(payload)} bytes > limit {max_payload_bytes}"
        )
    try:
        document = msgpack.unpackb(
            payload,
            raw=False,
            strict_map_key=True,
            use_list=False,
            max_bin_len=max_payload_bytes,
            max_str_len=min(MAX_STR_BYTES, max_payload_bytes),
            max_array_len=MAX_ARRAY_ENTRIES,
            max_map_len=MAX_MAP_ENTRIES,
            max_ext_len=0,
        )
    # msgpack signals every malformed, over-limit, too-deep or trailing-data input with a
    # ValueError subclass (ExtraData, FormatError, StackError), and an unhashable map key
    # with TypeError.
    except (ValueError, TypeError, msgpack.UnpackException) as error:
        return Invalid(reason="not_msgpack", detail=type(error).__name__)
    if not isinstance(document, dict):
        return Invalid(reason="not_a_map", detail=type(document).__name__)
    return _check_fields(document, vehicles=vehicles)


def _check_fields(
    document: dict[object, object], *, vehicles: Collection[str]
) -> Envelope | Invalid:
    vehicle = document.get("vehicle")
    claimed = vehicle if isinstance(vehicle, str) and vehicle in vehicles else UNKNOWN_VEHICLE
    version = document.get("v")
    if not _is_int(version) or version != ENVELOPE_VERSION:  # bool is not a version
        return Invalid(reason="bad_version", vehicle=claimed, detail=repr(version)[:40])
    if not isinstance(vehicle, str):
        return Invalid(reason="bad_vehicle", detail=type(vehicle).__name__)
    if vehicle not in vehicles:
        return Invalid(reason="unknown_vehicle", detail=vehicle[:40])
    relay = document.get("relay")
    if not isinstance(relay, str) or not relay:
        return Invalid(reason="bad_relay", vehicle=claimed, detail=type(relay).__name__)
    seq = document.get("seq")
    if not _is_int(seq) or not 0 <= seq < SEQ_MODULUS:
        return Invalid(reason="bad_seq", vehicle=claimed, detail=repr(seq)[:40])
    ert = document.get("ert")
    # The ICD says float; an integral int is accepted too, since some encoders shorten 1.7e9.
    if isinstance(ert, bool) or not isinstance(ert, int | float) or not math.isfinite(ert):
        return Invalid(reason="bad_ert", vehicle=claimed, detail=repr(ert)[:40])
    packets = document.get("packets")
    if not isinstance(packets, bytes) or not packets:
        return Invalid(reason="bad_packets", vehicle=claimed, detail=type(packets).__name__)
    return Envelope(
        version=ENVELOPE_VERSION,
        relay=relay,
        vehicle=vehicle,
        seq=seq,
        ert=float(ert),
        packets=packets,
    )


def check_arrival(
    envelope: Envelope, *, topic: str, received_at: float, max_clock_skew_s: float
) -> Envelope | Invalid:
    """The checks of ICD section 6 that need the arrival: topic and time.

    The topic's last level names the vehicle (`mars/tm/{vehicle}`; a bridge may prefix
    more levels). `ert` lies between the SCLK epoch and the receive time plus the allowed
    skew: old data stays valid, data from the future does not.
    """
    topic_vehicle = topic.rpartition("/")[2]
    if topic_vehicle != envelope.vehicle:
        return Invalid(
            reason="topic_mismatch",
            vehicle=envelope.vehicle,
            detail=f"topic names {topic_vehicle[:40]!r}",
        )
    if envelope.ert < SCLK_EPOCH_UNIX_S:
        return Invalid(
            reason="ert_before_epoch", vehicle=envelope.vehicle, detail=repr(envelope.ert)[:40]
        )
    if envelope.ert > received_at + max_clock_skew_s:
        return Invalid(
            reason="ert_in_future",
            vehicle=envelope.vehicle,
            detail=f"{envelope.ert - received_at:.6g} s after receive time",
        )
    return envelope


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def pack_envelope(
    *,
    relay: str,
    vehicle: str,
    seq: int,
    ert: float,
    packets: bytes,
    version: int = ENVELOPE_VERSION,
) -> bytes:
    """Build an envelope payload (ICD section 2); `version` is a parameter for fault tests."""
    document = {
        "v": version,
        "relay": relay,
        "vehicle": vehicle,
        "seq": seq % SEQ_MODULUS,
        "ert": float(ert),
        "packets": packets,
    }
    payload: bytes = msgpack.packb(document, use_bin_type=True)
    return payload


@dataclass(frozen=True, slots=True)
class Arrival:
    """One received payload and its verdict: checked on arrival, and again when read back
    from the archive (the verdict depends only on what the archive keeps)."""

    topic: str
    received_at: float
    size: int  # payload bytes, for batches' byte bound
    envelope: Envelope | Invalid
    # The first received after a session takeover: the gaps before it went to the other
    # client with our client id (sequence accounting counts them taken over, not lost).
    after_takeover: bool = False


def check_payload(
    topic: str,
    payload: bytes,
    received_at: float,
    *,
    max_payload_bytes: int,
    vehicles: Collection[str],
    max_clock_skew_s: float = DEFAULT_MAX_CLOCK_SKEW_S,
    after_takeover: bool = False,
) -> Arrival:
    """Validate one payload (cheap msgpack unpack) into an Arrival; never raises.

    The verdict depends only on the payload, the topic and `received_at`, which the archive
    keeps: replay gives the same one."""
    envelope: Envelope | Invalid | None = check_topic(topic)
    if envelope is None:
        envelope = unpack_envelope(payload, max_payload_bytes=max_payload_bytes, vehicles=vehicles)
    if isinstance(envelope, Envelope):
        envelope = check_arrival(
            envelope, topic=topic, received_at=received_at, max_clock_skew_s=max_clock_skew_s
        )
    return Arrival(
        topic=topic,
        received_at=received_at,
        size=len(payload),
        envelope=envelope,
        after_takeover=after_takeover,
    )
