"""The history writer against a real VictoriaMetrics (Debian's single-node server): the
same remote-write 1.0 client, the same per-series samples as with Prometheus.

VictoriaMetrics takes samples at any time within its retention, in any order, so the
writer's "out of bounds" / "too old" splitting must not start: everything is `ok`,
nothing `backfill`, even for a flight written days after it flew.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from groundstation.consumers.history.remote_write import Series, compress, encode_write_request
from groundstation.consumers.history.writer import Verdict, post
from tests.history_support import HOUR_S, assert_flight3_history, counts, fly, writer_for
from tests.services import VictoriaMetrics, running_victoria_metrics

pytestmark = [pytest.mark.integration]

DAY_S = 86_400.0


@pytest.fixture
def victoria(tmp_path: Path) -> Iterator[VictoriaMetrics]:
    with running_victoria_metrics(tmp_path / "victoria-metrics") as server:
        yield server


def test_flight3_history_at_spacecraft_time(tmp_path: Path, victoria: VictoriaMetrics) -> None:
    """Flight 3 flown 3 h ago, archived, written: the per-series counts and peaks of the
    Prometheus test; written twice, nothing changes."""
    # VictoriaMetrics compresses values to about 15 significant digits, block by block: a
    # sample written again can come back differing in its last digit.
    assert_flight3_history(tmp_path, victoria, rel=1e-12)


def test_old_samples_are_taken_not_left_for_backfill(
    tmp_path: Path, victoria: VictoriaMetrics
) -> None:
    """Flight 3 twice back to back, flown 30 days ago, written in one request after a
    sample of now: Prometheus would refuse all of it (out of bounds); VictoriaMetrics takes
    every sample, so every request is answered ok at once and every sample counts `ok`."""
    start = time.time() - 30 * DAY_S
    flight = fly(tmp_path, start_time=start, arrive_after_s=HOUR_S, repeat=2)
    anchor = Series({"__name__": "anchor"}, [(int(time.time() * 1000), 1.0)])
    assert post(victoria.write_url, compress(encode_write_request([anchor])), timeout_s=5).ok
    writer = writer_for(flight.archive, victoria, batch_max_samples=1_000_000, envelopes=10_000)
    verdicts: list[Verdict] = []
    send = writer._send

    def counted(body: bytes) -> Verdict:
        verdicts.append(send(body))
        return verdicts[-1]

    writer._send = counted
    assert writer.catch_up()
    assert writer.status.samples["backfill"] == writer.status.samples["rejected"] == 0
    # Every request taken at once: none refused, so none split (one per 1 MiB batch).
    assert verdicts
    assert all(verdict.ok for verdict in verdicts), verdicts
    assert counts(victoria, flight) == flight.expected
    assert sum(flight.expected.values()) > 0
