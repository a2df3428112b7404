"""Scaling out (docs/deploy.md): two daemons, each subscribed to its own vehicle's topic
(ICD section 2: `mars/tm/{vehicle}`), each with its own client id, archive and metrics
port, both writing history into one Prometheus, give per vehicle what one daemon
subscribed to `mars/tm/+` gives for the same stream.

Real processes: Mosquitto, three `groundstation run` (the two split daemons and the
single-daemon reference), Prometheus with the remote-write receiver, the simulator flying
flight 3 store-and-forward.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import Counter
from pathlib import Path

import cramjam
import pytest
from groundstation.simulators.run import simulate

from groundstation.consumers.history.writer import Verdict
from tests.history_support import HOUR_S, assert_hk_and_nav_counts, writer_for
from tests.reliability_support import DaemonProcess, Samples, running_daemon, total
from tests.services import Mosquitto
from tests.test_daemon_flight import simulator_options
from tests.test_history_prometheus import prometheus_with_receiver
from tests.test_history_remote_write import decode

pytestmark = [pytest.mark.integration]

COUNTERS = frozenset(
    ("gs_envelopes_total", "gs_envelopes_lost_total", "gs_packets_total", "gs_packets_lost_total")
)
VEHICLES = ("ingenuity", "perseverance")


def per_vehicle(
    samples: Samples, vehicle: str
) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """The envelope and packet counters of one vehicle."""
    return {
        key: value
        for key, value in samples.items()
        if key[0] in COUNTERS and ("vehicle", vehicle) in key[1]
    }


def daemon(
    workdir: Path, broker: Mosquitto, client_id: str, topic: str, history: str
) -> DaemonProcess:
    config = f'[broker]\ntopic_filter = "{topic}"\n' + history
    return DaemonProcess(
        workdir=workdir, broker_port=broker.port, client_id=client_id, config_toml=config
    )


def test_one_daemon_per_vehicle_gives_what_one_daemon_gives(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    server = prometheus_with_receiver(tmp_path / "prometheus", window="6h")
    history = f'[history]\nurl = "{server.url}/api/v1/write"\npoll_interval_s = 0.2\n'
    split = {
        vehicle: daemon(
            tmp_path / vehicle, mosquitto, f"gs-{vehicle}", f"mars/tm/{vehicle}", history
        )
        for vehicle in VEHICLES
    }
    reference = daemon(tmp_path / "reference", mosquitto, "gs-reference", "mars/tm/+", "")
    start = time.time() - 2 * HOUR_S
    try:
        with (
            running_daemon(split["ingenuity"]),
            running_daemon(split["perseverance"]),
            running_daemon(reference),
        ):
            options = dataclasses.replace(
                simulator_options(mosquitto, store_and_forward=True), start_time=start
            )
            began = time.monotonic()
            report = asyncio.run(simulate(options)).document
            published = {v: report["vehicles"][v]["envelopes_published"] for v in VEHICLES}
            assert all(published.values())
            seen: dict[str, Samples] = {}
            for vehicle, process in split.items():

                def done(samples: Samples, vehicle: str = vehicle) -> bool:
                    return (
                        total(samples, "gs_envelopes_total", vehicle=vehicle) == published[vehicle]
                        and total(samples, "gs_history_samples_total", result="ok") > 0
                        and total(samples, "gs_history_lag_seconds") == 0.0
                    )

                seen[vehicle] = process.wait_for(
                    done,
                    timeout_s=60,
                    what=f"{vehicle}: every envelope decoded and its history written",
                )
            single = reference.wait_for(
                lambda s: total(s, "gs_envelopes_total") == sum(published.values()),
                timeout_s=60,
                what="the reference: every envelope decoded",
            )
            elapsed = time.monotonic() - began
            for process in (*split.values(), reference):
                process.stop()
        for vehicle in VEHICLES:
            mine = per_vehicle(seen[vehicle], vehicle)
            assert mine == per_vehicle(single, vehicle)
            assert total(seen[vehicle], "gs_packets_total", result="ok") > 0
            others = [v for v in VEHICLES if v != vehicle]
            # The other vehicle's counters are exported at 0 (ICD section 5): nothing counted.
            assert not any(any(per_vehicle(seen[vehicle], o).values()) for o in others)
            assert total(seen[vehicle], "gs_history_samples_total", result="backfill") == 0
            assert total(seen[vehicle], "gs_history_samples_total", result="rejected") == 0
        assert_hk_and_nav_counts(server, report, start=start)

        # The single daemon's history per series, from its archive: the requests the
        # writer would send, decoded (the test's own protobuf reader), not sent.
        reference_counts: Counter[str] = Counter()

        def count(body: bytes) -> Verdict:
            for labels, samples in decode(bytes(cramjam.snappy.decompress_raw(body))):
                reference_counts[str(sorted(labels))] += len(samples)
            return Verdict(status=204, body="")

        dry = writer_for(reference.archive_dir, server)
        dry._send = count
        assert dry.catch_up()
        answer = server.api(
            "query", query='{timeline="spacecraft"}[1h]', time=f"{start + 1800:.3f}"
        )
        split_counts = {
            str(sorted(item["metric"].items())): len(item["values"])
            for item in answer["data"]["result"]
        }
        written = sum(total(seen[v], "gs_history_samples_total", result="ok") for v in VEHICLES)
        assert sum(split_counts.values()) == written
        # Range to rover needs both vehicles' positions in one daemon: the helicopter's
        # daemon has none of the rover's, so that series is the one difference.
        ranges = [key for key in reference_counts if "gs_range_to_rover_meters" in key]
        assert len(ranges) == 1
        assert reference_counts.pop(ranges[0]) > 0
        assert split_counts == dict(reference_counts)
        print(f"split: {written:.0f} samples, single: {dry.status.samples['ok']}, {elapsed:.1f} s")
    finally:
        server.stop()
