"""Sequence accounting (ICD section 6): the scalar rule, and the vectorised form against it."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from groundstation.sequence import PACKET_SEQ_MODULUS, SEQ_WINDOW, SequenceWindow


def reference(
    counts: list[int], modulus: int = 16384, window: int = 8192
) -> tuple[list[bool], int]:
    """The ICD 6 rule transcribed literally, with a dict of the window's counts."""
    newest: int | None = None
    lost = 0
    state: dict[int, str] = {}
    duplicates = []
    for count in counts:
        if newest is None:
            newest, state = count, {count: "seen"}
            duplicates.append(False)
            continue
        distance = (count - newest) % modulus
        if distance == 0:
            duplicates.append(True)
        elif distance <= window:
            for skipped in range(1, distance):
                state[(newest + skipped) % modulus] = "lost"
            lost += distance - 1
            newest = count
            state[count] = "seen"
            state = {c: s for c, s in state.items() if (newest - c) % modulus < window}
            duplicates.append(False)
        else:
            seen = state.get(count)
            duplicates.append(seen == "seen")
            if seen == "lost":
                lost -= 1
            state[count] = "seen"
    return duplicates, lost


def test_rule_step_by_step() -> None:
    """First count, ahead, duplicate, late packet, and a count from before the first."""
    window = SequenceWindow(modulus=PACKET_SEQ_MODULUS)
    assert window.account(10) == "ok"
    assert window.account(13) == "ok"
    assert window.lost == 2
    assert window.account(13) == "duplicate"
    assert window.account(11) == "ok"
    assert window.lost == 1
    assert window.account(11) == "duplicate"
    assert window.account(9) == "ok"  # before the first count: nothing to take back
    assert window.lost == 1
    assert window.newest == 13


def test_window_edges_and_wrap() -> None:
    """d == 8192 is ahead, d == 8193 behind; counts wrap at 16384."""
    window = SequenceWindow(modulus=PACKET_SEQ_MODULUS)
    window.account(16380)
    assert window.account(3) == "ok"  # d = 7 across the wrap
    assert window.lost == 6
    assert window.account(3 + 8192) == "ok"  # d == 8192: ahead
    assert window.lost == 6 + 8191
    assert window.account(3 + 1) == "ok"  # d == 8193: behind, counted lost -> taken back
    assert window.lost == 6 + 8190
    assert window.account(3) == "ok"  # d == 8192 again: ahead, not a duplicate
    assert window.newest == 3


def test_envelope_counter_restart() -> None:
    """Envelope seq (modulo 2**32): a jump beyond the window both ways is a restart, not loss."""
    window = SequenceWindow(modulus=2**32, window=SEQ_WINDOW)
    assert window.account(2**32 - 1) == "ok"
    assert window.account(0) == "ok"  # wraps
    assert window.account(5_000_000) == "ok"
    assert (window.lost, window.restarts, window.newest) == (0, 1, 5_000_000)
    assert window.account(4_999_999) == "ok"  # before the restart: never counted lost
    assert window.account(5_000_000) == "duplicate"
    assert window.account(5_000_002) == "ok"
    assert window.lost == 1


def test_invalid_arguments() -> None:
    """A window that does not divide the modulus at least twice, or a count out of range."""
    with pytest.raises(ValueError, match="must divide modulus"):
        SequenceWindow(modulus=16384, window=10000)
    window = SequenceWindow(modulus=16384)
    with pytest.raises(ValueError, match=r"outside 0\.\.16383"):
        window.account(16384)
    with pytest.raises(ValueError, match=r"counts must lie in 0\.\.16383"):
        window.account_many(np.array([1, -1]))


steps = st.one_of(
    st.just(1),
    st.sampled_from([0, 2, -1, -2, 8191, 8192, 8193, -8191, -8192]),
    st.integers(-16384, 16384),
)


@settings(max_examples=300, deadline=None)
@given(
    st.integers(0, 16383),
    st.lists(st.one_of(st.lists(st.just(1), max_size=200), st.lists(steps, max_size=20))),
    st.lists(st.integers(0, 1000), max_size=3),
)
def test_vectorised_equals_scalar(start: int, runs: list[list[int]], cuts: list[int]) -> None:
    """account_many, in any split across calls, equals account one by one and the ICD rule."""
    counts = ((start + np.cumsum([0, *(s for run in runs for s in run)])) % 16384).tolist()
    expected, lost = reference(counts)
    vectorised = SequenceWindow(modulus=PACKET_SEQ_MODULUS)
    pieces = np.split(np.array(counts), sorted(c for c in cuts if c <= len(counts)))
    duplicates = [bool(d) for piece in pieces for d in vectorised.account_many(piece)]
    scalar = SequenceWindow(modulus=PACKET_SEQ_MODULUS)
    assert [scalar.account(c) == "duplicate" for c in counts] == expected
    assert duplicates == expected
    assert vectorised.lost == scalar.lost == lost
    assert vectorised.newest == scalar.newest


def test_long_advancing_run() -> None:
    """A long run with gaps (vectorised in one step) keeps the last 8192 counts right."""
    counts = np.arange(0, 60_000, 3) % 16384  # 2 lost per step, wrapping many times
    window = SequenceWindow(modulus=PACKET_SEQ_MODULUS)
    assert not window.account_many(counts).any()
    assert window.lost == 2 * (len(counts) - 1)
    newest = int(counts[-1])
    assert window.account(newest - 3) == "duplicate"  # seen, inside the window
    assert window.account(newest - 1) == "ok"  # skipped, taken back
    assert window.lost == 2 * (len(counts) - 1) - 1
