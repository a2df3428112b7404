"""The history benchmark on a 20 s pass: it runs, and its counts agree end to end."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.bench_history import FLIGHT_RATE_PPS, run_once

pytestmark = [pytest.mark.integration]


def test_bench_history_small_pass_counts_agree(tmp_path: Path) -> None:
    """Every sample the writer counts as written is in Prometheus, none refused, and a pass
    at 83 packets/s gives more samples than packets (HK alone has 19 per packet)."""
    result = run_once(tmp_path, pass_s=20.0, batch_envelopes=256)
    assert result.samples == result.stored
    assert result.rejected == 0
    assert result.samples > 20 * FLIGHT_RATE_PPS
    assert result.samples_per_s > 0
    assert 0 < result.write_seconds <= result.queryable_seconds
