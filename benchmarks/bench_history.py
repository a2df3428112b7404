"""History writer throughput: a store-and-forward pass archived, then written into Prometheus.

The pass is the stress profile at the flight rates of ICD section 4 (HELI_IMU 50/s,
HELI_NAV 30/s, HELI_HK, ROVER_NAV and HBS_LINK 1/s: 83 packets/s of packet time over
every APID), `--pass-s` seconds of it (one hour by default), in envelopes of 64 packets
as the relay delivers them after the pass. It is archived as the daemon archives it,
then the history writer (`HistoryWriter.catch_up`) sends it by remote write to a real
Prometheus 2.42 started with --web.enable-remote-write-receiver and an out-of-order
window covering the pass. Reported, median of `--runs` runs (a fresh Prometheus each):

- samples: what the writer sent and Prometheus accepted (and, checked, what it holds);
- samples/s: samples over the writer's time from the first record read to the last
  request answered;
- seconds to queryable: from the pass's last envelope archived to the newest sample of
  the pass answered by a query (polled every 50 ms). The target is 60 s.

Run: `python -m benchmarks.bench_history` (about a minute per run; --help for sizes).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from groundstation.simulators.output import read_envelopes
from groundstation.simulators.run import SimulationOptions, simulate
from groundstation.simulators.stress import DEFAULT_MIX

from groundstation.config import ArchiveConfig, HistoryConfig, IngestConfig
from groundstation.consumers.history.writer import HistoryWriter
from groundstation.core.definitions import load_dictionaries
from groundstation.ingest.archive import ArchiveRecord, ArchiveWriter
from tests.test_prometheus_live import PrometheusServer

FLIGHT_RATE_PPS = sum(DEFAULT_MIX.values())  # the default mix's weights are the ICD rates
POLL_S = 0.05
QUERYABLE_TARGET_S = 60.0


@dataclass(frozen=True)
class Pass:
    """An archived pass: where, its envelopes, and its packet-time span."""

    archive: Path
    envelopes: int
    packets: int
    start: float
    end: float


@dataclass(frozen=True)
class Result:
    samples: int  # sent and accepted (gs_history_samples_total{result="ok"})
    rejected: int
    stored: int  # what Prometheus holds over the pass
    write_seconds: float
    queryable_seconds: float  # last envelope archived -> newest sample queryable

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.write_seconds


def make_pass(directory: Path, *, pass_s: float, start_time: float) -> Pass:
    """`pass_s` seconds of flight-rate packets, store-and-forward, archived (fsync never)."""
    sim = directory / "sim"
    asyncio.run(
        simulate(
            SimulationOptions(
                profile="stress",
                output_dir=sim,
                start_time=start_time,
                rate_pps=FLIGHT_RATE_PPS,
                stress_duration_s=pass_s,
                report_path=sim / "report.json",
            )
        )
    )
    envelopes = list(read_envelopes(sim / "envelopes.msgpack"))
    archive = directory / "archive"
    with ArchiveWriter(ArchiveConfig(directory=archive, fsync="never")) as writer:
        writer.append(
            [
                ArchiveRecord(topic=e.topic, received_at=time.time(), payload=e.payload, valid=True)
                for e in envelopes
            ]
        )
    packets = round(pass_s * FLIGHT_RATE_PPS)
    return Pass(archive, len(envelopes), packets, start_time, start_time + pass_s)


def newest_sample_ms(prometheus: PrometheusServer, span: Pass) -> float:
    """The newest history sample's timestamp over the pass (ms), or -inf if none yet."""
    # The raw samples of the pass's last half minute, each at its own timestamp.
    answer = prometheus.api(
        "query", query='{timeline="spacecraft"}[30s]', time=f"{span.end + 5:.3f}"
    )
    series = answer.get("data", {}).get("result", [])
    times = [float(series_["values"][-1][0]) for series_ in series if series_["values"]]
    return max(times) * 1000.0 if times else -math.inf


