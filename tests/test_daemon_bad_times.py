"""Impossible times and a topic that names another vehicle, through the running daemon.

Real Mosquitto, the daemon with its decoding child; the envelopes are hand-packed (ICD
sections 2, 3 and 6) and published like any relay's.
"""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import msgpack
import pytest

from groundstation.service.daemon import running_daemon
from tests.daemon_support import counters, daemon_config, processed, publish, replay_summary
from tests.daemon_support import scrape as scrape_metrics
from tests.icd_packets import HELI_HK, hand_pack
from tests.services import Mosquitto

pytestmark = [pytest.mark.integration]

ERT = 1.7e9  # 2023-11: before any receive time of the test, after every packet below
HELI = {"vehicle": "ingenuity"}
PROCESSED_TIMEOUT_S = 60.0
OK_HK = 'gs_packets_total{apid="100",result="ok",vehicle="ingenuity"}'


def hk(seq: int, *, coarse: int, voltage_mv: int) -> bytes:
    """HELI_HK in FLIGHT at `voltage_mv`, hand-packed from the ICD table."""
    body = HELI_HK.pack(3, 0, voltage_mv, 100, 80, -60, 2000, 2500, 2537, 2537)
    return hand_pack(100, seq, body, coarse=coarse)


def heli_envelope(seq: int, ert: float, packets: bytes, *, vehicle: str = "ingenuity") -> bytes:
    document = {"v": 1, "relay": "perseverance", "vehicle": vehicle, "seq": seq, "ert": ert,
                "packets": packets}  # fmt: skip
    payload: bytes = msgpack.packb(document, use_bin_type=True)
    return payload


@pytest.mark.asyncio
async def test_impossible_times_and_topic_mismatch_are_refused_live(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """1. HK at 7.5 V; then a CRC-valid HK dated SCLK 0xFFFFFFFF (2136) at 15.0 V; then HK
       at 22.0 V, newer than the first: the battery gauge reads 22.0 V, the 2136 packet is
       `clock_error`.
    2. Envelopes with ert 1e308, 1e308 and -1e308: invalid (`ert_in_future`,
       `ert_before_epoch`); the latency histogram's sum stays finite.
    3. An ingenuity envelope on perseverance's topic: invalid, not decoded.
    4. Replay of the archive gives the same counters as /metrics.
    """
    good = [
        heli_envelope(0, ERT, hk(0, coarse=753_000_000, voltage_mv=7500)),
        heli_envelope(1, ERT + 1, hk(1, coarse=0xFFFFFFFF, voltage_mv=15000)),
        heli_envelope(2, ERT + 2, hk(2, coarse=753_000_002, voltage_mv=22000)),
    ]
    bad_ert = [
        heli_envelope(3 + k, ert, hk(3 + k, coarse=753_000_003, voltage_mv=9000))
        for k, ert in enumerate((1e308, 1e308, -1e308))
    ]
    mismatched = heli_envelope(6, ERT + 6, hk(6, coarse=753_000_006, voltage_mv=9000))
    config = daemon_config(mosquitto, tmp_path)
    async with running_daemon(config) as daemon:
        # Subscribed first: the session is new, so nothing published before it is queued.
        await daemon.subscriber.connected_event.wait()  # type: ignore[union-attr]
        await publish(mosquitto.port, good + bad_ert)
        await publish(mosquitto.port, [mismatched], topic="mars/tm/perseverance")
        async with asyncio.timeout(PROCESSED_TIMEOUT_S):
            await processed(daemon, len(good) + len(bad_ert) + 1)
        metrics = await scrape_metrics(daemon.metrics_address)

    assert metrics['gs_battery_voltage_volts{vehicle="ingenuity"}'] == pytest.approx(22.0)
    assert metrics['gs_packets_total{apid="100",result="clock_error",vehicle="ingenuity"}'] == 1
    assert metrics[OK_HK] == 2
    assert metrics['gs_envelopes_total{result="ok",vehicle="ingenuity"}'] == 3
    assert metrics['gs_envelopes_total{result="invalid",vehicle="ingenuity"}'] == 4
    latency_sum = metrics['gs_packet_latency_seconds_sum{vehicle="ingenuity"}']
    assert math.isfinite(latency_sum)
    assert latency_sum > 0
    assert metrics['gs_packet_latency_seconds_count{vehicle="ingenuity"}'] == 2

    summary = replay_summary(config.archive.directory)
    assert summary["counters"] == counters(metrics)
