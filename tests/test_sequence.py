"""Sequence accounting (ICD section 6): each rule, and the vectorised form against the text."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from groundstation.core.ccsds import SEQ_COUNT_MODULUS
from groundstation.core.sequence import SEQ_WINDOW, SequenceWindow


@dataclass
class Reference:
    """ICD section 6 rules 1-4 transcribed literally: sets and dicts, one packet at a time."""

    modulus: int = SEQ_COUNT_MODULUS
    window: int = SEQ_WINDOW
    newest: int | None = None
    newest_time: float = 0.0
    lost: int = 0
    restarts: int = 0
    taken_over: int = 0
    excused: bool = False  # the next rule 2 step's skipped counts are taken over, not lost
    seen: dict[int, set[float]] = field(default_factory=dict)  # count -> times seen
    lost_counts: set[int] = field(default_factory=set)
    taken_counts: set[int] = field(default_factory=set)

    def among_last_counts(self, count: int) -> bool:
        assert self.newest is not None
        return (self.newest - count) % self.modulus < self.window

    def account(self, count: int, time: float) -> bool:
        """One packet; True for a duplicate."""
        if self.newest is None:
            self.newest, self.newest_time, self.seen = count, time, {count: {time}}
            self.excused = False
            return False
        # Rule 1: the same (count, time) as a packet seen among the last 8192 counts.
        if self.among_last_counts(count) and time in self.seen.get(count, set()):
            return True
        if time > self.newest_time:
            d = (count - self.newest) % self.modulus
            if 1 <= d <= self.window and not (count == 0 and d > 1):  # rule 2
                skipped = {(self.newest + k) % self.modulus for k in range(1, d)}
                if self.excused:
                    self.taken_over += d - 1
                    self.taken_counts |= skipped
                    self.lost_counts -= skipped
                else:
                    self.lost += d - 1
                    self.lost_counts |= skipped
                    self.taken_counts -= skipped
                for gone in skipped:
                    self.seen.pop(gone, None)
                self.seen.setdefault(count, set()).add(time)
                self.lost_counts.discard(count)
                self.taken_counts.discard(count)
            else:  # rule 3: a restart, the window afresh from it
                self.restarts += 1
                self.seen, self.lost_counts, self.taken_counts = {count: {time}}, set(), set()
            self.excused = False
            self.newest, self.newest_time = count, time
            self.seen = {c: t for c, t in self.seen.items() if self.among_last_counts(c)}
            self.lost_counts = {c for c in self.lost_counts if self.among_last_counts(c)}
            self.taken_counts = {c for c in self.taken_counts if self.among_last_counts(c)}
            return False
        # Rule 4: late; takes one back from lost (or taken over) if its count was counted so.
        if self.among_last_counts(count):
            if count in self.lost_counts:
                self.lost -= 1
                self.lost_counts.discard(count)
            elif count in self.taken_counts:
                self.taken_over -= 1
                self.taken_counts.discard(count)
            self.seen.setdefault(count, set()).add(time)
        return False


def test_ahead_duplicate_and_late() -> None:
    """Counts 10, 13 at newer times: 2 lost; 13 again is a duplicate; 11 late takes one back;
    9, from before the first count, is ok and takes nothing back."""
    window = SequenceWindow(modulus=SEQ_COUNT_MODULUS)
    assert window.account(10, 100.0) == "ok"
    assert window.account(13, 103.0) == "ok"
    assert window.lost == 2
    assert window.account(13, 103.0) == "duplicate"
    assert window.account(11, 101.0) == "ok"
    assert window.lost == 1
    assert window.account(11, 101.0) == "duplicate"
    assert window.account(9, 99.0) == "ok"
    assert (window.lost, window.restarts, window.newest, window.newest_time) == (1, 0, 13, 103.0)


def test_reboot_counters_to_zero_clock_running_on() -> None:
    """A vehicle reboots: counts 0, 1, 2 again while its clock runs on. Step by step:
    1. counts 0..99 at 1 Hz: nothing lost;
    2. reboot: counts 0..99 again, times 1000 s on: every packet ok (none duplicate), one
       restart, nothing lost;
    3. a copy of a packet from after the reboot is still a duplicate."""
    window = SequenceWindow(modulus=SEQ_COUNT_MODULUS)
    counts = np.arange(100)
    times = counts.astype(np.float64)
    assert not window.account_many(counts, 5000.0 + times).any()
    assert not window.account_many(counts, 6000.0 + times).any()
    assert (window.lost, window.restarts, window.newest) == (0, 1, 99)
    assert window.account(50, 6050.0) == "duplicate"
    assert window.account(50, 5050.0) == "ok"  # the packet from before the reboot, late


def test_count_standing_still_or_jumping_far_is_a_restart() -> None:
    """Newer times with the count unchanged, back, or more than 8192 ahead: restarts, not loss."""
    window = SequenceWindow(modulus=SEQ_COUNT_MODULUS)
    window.account(500, 1.0)
    assert window.account(500, 2.0) == "ok"  # stood still
    assert window.account(400, 3.0) == "ok"  # went back
    assert window.account(400 + 8193, 4.0) == "ok"  # jumped past the window
    assert (window.lost, window.restarts) == (0, 3)
    assert window.account((400 + 8193 + 8192) % 16384, 5.0) == "ok"  # d == 8192: 8191 lost
    assert (window.lost, window.restarts) == (8191, 3)


def test_jump_to_zero() -> None:
    """Count 0 after 16383 is the wrap (d = 1); count 0 after anything else is a restart."""
    window = SequenceWindow(modulus=SEQ_COUNT_MODULUS)
    window.account(16383, 1.0)
    assert window.account(0, 2.0) == "ok"
    assert (window.lost, window.restarts) == (0, 0)
    window.account(5, 3.0)
    assert window.lost == 4
    assert window.account(0, 4.0) == "ok"
    assert (window.lost, window.restarts) == (4, 1)


def test_wrap_at_16384_and_window_edges() -> None:
    """Counts wrap at 16384; d == 8192 is ahead; a count 8192 behind newest is outside the
    window, so a late packet with it takes nothing back."""
    window = SequenceWindow(modulus=SEQ_COUNT_MODULUS)
    window.account(16380, 1.0)
    assert window.account(3, 2.0) == "ok"  # d = 7 across the wrap
    assert window.lost == 6
    assert window.account(3 + 8192, 3.0) == "ok"  # d == 8192: ahead
    assert window.lost == 6 + 8191
    assert window.account(3 + 1, 2.5) == "ok"  # late, counted lost: taken back
    assert window.lost == 6 + 8190
    assert window.account(3, 2.0) == "ok"  # 8192 behind: outside the window, not a duplicate
    assert window.lost == 6 + 8190
    assert (window.newest, window.restarts) == (3 + 8192, 0)


def test_late_packet_never_becomes_newest() -> None:
    """A late packet ahead in count but older in time changes neither newest nor lost."""
    window = SequenceWindow(modulus=SEQ_COUNT_MODULUS)
    window.account(10, 100.0)
    assert window.account(20, 50.0) == "ok"
    assert (window.newest, window.newest_time, window.lost) == (10, 100.0, 0)
    assert window.account(11, 101.0) == "ok"
    assert window.lost == 0


def test_envelope_seq_relay_restart_and_redelivery() -> None:
    """Envelope seq modulo 2**32 with ert as time: the wrap is ahead; seq going back while
    ert moves on is a relay restart; the same (seq, ert) again is a redelivery (duplicate)."""
    window = SequenceWindow(modulus=2**32, window=SEQ_WINDOW)
    assert window.account(2**32 - 1, 10.0) == "ok"
    assert window.account(0, 11.0) == "ok"  # wraps
    assert window.account(1, 12.0) == "ok"
    assert window.account(1, 12.0) == "duplicate"
    assert window.account(5_000_000, 13.0) == "ok"  # far ahead: a restart
    assert window.account(0, 14.0) == "ok"  # relay rebooted
    assert (window.lost, window.restarts, window.newest) == (0, 2, 0)
    assert window.account(2, 15.0) == "ok"
    assert window.lost == 1
    assert window.account(1, 14.5) == "ok"  # late: taken back
    assert window.lost == 0


def test_invalid_arguments() -> None:
    """A window that does not divide the modulus at least twice, a count out of range, or
    counts and times of different lengths."""
    with pytest.raises(ValueError, match="must divide modulus"):
        SequenceWindow(modulus=16384, window=10000)
    window = SequenceWindow(modulus=16384)
    with pytest.raises(ValueError, match=r"outside 0\.\.16383"):
        window.account(16384, 1.0)
    with pytest.raises(ValueError, match=r"counts must lie in 0\.\.16383"):
        window.account_many(np.array([1, -1]), np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match="1 times for 2 counts"):
        window.account_many(np.array([1, 2]), np.array([1.0]))


count_steps = st.one_of(
    st.just(1),
    st.sampled_from([0, 2, -1, -2, 8191, 8192, 8193, -8191, -8192]),
    st.integers(-16384, 16384),
)
time_steps = st.one_of(st.just(1.0), st.sampled_from([0.0, -1.0, -3.0, 2.0, -100.0]))
# A packet: its count step and time step, or a repeat of an earlier packet (by how far back),
# or a session takeover (EXCUSE: the next gap is excused).
EXCUSE = "excuse"
packets = st.one_of(
    st.tuples(count_steps, time_steps),
    st.tuples(st.just(None), st.integers(1, 50)),
    st.tuples(st.just(EXCUSE), st.just(0)),
)


@settings(max_examples=400, deadline=None)
@given(
    st.integers(0, 16383),
    st.lists(
        st.one_of(
            st.lists(st.just((1, 1.0)), max_size=200),  # a run of the normal case
            st.lists(packets, max_size=20),
        )
    ),
    st.lists(st.integers(0, 1000), max_size=3),
    st.booleans(),
)
def test_vectorised_equals_scalar_and_the_icd_text(
    start: int,
    runs: list[list[tuple[int | str | None, float]]],
    cuts: list[int],
    to_zero: bool,
) -> None:
    """account_many, in any split across calls, equals account one by one and `Reference`:
    duplicates, lost, taken over, restarts and newest, on streams with reboots, jumps,
    copies, late packets and session takeovers (`to_zero`: jumps land on count 0, the
    reboot case)."""
    stream: list[tuple[int, float] | None] = []  # None: a takeover before the next packet
    count, time = start, 1000.0
    for step_count, step in (p for run in runs for p in run):
        if step_count == EXCUSE:
            stream.append(None)
            continue
        if step_count is None:  # a copy of an earlier packet
            earlier = [p for p in stream if p is not None]
            if earlier:
                stream.append(earlier[max(0, len(earlier) - int(step))])
            continue
        assert isinstance(step_count, int)
        count = 0 if to_zero and abs(step_count) > 2 else (count + step_count) % 16384
        time += step
        stream.append((count, time))
    reference = Reference()
    scalar = SequenceWindow(modulus=SEQ_COUNT_MODULUS)
    expected: list[bool] = []
    scalar_duplicates: list[bool] = []
    for item in stream:
        if item is None:
            reference.excused = True
            scalar.excuse_next_gap()
        else:
            expected.append(reference.account(*item))
            scalar_duplicates.append(scalar.account(*item) == "duplicate")
    assert scalar_duplicates == expected
    # Vectorised: pieces end at every takeover and at the random cuts.
    vectorised = SequenceWindow(modulus=SEQ_COUNT_MODULUS)
    duplicates: list[bool] = []
    piece: list[tuple[int, float]] = []
    cut_at = set(cuts)

    def flush() -> None:
        if piece:
            counts = np.array([c for c, _ in piece], dtype=np.int64)
            times = np.array([t for _, t in piece], dtype=np.float64)
            duplicates.extend(bool(d) for d in vectorised.account_many(counts, times))
            piece.clear()

    for index, item in enumerate(stream):
        if item is None:
            flush()
            vectorised.excuse_next_gap()
            continue
        if index in cut_at:
            flush()
        piece.append(item)
    flush()
    assert duplicates == expected
    assert vectorised.lost == scalar.lost == reference.lost
    assert vectorised.taken_over == scalar.taken_over == reference.taken_over
    assert vectorised.restarts == scalar.restarts == reference.restarts
    assert vectorised.newest == scalar.newest == reference.newest


def test_a_gap_across_a_session_takeover_is_taken_over_not_lost() -> None:
    """10 accounted, a takeover, 20 arrives: 11-19 taken over; 15 late takes one back; the
    next gap (20 -> 25) is lost as usual."""
    window = SequenceWindow(modulus=SEQ_COUNT_MODULUS)
    for count in range(11):
        window.account(count, float(count))
    window.excuse_next_gap()
    assert window.account(20, 20.0) == "ok"
    assert (window.lost, window.taken_over) == (0, 9)
    assert window.account(15, 15.0) == "ok"
    assert (window.lost, window.taken_over) == (0, 8)
    assert window.account(15, 15.0) == "duplicate"
    window.account(25, 25.0)
    assert (window.lost, window.taken_over) == (4, 8)


def test_long_advancing_run() -> None:
    """A long run with gaps (vectorised in one step) keeps the last 8192 counts right; odd
    counts never land on 0, so the run wraps many times without a restart."""
    counts = np.arange(1, 60_000, 2) % 16384  # 1 lost per step
    times = np.arange(counts.shape[0], dtype=np.float64)
    window = SequenceWindow(modulus=SEQ_COUNT_MODULUS)
    assert not window.account_many(counts, times).any()
    assert (window.lost, window.restarts) == (len(counts) - 1, 0)
    newest = int(counts[-1])
    assert window.account(newest - 2, times[-2]) == "duplicate"  # seen, inside the window
    assert window.account(newest - 1, times[-2] + 0.5) == "ok"  # skipped, taken back
    assert window.lost == len(counts) - 2
    assert window.newest == newest


def test_jump_to_zero_inside_a_run() -> None:
    """Step 3 from 0 lands on 0 after 16384 packets: that jump (d = 3) is a restart, both in
    one vectorised call and packet by packet."""
    counts = np.arange(0, 60_000, 3) % 16384
    times = np.arange(counts.shape[0], dtype=np.float64)
    vectorised = SequenceWindow(modulus=SEQ_COUNT_MODULUS)
    vectorised.account_many(counts, times)
    scalar = SequenceWindow(modulus=SEQ_COUNT_MODULUS)
    for count, time in zip(counts.tolist(), times.tolist(), strict=True):
        scalar.account(count, time)
    assert (vectorised.lost, vectorised.restarts) == (scalar.lost, scalar.restarts)
    assert (vectorised.lost, vectorised.restarts) == (2 * (len(counts) - 1) - 2, 1)
