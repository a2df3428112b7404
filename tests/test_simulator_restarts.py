"""Vehicle reboots and simulator reruns through the ground station's accounting (ICD 6).

The simulator's `reboot` fault restarts every APID's counter at 0 while the clock runs on;
a second simulator run restarts both its packet counters and its envelope seq. In both
cases replay of the archive (the daemon's pipeline, from the archive's records) must count
no duplicate and nothing lost, and recognise the restarts the simulator reports.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from groundstation.simulators.delivery import Delivery
from groundstation.simulators.run import Simulation, SimulationOptions

from groundstation.cli.replay import counter_samples, replay
from groundstation.config import ArchiveConfig
from groundstation.consumers.pipeline import Pipeline, batched
from groundstation.consumers.telemetry import Telemetry
from groundstation.core.definitions import load_dictionaries
from groundstation.core.envelope import check_payload
from groundstation.ingest.archive import ArchiveRecord, ArchiveWriter

DICTIONARIES = load_dictionaries()
T0 = 1_700_000_000.0
RECEIVE_DELAY_S = 0.5  # the ground station receives each envelope this long after its ert


def run(options: SimulationOptions, start_time: float) -> tuple[list[Delivery], dict[str, Any]]:
    """A run's deliveries (each recorded, as when sent) and its report."""
    simulation = Simulation(options, start_time=start_time, dictionaries=DICTIONARIES)
    deliveries = []
    for delivery in simulation.deliveries():
        simulation.record(delivery)
        deliveries.append(delivery)
    return deliveries, dict(simulation.report().document)


def archive(directory: Path, deliveries: list[Delivery]) -> None:
    """Archive the published deliveries as the daemon would, received just after their ert."""
    records = [
        ArchiveRecord(d.topic, d.ert + RECEIVE_DELAY_S, d.payload, valid=d.account.valid)
        for d in deliveries
        if d.payload is not None
    ]
    with ArchiveWriter(ArchiveConfig(directory=directory)) as writer:
        writer.append(records)


def counter(counts: dict[str, float], name: str, **labels: str) -> float:
    rendered = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    return counts[f"{name}{{{rendered}}}"]


def test_replayed_reboot_counts_equal_the_simulators(tmp_path: Path) -> None:
    """Flight 1 with one reboot of each vehicle mid-stream (seed 0), archived and replayed:
    1. every (APID, result) count, every loss and every counter restart equals the report;
    2. which means: no duplicate, nothing lost, one restart per APID, no envelope restart
       (the relay did not reboot)."""
    options = SimulationOptions(profile="flight1", seed=0, faults={"reboot": 0.01})
    deliveries, report = run(options, T0)
    archive(tmp_path, deliveries)
    counts = replay(tmp_path, max_payload_bytes=1 << 24, batch_size=16)["counters"]
    for vehicle, section in report["vehicles"].items():
        assert section["faults"]["reboot"] == 1, vehicle
        expected = section["expected"]
        for apid, results in expected["packets"].items():
            for result, n in results.items():
                got = counter(counts, "gs_packets_total", vehicle=vehicle, apid=apid, result=result)
                assert got == n, (vehicle, apid, result)
            assert results["duplicate"] == 0
        for apid, lost in expected["packets_lost"].items():
            assert counter(counts, "gs_packets_lost_total", vehicle=vehicle, apid=apid) == lost
            assert lost == 0
        for apid, restarts in expected["sequence_restarts"].items():
            got = counter(counts, "gs_sequence_restarts_total", vehicle=vehicle, apid=apid)
            assert got == restarts == 1, (vehicle, apid)
        assert counter(counts, "gs_envelope_restarts_total", vehicle=vehicle) == 0
        assert counter(counts, "gs_envelopes_lost_total", vehicle=vehicle) == 0
        ok = counter(counts, "gs_envelopes_total", vehicle=vehicle, result="ok")
        assert ok == expected["envelopes"]["ok"]


def test_second_simulator_run_into_the_same_accounting_state() -> None:
    """The demo run twice against one saved archive: the second simulator run starts its
    packet counters and its envelope seq at 0 again, later on the clock. Through one
    accounting state (the pipeline that resumed from the first run):
    1. nothing is `duplicate` and nothing lost;
    2. every APID counts one restart, every vehicle one envelope restart."""
    options = SimulationOptions(profile="flight1", seed=2)
    first, _ = run(options, T0)
    end = max(d.ert for d in first)
    second, _ = run(options, end + 3600.0)
    pipeline = Pipeline(DICTIONARIES, telemetry=Telemetry(DICTIONARIES))
    arrivals = (
        check_payload(
            d.topic,
            d.payload,
            d.ert + RECEIVE_DELAY_S,
            max_payload_bytes=1 << 24,
            vehicles=DICTIONARIES,
        )
        for d in [*first, *second]
        if d.payload is not None
    )
    for batch in batched(arrivals, 32):
        pipeline.process(batch)
    counts = counter_samples(pipeline.telemetry.snapshot())
    for vehicle, dictionary in DICTIONARIES.items():
        for apid in map(str, dictionary.packets):
            for result in ("duplicate", "crc_error", "clock_error", "malformed"):
                got = counter(counts, "gs_packets_total", vehicle=vehicle, apid=apid, result=result)
                assert got == 0, (vehicle, apid, result)
            assert counter(counts, "gs_packets_lost_total", vehicle=vehicle, apid=apid) == 0
            sent = counter(counts, "gs_packets_total", vehicle=vehicle, apid=apid, result="ok")
            restarts = counter(counts, "gs_sequence_restarts_total", vehicle=vehicle, apid=apid)
            assert restarts == (1 if sent else 0), (vehicle, apid)
        assert counter(counts, "gs_envelopes_duplicate_total", vehicle=vehicle) == 0
        assert counter(counts, "gs_envelopes_lost_total", vehicle=vehicle) == 0
        assert counter(counts, "gs_envelope_restarts_total", vehicle=vehicle) == 1