def stored_samples(prometheus: PrometheusServer, span: Pass) -> int:
    """Every history sample Prometheus holds over the pass (per name: count_over_time drops
    __name__, so two families' series would clash in one vector)."""
    seconds = math.ceil(span.end - span.start) + 10
    names = prometheus.api("label/__name__/values", **{"match[]": '{timeline="spacecraft"}'})
    total = 0
    for name in names["data"]:
        answer = prometheus.api(
            "query",
            query=f'sum(count_over_time({name}{{timeline="spacecraft"}}[{seconds}s]))',
            time=f"{span.end + 5:.3f}",
        )
        assert answer["status"] == "success", answer
        total += int(float(answer["data"]["result"][0]["value"][1]))
    return total


def run_once(workdir: Path, *, pass_s: float, batch_envelopes: int) -> Result:
    """One pass into a fresh Prometheus; the writer runs in this thread until caught up."""
    start_time = math.floor(time.time() - pass_s - 600.0)
    span = make_pass(workdir, pass_s=pass_s, start_time=start_time)
    archived_at = time.monotonic()
    prometheus = PrometheusServer(
        workdir=workdir / "prometheus", extra_args=("--web.enable-remote-write-receiver",)
    )
    window = f"{math.ceil(pass_s / 3600.0 + 1)}h"
    prometheus.start({"global": {}, "storage": {"tsdb": {"out_of_order_time_window": window}}})
    try:
        writer = HistoryWriter(
            HistoryConfig(url=f"{prometheus.url}/api/v1/write"),
            archive_dir=span.archive,
            dictionaries=load_dictionaries(),
            max_payload_bytes=2**24,
            batch_max_envelopes=batch_envelopes,
            batch_max_bytes=IngestConfig().batch_max_bytes,  # the daemon's default
        )
        archived_at = time.monotonic()  # Prometheus's start is not the writer's time
        writer.catch_up()
        written_at = time.monotonic()
        # The newest sample the writer sent is the pass's newest: wait until it is queryable.
        while newest_sample_ms(prometheus, span) < (span.end - 1.0) * 1000.0:
            if time.monotonic() - written_at > 30.0:
                raise RuntimeError("the pass's newest sample never became queryable")
            time.sleep(POLL_S)
        queryable_at = time.monotonic()
        status = writer.status.samples
        return Result(
            samples=status["ok"],
            rejected=status["rejected"] + status["backfill"],
            stored=stored_samples(prometheus, span),
            write_seconds=written_at - archived_at,
            queryable_seconds=queryable_at - archived_at,
        )
    finally:
        prometheus.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=3, help="runs (median), fresh each")
    parser.add_argument(
        "--pass-s", type=float, default=3600.0, help="seconds of packet time in the pass"
    )
    parser.add_argument(
        "--batch-envelopes", type=int, default=256, help="envelopes per writer batch"
    )
    options = parser.parse_args(argv)
    results = []
    for run in range(options.runs):
        with tempfile.TemporaryDirectory(prefix="bench-history-") as directory:
            result = run_once(
                Path(directory), pass_s=options.pass_s, batch_envelopes=options.batch_envelopes
            )
        results.append(result)
        print(
            f"run {run + 1}: {result.samples:,} samples ({result.stored:,} stored,"
            f" {result.rejected:,} not written), {result.samples_per_s:,.0f} samples/s,"
            f" queryable after {result.queryable_seconds:.1f} s",
            flush=True,
        )
    load = os.getloadavg()[0]
    rate = statistics.median(r.samples_per_s for r in results)
    queryable = statistics.median(r.queryable_seconds for r in results)
    print(
        f"pass {options.pass_s:.0f} s at {FLIGHT_RATE_PPS:.0f} packets/s, {os.cpu_count()} cores,"
        f" load {load:.1f}, median of {options.runs}"
    )
    print(f"{'samples':>12} {'samples/s':>12} {'s to queryable':>15} {'target':>8}")
    verdict = "met" if queryable <= QUERYABLE_TARGET_S else "missed"
    print(f"{results[0].samples:12,} {rate:12,.0f} {queryable:15.1f} {verdict:>8}")
    return 0 if all(r.samples == r.stored for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
