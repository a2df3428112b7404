"""The end-to-end benchmark's pure arithmetic: when a drain crossed a count of messages."""

from __future__ import annotations

import pytest

from benchmarks.bench_end_to_end import crossing_time


def test_crossing_time_interpolates_between_readings() -> None:
    """Readings every 50 ms: 0 at 0.00 s, 100 at 0.05 s, 300 at 0.10 s.

    200 messages were through halfway between the last two readings (0.075 s); 100 exactly
    at the second; 50 halfway from the start (0 messages at 0 s) to it.
    """
    progress = [(0.0, 0.0), (0.05, 100.0), (0.10, 300.0)]
    assert crossing_time(progress, 200) == pytest.approx(0.075)
    assert crossing_time(progress, 100) == pytest.approx(0.05)
    assert crossing_time(progress, 50) == pytest.approx(0.025)


def test_crossing_time_of_a_count_never_reached_is_an_error() -> None:
    """A series that stops short of the count has no crossing: ValueError, not a guess."""
    with pytest.raises(ValueError, match="never reached 400"):
        crossing_time([(0.05, 100.0), (0.10, 300.0)], 400)
