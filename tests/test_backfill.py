"""`groundstation backfill`: the history's samples as OpenMetrics, imported with promtool.

The format is checked on a hand-built batch and read back with prometheus_client's
OpenMetrics parser; the whole procedure of docs/deploy.md runs against a real Prometheus
2.42: samples the writer had to leave for backfill (older than the receiver takes) are
written by the command, turned into blocks by `promtool tsdb create-blocks-from
openmetrics`, put in Prometheus's data directory, and queried.
"""

from __future__ import annotations

import math
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from groundstation.config import IngestConfig
from groundstation.consumers.history.openmetrics import EOF_LINE, openmetrics_lines
from groundstation.consumers.history.remote_write import Series, compress, encode_write_request
from groundstation.consumers.history.samples import SampleBatch
from groundstation.consumers.history.writer import post
from groundstation.consumers.telemetry import ALTITUDE, BATTERY_VOLTAGE
from tests.daemon_support import REPO
from tests.history_support import HOUR_S, counts, fly, peak, writer_for
from tests.services import find_binary
from tests.test_prometheus_live import PrometheusServer

WINDOW = {"global": {}, "storage": {"tsdb": {"out_of_order_time_window": "30m"}}}


def small_batch() -> SampleBatch:
    batch = SampleBatch()
    heli = {"vehicle": "ingenuity"}
    batch.add(BATTERY_VOLTAGE, heli, 1_700_000_002.0, 22.5)
    batch.add(ALTITUDE, heli, 1_700_000_001.5, 4.25)
    batch.add(BATTERY_VOLTAGE, heli, 1_700_000_001.0, 22.0)
    batch.add(BATTERY_VOLTAGE, heli, 1_700_000_001.0, 99.0)  # same ms: the first stays
    batch.add(BATTERY_VOLTAGE, {"vehicle": 'odd "name"\\'}, 1_700_000_003.0, math.nan)
    return batch


def test_openmetrics_groups_families_sorts_times_and_reads_back() -> None:
    text = "".join(openmetrics_lines(small_batch()))
    assert text.endswith(EOF_LINE)
    assert text.count("# TYPE gs_battery_voltage_volts gauge\n") == 1
    lines = text.splitlines()
    assert lines[0] == "# TYPE gs_altitude_meters gauge"
    assert lines[1] == (
        'gs_altitude_meters{timeline="spacecraft",vehicle="ingenuity"} 4.25 1700000001.500'
    )
    parsed = {
        (sample.name, tuple(sorted(sample.labels.items())), float(sample.timestamp)): sample.value
        # Its OpenMetrics parser has no type hints.
        for family in text_string_to_metric_families(text)  # type: ignore[no-untyped-call]
        for sample in family.samples
    }
    heli = (("timeline", "spacecraft"), ("vehicle", "ingenuity"))
    odd = (("timeline", "spacecraft"), ("vehicle", 'odd "name"\\'))
    assert {key: value for key, value in parsed.items() if key[1] == heli} == {
        ("gs_altitude_meters", heli, 1_700_000_001.5): 4.25,
        ("gs_battery_voltage_volts", heli, 1_700_000_001.0): 22.0,
        ("gs_battery_voltage_volts", heli, 1_700_000_002.0): 22.5,
    }
    [value] = [value for key, value in parsed.items() if key[1] == odd]
    assert math.isnan(value)


def test_time_span_selects_samples() -> None:
    text = "".join(
        openmetrics_lines(small_batch(), from_ms=1_700_000_001_500, to_ms=1_700_000_002_000)
    )
    samples = [line for line in text.splitlines() if not line.startswith("#")]
    assert [line.rsplit(" ", 2)[1:] for line in samples] == [
        ["4.25", "1700000001.500"],
        ["22.5", "1700000002.000"],
    ]
    assert "# TYPE gs_battery_voltage_volts gauge" in text
    nothing = "".join(openmetrics_lines(small_batch(), from_ms=0, to_ms=1))
    assert nothing == EOF_LINE


@pytest.mark.integration
def test_backfill_brings_in_what_the_receiver_refused(tmp_path: Path) -> None:
    """1. Flight 3 flown 3 h ago; Prometheus (30 min window) already holds a sample from
       now: the writer's samples are all refused as too old, counted `backfill`;
    2. `groundstation backfill --from --to` over the flight, promtool makes blocks of it,
       they go into the (stopped) Prometheus's data directory;
    3. the command writes exactly the samples the writer left; started again, Prometheus
       holds per series the samples ICD section 7 gives (the simulator's counts), with
       altitude peaking at 5 m."""
    flight = fly(tmp_path, start_time=time.time() - 3 * HOUR_S, arrive_after_s=2 * HOUR_S)
    server = PrometheusServer(
        workdir=tmp_path / "prometheus", extra_args=("--web.enable-remote-write-receiver",)
    )
    server.start(WINDOW)
    try:
        now = Series({"__name__": "anchor"}, [(int(time.time() * 1000), 1.0)])
        assert post(
            f"{server.url}/api/v1/write", compress(encode_write_request([now])), timeout_s=5
        ).ok
        # In the command's batches: a series' two samples in one millisecond are one sample
        # within a batch, and two (each counted) when a batch boundary falls between them.
        writer = writer_for(flight.archive, server, envelopes=IngestConfig().batch_max_envelopes)
        writer.catch_up()
        left = writer.status.samples["backfill"]
        assert writer.status.samples["ok"] == 0
        assert writer.status.samples["rejected"] == 0
        assert left >= sum(flight.expected.values())
        server.stop()

        export = tmp_path / "flight3.om"
        completed = subprocess.run(
            [sys.executable, "-m", "groundstation", "backfill", str(flight.archive),
             "--from", f"{flight.start:.3f}", "--to", f"{flight.end:.3f}", "--out", str(export)],
            capture_output=True, check=False, cwd=REPO, timeout=300,
        )  # fmt: skip
        assert completed.returncode == 0, completed.stderr.decode()
        assert f"wrote {left} samples" in completed.stderr.decode()
        blocks = subprocess.run(
            [find_binary("promtool"), "tsdb", "create-blocks-from", "openmetrics", str(export),
             str(server.workdir / "data")],
            capture_output=True, check=False, timeout=300,
        )  # fmt: skip
        assert blocks.returncode == 0, blocks.stdout.decode() + blocks.stderr.decode()

        server.start(WINDOW)
        assert counts(server, flight) == flight.expected
        altitude = peak(server, flight, 'gs_altitude_meters{timeline="spacecraft"}')
        assert altitude == pytest.approx(5.0, abs=0.1)
    finally:
        server.stop()
