"""The end-to-end benchmark's pure arithmetic: when a drain crossed a count of messages,
the history writer's progress read from /metrics, the daemon+history ratio."""

from __future__ import annotations

import pytest

from benchmarks.bench_end_to_end import (
    MQTT_VERSIONS,
    SUSTAINED_FROM,
    Result,
    Stream,
    crossing_time,
    history_progress,
    summarise,
)


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


def test_history_progress_reads_the_writers_counters_and_lag() -> None:
    """The writer's lines of a /metrics text: samples by result and the lag, nothing else."""
    text = (
        "# TYPE gs_history_samples_total counter\n"
        'gs_history_samples_total{result="ok"} 4105.0\n'
        'gs_history_samples_total{result="rejected"} 12.0\n'
        "gs_history_lag_seconds 0.25\n"
        'gs_envelopes_total{result="ok",vehicle="ingenuity"} 100.0\n'
    )
    assert history_progress(text) == {
        "history_samples_ok": 4105.0,
        "history_samples_rejected": 12.0,
        "history_lag_s": 0.25,
    }


def test_summary_gives_daemon_with_history_over_daemon_per_version() -> None:
    """Two rounds, the daemon at 1.0 M packets/s in both, daemon+history at 0.9 and 0.7 M:
    the median 0.8 M over 1.0 M is 80 %, and each round's ratio is listed."""

    def result(subscriber: str, packets_per_s: float) -> Result:
        # packets_per_s is packets * (1 - SUSTAINED_FROM) / sustained_seconds.
        sustained_s = 1e6 * (1 - SUSTAINED_FROM) / packets_per_s
        return Result(subscriber, "imu", 1.0, 1, 1_000_000, sustained_s, {})

    results = []
    for with_history in (0.9e6, 0.7e6):
        results.append(result("mosquitto_sub", 1e6))
        for version in MQTT_VERSIONS:
            results.append(result(f"bare aiomqtt {version}", 1e6))
            results.append(result(f"daemon {version}", 1e6))
            results.append(result(f"daemon+history {version}", with_history))
    lines = summarise(Stream("imu", [], 1_000_000), results).splitlines()
    for version in MQTT_VERSIONS:
        assert (
            f"imu: daemon+history {version} / daemon {version} = 80% of the sustained medians"
            " (rounds: 90%, 70%)"
        ) in lines
