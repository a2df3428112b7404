"""A backlog of the largest valid envelopes: memory is bounded in bytes, not only in messages.

A backlog of 16 MiB envelopes (the ICD's largest valid payload) waits at the broker while
the daemon is down; the daemon then starts and takes all of it at once. Every buffer inside
it is bounded in bytes (docs/daemon.md, "Bounds"), so its peak memory must not grow with
the backlog: the CI size holds 12 such envelopes, the full size 100.

    python -m pytest -m slow tests/test_reliability_memory.py -s   # 100 envelopes
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.reliability_support import (
    MIB,
    DaemonProcess,
    ProcessSample,
    build_envelopes,
    count_archive,
    publish_all,
    record_figures,
    running_daemon,
    total,
)
from tests.services import Mosquitto, running_mosquitto

# One HELI_HK packet and this many HELI_IMU packets (134 bytes each): just under 16 MiB.
IMU_PER_ENVELOPE = 125_000
MAX_PAYLOAD_BYTES = 16 * MIB  # the daemon's default ingest.max_payload_bytes
# What the shipped systemd unit allows (MemoryMax=2G), with room for the allocator's slack.
PEAK_RSS_LIMIT = 1024 * MIB
SAMPLE_INTERVAL_S = 0.2
DRAIN_TIMEOUT_S = 600.0
# The full backlog (1.6 GiB) is over the test broker's (and deploy/mosquitto's) 1 GiB queue
# limit, past which Mosquitto drops what arrives for an offline session: raise it here.
BROKER_QUEUE = "max_queued_bytes 4294967296\n"


@dataclass(frozen=True)
class Backlog:
    envelopes: int


SIZES = [
    pytest.param(Backlog(envelopes=12), marks=pytest.mark.integration, id="ci"),
    pytest.param(Backlog(envelopes=100), marks=[pytest.mark.integration, pytest.mark.slow],
                 id="full"),
]  # fmt: skip


@pytest.mark.parametrize("backlog", SIZES)
@pytest.mark.asyncio
async def test_a_backlog_of_16_mib_envelopes_keeps_memory_bounded(
    tmp_path: Path, backlog: Backlog
) -> None:
    """1. run the daemon once so the broker keeps its session, stop it;
    2. publish the backlog of ~16 MiB envelopes while it is down;
    3. start it: sample the process tree's memory until every envelope is archived and
       decoded; peak RSS (sum of VmHWM) stays under PEAK_RSS_LIMIT;
    4. nothing lost: every seq in the archive once, all counted ok.
    """
    payloads = build_envelopes(backlog.envelopes, imu_per_envelope=IMU_PER_ENVELOPE)
    assert all(len(p) <= MAX_PAYLOAD_BYTES for p in payloads)
    assert min(len(p) for p in payloads) > 15 * MIB
    with running_mosquitto(tmp_path / "mosquitto", extra_config=BROKER_QUEUE) as mosquitto:
        await _backlog_drains_within_bounds(mosquitto, tmp_path, backlog, payloads)


async def _backlog_drains_within_bounds(
    mosquitto: Mosquitto, tmp_path: Path, backlog: Backlog, payloads: list[bytes]
) -> None:
    daemon = DaemonProcess(workdir=tmp_path / "daemon", broker_port=mosquitto.port)
    with running_daemon(daemon):
        idle = daemon.sample()
        daemon.stop()
    published = await publish_all(mosquitto.port, payloads, window=10)
    assert published.count == backlog.envelopes
    samples: list[ProcessSample] = []
    with running_daemon(daemon):
        started = time.monotonic()
        while True:
            samples.append(daemon.sample())
            metrics = await asyncio.to_thread(daemon.scrape)
            if total(metrics, "gs_envelopes_total", result="ok") >= backlog.envelopes:
                break
            assert time.monotonic() - started < DRAIN_TIMEOUT_S, daemon.log_tail()
            await asyncio.sleep(SAMPLE_INTERVAL_S)
        drained_s = time.monotonic() - started
        samples.append(daemon.sample())
        daemon.stop()
    archive = count_archive(daemon.archive_dir)
    peak = max(sample.peak_rss_bytes for sample in samples)
    figures = {
        "envelopes": backlog.envelopes,
        "envelope_mib": round(len(payloads[0]) / MIB, 2),
        "backlog_mib": round(sum(map(len, payloads)) / MIB, 1),
        "rss_mib_idle": round(idle.rss_bytes / MIB, 1),
        "rss_mib_max": round(max(sample.rss_bytes for sample in samples) / MIB, 1),
        "peak_rss_mib": round(peak / MIB, 1),
        "drained_s": round(drained_s, 1),
    }
    record_figures("memory", f"backlog_16mib_{backlog.envelopes}", figures)
    print(f"FIGURES memory/backlog_16mib: {figures}")
    assert archive.missing(range(backlog.envelopes)) == []
    assert archive.invalid == 0
    assert total(metrics, "gs_envelopes_lost_total") == 0
    assert peak < PEAK_RSS_LIMIT, figures
