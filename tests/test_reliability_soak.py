"""Soak (docs/reliability.md, item 9): the trend analysis in CI, the 30-minute run under `slow`.

python -m benchmarks.soak --duration-s 1800 --output soak.json    # the documented run
SOAK_DURATION_S=1800 python -m pytest -m slow tests/test_reliability_soak.py -s
"""

from __future__ import annotations

import os

import pytest

from benchmarks.soak import SoakSample, analyse, run_soak, slope_per_s
from tests.reliability_support import MIB

SOAK_DURATION_ENV = "SOAK_DURATION_S"


def samples(
    *,
    count: int = 60,
    rss_step: int = 0,
    latency_step_s: float = 0.0,
    fds_step: float = 0.0,
) -> list[SoakSample]:
    """A synthetic soak: a sample every 30 s, each series flat or growing by its step."""
    return [
        SoakSample(
            elapsed_s=30.0 * index,
            rss_bytes=60 * MIB + rss_step * index + (index % 3) * 100_000,  # noise, no trend
            peak_rss_bytes=70 * MIB,
            open_fds=9 + int(fds_step * index),
            threads=5,
            probe_latency_s=0.02 + latency_step_s * index,
            envelopes_ok=float(index),
            envelopes_lost=0.0,
            packets_lost=0.0,
        )
        for index in range(count)
    ]


def test_slope_of_a_line_and_of_a_constant() -> None:
    """The least-squares slope recovers a line's gradient and is 0 for a constant."""
    assert slope_per_s([0, 1, 2, 3], [1, 3, 5, 7]) == pytest.approx(2.0)
    assert slope_per_s([0, 1, 2], [4, 4, 4]) == 0.0
    assert slope_per_s([5], [1]) == 0.0


def test_flat_soak_shows_no_growth() -> None:
    """Noisy but flat series: nothing is reported growing."""
    assert analyse(samples()).growing == []


def test_each_kind_of_growth_is_reported() -> None:
    """A leak of 1 MiB per sample, a latency creeping up, a descriptor leak: each is named."""
    assert analyse(samples(rss_step=MIB)).growing == ["rss"]
    assert analyse(samples(latency_step_s=0.005)).growing == ["latency"]
    assert analyse(samples(fds_step=0.5)).growing == ["open_fds"]


@pytest.mark.integration
@pytest.mark.slow
def test_soak_at_the_nominal_flight_rate_shows_no_growth() -> None:
    """The documented soak: 30 minutes of flight 3 in a loop; no series grows, nothing lost.

    1. Mosquitto, the daemon and the live simulator (flight 3, speed 1, repeated) start.
    2. Every 10 s: RSS, descriptors and threads from /proc, and a probe's end-to-end latency.
    3. After SOAK_DURATION_S (default 1800 s): no trend in any series; no envelope lost.
    """
    duration_s = float(os.environ.get(SOAK_DURATION_ENV, "1800"))
    trend, taken = run_soak(duration_s=duration_s, sample_s=10.0)
    assert trend.growing == []
    assert taken[-1].envelopes_lost == 0
    assert taken[-1].envelopes_ok > 0
