"""Network flaps (docs/reliability.md, item 5): the daemon reconnects, and its resources stay flat.

The daemon talks to Mosquitto through tests/proxy.py, a loopback TCP proxy that the test
cuts; the publisher talks to Mosquitto directly, so the stream goes on during the cuts.
"""

from __future__ import annotations

import asyncio
from functools import partial
from pathlib import Path

import pytest

from tests.proxy import flaky_proxy
from tests.reliability_support import (
    FAST_RECONNECT,
    FIRST_ERT,
    DaemonProcess,
    ProcessSample,
    Samples,
    build_envelopes,
    count_archive,
    publish_all,
    record_figures,
    total,
    wait_for,
    wait_for_last,
)
from tests.services import Mosquitto

SECONDS_BETWEEN_CUTS = 0.5
RATE_PER_S = 1_000.0
FD_SLACK = 3  # a socket being replaced, a rotated archive segment, a scrape in progress
THREAD_SLACK = 2  # a scrape thread or an executor thread may be alive at a sample
# (cuts, envelopes): the stream lasts about as long as the cuts.
SIZES = [
    pytest.param(8, 5_000, marks=pytest.mark.integration, id="ci"),
    pytest.param(100, 60_000, marks=[pytest.mark.integration, pytest.mark.slow], id="full"),
]


def reconnected(samples: Samples, *, times: int) -> bool:
    """Connected again after `times` reconnects."""
    return (
        total(samples, "gs_mqtt_reconnects_total") >= times
        and total(samples, "gs_mqtt_connected") == 1
    )


@pytest.mark.parametrize(("cuts", "envelopes"), SIZES)
@pytest.mark.asyncio
async def test_network_flaps_reconnect_with_flat_resources(
    tmp_path: Path, mosquitto: Mosquitto, cuts: int, envelopes: int
) -> None:
    """Cut the daemon's connection 8 (or 100) times while envelopes stream in: nothing lost.

    1. Start the daemon against the proxy (reconnect backoff 0.1 s .. 2 s); sample its open
       file descriptors and threads once it is connected and has taken its first message.
    2. Publish 5,000 (or 60,000) envelopes at 1,000/s straight to the broker.
    3. Every 0.5 s cut every proxied connection; wait for the daemon to reconnect; sample.
    4. After the last envelope is decoded: every cut made one reconnect, no seq is missing
       from the archive, and the fd and thread counts are where they were after step 1.
    """
    async with flaky_proxy(mosquitto.port) as proxy:
        daemon = DaemonProcess(
            workdir=tmp_path / "daemon",
            broker_port=proxy.port,
            config_toml=FAST_RECONNECT,
        )
        try:
            await asyncio.to_thread(daemon.start)
            publishing = asyncio.create_task(
                publish_all(mosquitto.port, build_envelopes(envelopes), rate_per_s=RATE_PER_S)
            )
            await wait_for(
                daemon,
                lambda samples: total(samples, "gs_envelopes_total", result="ok") > 0,
                what="the first envelope",
            )
            baseline = daemon.sample()
            samples_after_cuts: list[ProcessSample] = []
            for cut in range(1, cuts + 1):
                await asyncio.sleep(SECONDS_BETWEEN_CUTS)  # the interval between faults
                await proxy.cut()
                await wait_for(
                    daemon,
                    partial(reconnected, times=cut),
                    what=f"reconnect {cut}",
                    timeout_s=30.0,
                )
                samples_after_cuts.append(daemon.sample())
            await publishing
            samples = await wait_for_last(daemon, envelopes - 1)
            final = daemon.sample()
            await asyncio.to_thread(daemon.stop)
        finally:
            await asyncio.to_thread(daemon.stop, kill=True)
    archive = count_archive(daemon.archive_dir)
    figures = {
        "cuts": cuts,
        "gs_mqtt_reconnects_total": total(samples, "gs_mqtt_reconnects_total"),
        "proxy_connections": proxy.connections_total,
        "envelopes_lost": len(archive.missing(range(envelopes))),
        "duplicates_archived": archive.duplicates,
        "processes": final.processes,
        "open_fds_baseline": baseline.open_fds,
        "open_fds_max_after_cuts": max(s.open_fds for s in samples_after_cuts),
        "open_fds_final": final.open_fds,
        "threads_baseline": baseline.threads,
        "threads_max_after_cuts": max(s.threads for s in samples_after_cuts),
        "rss_mib_baseline": round(baseline.rss_bytes / 2**20, 1),
        "rss_mib_final": round(final.rss_bytes / 2**20, 1),
        "newest_decoded_seq": total(samples, "gs_last_packet_time_seconds", apid="100") - FIRST_ERT,
    }
    record_figures("network_flaps", f"{cuts}_cuts", figures)
    assert figures["gs_mqtt_reconnects_total"] >= cuts
    assert figures["envelopes_lost"] == 0
    assert figures["open_fds_final"] <= baseline.open_fds + FD_SLACK
    assert figures["open_fds_max_after_cuts"] <= baseline.open_fds + FD_SLACK
    assert figures["threads_max_after_cuts"] <= baseline.threads + THREAD_SLACK
