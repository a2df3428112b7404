"""Hostile envelopes (docs/reliability.md, item 7): refused with a reason, cheaply, no exception.

tests/test_envelope.py checks each reason; this file runs the whole resource-exhaustion
corpus of tests/fuzz/corpus.py with a time and memory measurement per payload (figures for
docs/reliability.md) and throws hypothesis-made msgpack documents and mutated envelopes at
the parser. The bounds asserted here are generous safety nets, not performance targets.
"""

from __future__ import annotations

import math
import time
import tracemalloc

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from groundstation.core.envelope import SEQ_MODULUS, Envelope, Invalid, unpack_envelope
from tests.fuzz.corpus import VALID_FIELDS, HostileEnvelope, hostile_envelopes, valid_envelope
from tests.reliability_support import MIB, record_figures

VEHICLES = frozenset({"ingenuity", "perseverance"})
LIMIT = 1 << 20  # a small max_payload_bytes keeps the over-the-limit payload small
SAFETY_SECONDS = 1.0
SAFETY_BYTES = 64 * MIB


def unpack(payload: bytes) -> Envelope | Invalid:
    return unpack_envelope(payload, max_payload_bytes=LIMIT, vehicles=VEHICLES)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize over the corpus at collection time (not at import time)."""
    if "hostile_envelope" in metafunc.fixturenames:
        cases = hostile_envelopes(max_payload_bytes=LIMIT)
        metafunc.parametrize("hostile_envelope", cases, ids=[case.name for case in cases])


def test_corpus_names_are_unique_and_cover_the_issue() -> None:
    """Every entry has its own name, and each kind item 7 lists is in the corpus."""
    names = [case.name for case in hostile_envelopes(max_payload_bytes=LIMIT)]
    assert len(set(names)) == len(names)
    for kind in ("bin32", "str32", "array32", "map32", "deep", "huge_map", "int_key", "ext"):
        assert any(kind in name for name in names), kind
    assert any("past_end" in name for name in names)
    assert "payload_over_the_limit" in names


def test_hostile_envelope_is_refused_in_bounded_time_and_memory(
    hostile_envelope: HostileEnvelope,
) -> None:
    """One corpus payload: refused with its reason, its cost measured; then a valid one parses.

    1. Unpack the hostile payload against the clock, then again under tracemalloc.
    2. It is `Invalid` with the corpus's reason; record time and peak allocation.
    3. A valid envelope right after still parses (no state was damaged).
    """
    started = time.perf_counter()
    unpack(hostile_envelope.payload)
    elapsed_s = time.perf_counter() - started  # timed apart: tracemalloc slows allocation
    tracemalloc.start()
    try:
        result = unpack(hostile_envelope.payload)
        _, peak_bytes = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(result, Invalid), hostile_envelope.why
    assert result.reason == hostile_envelope.reason, hostile_envelope.why
    record_figures(
        "hostile_envelope",
        hostile_envelope.name,
        {
            "payload_bytes": len(hostile_envelope.payload),
            "reason": result.reason,
            "elapsed_ms": round(elapsed_s * 1000, 3),
            "peak_alloc_bytes": peak_bytes,
        },
    )
    assert elapsed_s < SAFETY_SECONDS
    assert peak_bytes < SAFETY_BYTES
    assert isinstance(unpack(valid_envelope(seq=2)), Envelope)


msgpack_ints = st.integers(min_value=-(2**63), max_value=2**64 - 1)
msgpack_scalars = st.one_of(
    st.none(),
    st.booleans(),
    msgpack_ints,
    st.floats(),
    st.text(max_size=20),
    st.binary(max_size=40),
)
msgpack_values = st.recursive(
    msgpack_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(st.one_of(st.text(max_size=8), msgpack_ints), children, max_size=5),
    ),
    max_leaves=20,
)
envelope_keys = st.one_of(st.sampled_from(sorted(VALID_FIELDS)), st.text(max_size=8))


@given(
    st.dictionaries(
        envelope_keys,
        st.one_of(msgpack_values, st.sampled_from(sorted(VALID_FIELDS.values(), key=repr))),
        max_size=8,
    )
)
def test_any_msgpack_map_gives_a_checked_envelope_or_a_reason(document: dict[str, object]) -> None:
    """A map of arbitrary msgpack values: either a reason, or an envelope that obeys ICD 2."""
    result = unpack(msgpack.packb(document, use_bin_type=True))
    if isinstance(result, Invalid):
        assert result.reason
        return
    assert result.version == 1
    assert result.vehicle in VEHICLES
    assert result.relay
    assert 0 <= result.seq < SEQ_MODULUS
    assert math.isfinite(result.ert)
    assert result.packets
    assert result.packets == document["packets"]


@given(st.data())
def test_mutated_valid_envelope_never_raises(data: st.DataObject) -> None:
    """Byte flips, cuts and insertions in a valid envelope give an envelope or a reason."""
    payload = bytearray(valid_envelope())
    for _ in range(data.draw(st.integers(1, 8))):
        position = data.draw(st.integers(0, len(payload) - 1))
        action = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        if action == "flip":
            payload[position] = data.draw(st.integers(0, 255))
        elif action == "cut":
            del payload[position:]
            if not payload:
                break
        else:
            payload[position:position] = data.draw(st.binary(min_size=1, max_size=8))
    assert isinstance(unpack(bytes(payload)), Envelope | Invalid)
