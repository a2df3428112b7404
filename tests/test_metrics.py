"""The collector: exactly ICD section 5's families and labels, formatted from a snapshot."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric

from groundstation.consumers.telemetry import Telemetry, TelemetrySnapshot
from groundstation.core.decoder import PacketDecoder
from groundstation.core.definitions import VehicleDictionary, load_dictionaries
from groundstation.core.encoder import encode_packet, encode_packets
from groundstation.service.metrics import PipelineStatus, TelemetryCollector

T0 = 1_700_000_000.0

# ICD section 5, transcribed: family -> (type, label names). Not imported from our code.
ICD_FAMILIES: Mapping[str, tuple[str, frozenset[str]]] = {
    "gs_battery_voltage_volts": ("gauge", frozenset({"vehicle"})),
    "gs_battery_current_amperes": ("gauge", frozenset({"vehicle"})),
    "gs_battery_charge_ratio": ("gauge", frozenset({"vehicle"})),
    "gs_temperature_celsius": ("gauge", frozenset({"vehicle", "sensor"})),
    "gs_rotor_speed_rpm": ("gauge", frozenset({"vehicle", "rotor"})),
    "gs_vehicle_mode": ("gauge", frozenset({"vehicle", "mode"})),
    "gs_fault_active": ("gauge", frozenset({"vehicle", "fault"})),
    "gs_link_rssi_dbm": ("gauge", frozenset({"vehicle", "end"})),
    "gs_link_quality_ratio": ("gauge", frozenset({"vehicle"})),
    "gs_link_up": ("gauge", frozenset({"vehicle"})),
    "gs_relay_buffer_bytes": ("gauge", frozenset({"vehicle"})),
    "gs_vibration_rms_mps2": ("gauge", frozenset({"vehicle", "axis"})),
    "gs_position_meters": ("gauge", frozenset({"vehicle", "axis"})),
    "gs_velocity_meters_per_second": ("gauge", frozenset({"vehicle", "axis"})),
    "gs_ground_speed_meters_per_second": ("gauge", frozenset({"vehicle"})),
    "gs_attitude_radians": ("gauge", frozenset({"vehicle", "axis"})),
    "gs_heading_radians": ("gauge", frozenset({"vehicle"})),
    "gs_altitude_meters": ("gauge", frozenset({"vehicle"})),
    "gs_range_to_rover_meters": ("gauge", frozenset({"vehicle"})),
    "gs_flight_distance_meters": ("gauge", frozenset({"vehicle"})),
    "gs_odometry_meters": ("gauge", frozenset({"vehicle"})),
    "gs_envelopes_total": ("counter", frozenset({"vehicle", "result"})),
    "gs_envelopes_lost_total": ("counter", frozenset({"vehicle"})),
    "gs_packets_total": ("counter", frozenset({"vehicle", "apid", "result"})),
    "gs_packets_lost_total": ("counter", frozenset({"vehicle", "apid"})),
    "gs_events_total": ("counter", frozenset({"vehicle", "severity"})),
    "gs_last_packet_time_seconds": ("gauge", frozenset({"vehicle", "apid"})),
    "gs_last_receive_time_seconds": ("gauge", frozenset({"vehicle"})),
    "gs_packet_latency_seconds": ("histogram", frozenset({"vehicle"})),
    "gs_decode_seconds": ("histogram", frozenset()),
    "gs_mqtt_connected": ("gauge", frozenset()),
    "gs_mqtt_reconnects_total": ("counter", frozenset()),
    "gs_mqtt_session_takeovers_total": ("counter", frozenset()),
    "gs_envelopes_taken_over_total": ("counter", frozenset({"vehicle"})),
    "gs_packets_taken_over_total": ("counter", frozenset({"vehicle", "apid"})),
    "gs_archive_write_failing": ("gauge", frozenset()),
    "gs_archive_write_errors_total": ("counter", frozenset()),
    "gs_archive_filesystem_free_bytes": ("gauge", frozenset()),
    "gs_archive_filesystem_size_bytes": ("gauge", frozenset()),
    "gs_ingest_queue_depth": ("gauge", frozenset()),
    "gs_sequence_restarts_total": ("counter", frozenset({"vehicle", "apid"})),
    "gs_envelope_restarts_total": ("counter", frozenset({"vehicle"})),
}
# The label values ICD section 5 fixes: family -> label -> values.
ICD_LABEL_VALUES: Mapping[str, Mapping[str, frozenset[str]]] = {
    "gs_temperature_celsius": {"sensor": frozenset({"battery", "avionics"})},
    "gs_rotor_speed_rpm": {"rotor": frozenset({"upper", "lower"})},
    "gs_vehicle_mode": {
        "mode": frozenset({"IDLE", "PREFLIGHT", "SPINUP", "FLIGHT", "LANDED", "SAFE"})
    },
    "gs_fault_active": {
        "fault": frozenset(
            {"heater_on", "battery_low", "imu_fault", "lidar_fault", "motor_overtemp"}
        )
    },
    "gs_link_rssi_dbm": {"end": frozenset({"helicopter", "rover"})},
    "gs_vibration_rms_mps2": {"axis": frozenset({"x", "y", "z"})},
    "gs_position_meters": {"axis": frozenset({"x", "y", "z"})},
    "gs_velocity_meters_per_second": {"axis": frozenset({"x", "y", "z"})},
    "gs_attitude_radians": {"axis": frozenset({"roll", "pitch", "yaw"})},
    "gs_envelopes_total": {"result": frozenset({"ok", "invalid"})},
    "gs_packets_total": {
        "result": frozenset(
            {"ok", "crc_error", "clock_error", "malformed", "unknown_apid", "duplicate"}
        )
    },
    "gs_events_total": {"severity": frozenset({"DEBUG", "INFO", "WARNING", "ERROR", "FATAL"})},
}
# ICD section 5 pins these families to one vehicle.
ICD_VEHICLES: Mapping[str, frozenset[str]] = {
    "gs_heading_radians": frozenset({"perseverance"}),
    "gs_range_to_rover_meters": frozenset({"ingenuity"}),
    "gs_odometry_meters": frozenset({"perseverance"}),
}
EXTRA_FAMILIES = frozenset(
    {
        "gs_envelopes_duplicate_total",
        "gs_nav_state",
        "gs_nav_valid",
        "gs_drive_state",
        "gs_relay_packets_relayed_total",
        "gs_archive_damaged_records_total",
        "gs_archive_damaged_bytes_total",
    }
)
CONNECTED = PipelineStatus(
    mqtt_connected=True,
    reconnects_total=3,
    queue_depth=17,
    archive_damaged_records=2,
    archive_damaged_bytes=4321,
    archive_write_failing=True,
    archive_write_errors_total=5,
    archive_free_bytes=1_234_567,
    archive_size_bytes=8_388_608,
)


def exposition_name(metric: Metric) -> str:
    """The family name as exposed: prometheus_client strips `_total` from counters."""
    return f"{metric.name}_total" if metric.type == "counter" else metric.name


def fed_telemetry(dictionaries: Mapping[str, VehicleDictionary]) -> Telemetry:
    """A Telemetry that has seen one packet of every APID of both vehicles."""
    telemetry = Telemetry(dictionaries)
    for vehicle, dictionary in dictionaries.items():
        telemetry.record_envelope(
            relay="perseverance", vehicle=vehicle, seq=0, ert=T0 + 600.0, received_at=T0
        )
        buffers = []
        for packet in dictionary.packets.values():
            shape = (1, packet.samples) if packet.samples > 1 else (1,)
            values: dict[str, object] = {f.name: np.ones(shape) for f in packet.numeric_fields}
            if packet.text_field is None:
                buffers.append(encode_packets(packet, seq=[0], time=[T0], columns=values))
            else:
                values = dict.fromkeys(values, 1) | {packet.text_field.name: "event"}
                buffers.append(encode_packet(packet, seq=0, time=T0, values=values))
        result = PacketDecoder(dictionary).decode(buffers)
        telemetry.record_packets(
            vehicle=vehicle, result=result, ert=np.full(len(buffers), T0 + 600.0)
        )
    # Takeoff (mode 1 = PREFLIGHT above, now FLIGHT) so that the flight distance exists.
    hk = dictionaries["ingenuity"].by_name("HELI_HK")
    values = {f.name: 0 for f in hk.fields} | {"mode": "FLIGHT"}
    result = PacketDecoder(dictionaries["ingenuity"]).decode(
        [encode_packet(hk, seq=5, time=T0 + 1, values=values)]
    )
    telemetry.record_packets(vehicle="ingenuity", result=result, ert=np.array([T0 + 601.0]))
    telemetry.record_decode_seconds(0.002, envelopes=2)
    telemetry.record_invalid(vehicle="unknown")
    return telemetry


@pytest.fixture(scope="module")
def dictionaries() -> dict[str, VehicleDictionary]:
    return load_dictionaries()


@pytest.fixture(scope="module")
def snapshot(dictionaries: dict[str, VehicleDictionary]) -> TelemetrySnapshot:
    return fed_telemetry(dictionaries).snapshot()


def registry_of(
    snapshot: TelemetrySnapshot, status: PipelineStatus = CONNECTED
) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(TelemetryCollector(snapshot=lambda: snapshot, pipeline=lambda: status))
    return registry


def families(registry: CollectorRegistry) -> Iterator[Metric]:
    yield from registry.collect()


def test_every_icd_family_is_exported_with_exactly_its_labels(
    snapshot: TelemetrySnapshot,
) -> None:
    """Once every APID has been seen, each ICD family has samples whose label names are
    exactly the ICD's (plus `le` on histogram buckets) and the ICD's type."""
    exported = {exposition_name(metric): metric for metric in families(registry_of(snapshot))}
    for name, (kind, labels) in ICD_FAMILIES.items():
        assert name in exported, name
        metric = exported[name]
        assert metric.type == kind, name
        assert metric.samples, name
        for sample in metric.samples:
            names = set(sample.labels) - ({"le"} if sample.name.endswith("_bucket") else set())
            assert names == labels, (name, sample)


def test_label_values_are_the_icds(snapshot: TelemetrySnapshot) -> None:
    """Each label value set that ICD section 5 fixes is exported exactly (no more, no fewer),
    and the single-vehicle families carry only that vehicle."""
    exported = {exposition_name(metric): metric for metric in families(registry_of(snapshot))}
    for name, labels in ICD_LABEL_VALUES.items():
        for label, values in labels.items():
            seen = {sample.labels[label] for sample in exported[name].samples}
            assert seen == values, (name, label)
    for name, vehicles in ICD_VEHICLES.items():
        assert {sample.labels["vehicle"] for sample in exported[name].samples} == vehicles


def test_only_documented_extras_beyond_the_icd(snapshot: TelemetrySnapshot) -> None:
    """Everything exported is an ICD family or one of the extras in docs/metrics.md."""
    exported = {exposition_name(metric) for metric in families(registry_of(snapshot))}
    assert exported - set(ICD_FAMILIES) == EXTRA_FAMILIES


def test_pipeline_status_is_read_at_scrape_time(snapshot: TelemetrySnapshot) -> None:
    """Connected, 3 reconnects, 17 queued, 2 damaged archive records; then a disconnected
    status reads 0."""
    registry = registry_of(snapshot)
    assert registry.get_sample_value("gs_mqtt_connected") == 1.0
    assert registry.get_sample_value("gs_mqtt_reconnects_total") == 3.0
    assert registry.get_sample_value("gs_ingest_queue_depth") == 17.0
    assert registry.get_sample_value("gs_archive_damaged_records_total") == 2.0
    assert registry.get_sample_value("gs_archive_damaged_bytes_total") == 4321.0
    assert registry.get_sample_value("gs_archive_write_failing") == 1.0
    assert registry.get_sample_value("gs_archive_write_errors_total") == 5.0
    assert registry.get_sample_value("gs_archive_filesystem_free_bytes") == 1_234_567.0
    assert registry.get_sample_value("gs_archive_filesystem_size_bytes") == 8_388_608.0
    down = PipelineStatus(mqtt_connected=False, reconnects_total=4, queue_depth=0)
    assert registry_of(snapshot, down).get_sample_value("gs_mqtt_connected") == 0.0
    assert registry_of(snapshot, down).get_sample_value("gs_archive_write_failing") == 0.0
    # A file system that cannot be read (statvfs failed) gives no sample, not a 0.
    assert registry_of(snapshot, down).get_sample_value("gs_archive_filesystem_free_bytes") is None


def test_each_scrape_reads_the_snapshot_swapped_in_last(
    dictionaries: dict[str, VehicleDictionary],
) -> None:
    """1. A scrape shows the current snapshot (no envelopes yet).
    2. The pipeline records an envelope but has not swapped: the scrape is unchanged.
    3. The new snapshot is swapped in: the next scrape shows it."""
    telemetry = Telemetry(dictionaries)
    current = [telemetry.snapshot()]
    registry = CollectorRegistry()
    registry.register(TelemetryCollector(snapshot=lambda: current[0], pipeline=lambda: CONNECTED))
    labels = {"vehicle": "ingenuity", "result": "ok"}
    assert registry.get_sample_value("gs_envelopes_total", labels) == 0.0

    telemetry.record_envelope(
        relay="perseverance", vehicle="ingenuity", seq=0, ert=T0 + 600.0, received_at=T0
    )
    assert registry.get_sample_value("gs_envelopes_total", labels) == 0.0

    current[0] = telemetry.snapshot()
    assert registry.get_sample_value("gs_envelopes_total", labels) == 1.0


def test_registering_does_not_call_the_sources() -> None:
    """describe() names the families without samples, so registration (which checks
    for duplicate names) never reaches into a pipeline that is not running yet."""

    def not_yet() -> TelemetrySnapshot:
        raise AssertionError("collect() was called at registration")

    def no_pipeline() -> PipelineStatus:
        raise AssertionError("collect() was called at registration")

    collector = TelemetryCollector(snapshot=not_yet, pipeline=no_pipeline)
    registry = CollectorRegistry(auto_describe=True)
    registry.register(collector)
    described = {exposition_name(metric) for metric in collector.describe()}
    assert set(ICD_FAMILIES) <= described
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        registry.register(TelemetryCollector(snapshot=not_yet, pipeline=no_pipeline))


def test_concurrent_scrapes_see_the_same_exposition(snapshot: TelemetrySnapshot) -> None:
    """Eight threads scrape the same snapshot at once (as prometheus_client's server
    threads may): every exposition is identical, since the collector shares no state."""
    registry = registry_of(snapshot)
    expected = generate_latest(registry)
    results: list[bytes] = []
    start = threading.Barrier(8)

    def scrape() -> None:
        start.wait()
        for _ in range(20):
            results.append(generate_latest(registry))

    threads = [threading.Thread(target=scrape) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 160
    assert all(result == expected for result in results)


def test_histogram_exposition_has_cumulative_buckets_count_and_sum(
    snapshot: TelemetrySnapshot,
) -> None:
    """gs_decode_seconds: 2 observations of 1 ms, cumulative from the 1 ms bucket on."""
    registry = registry_of(snapshot)
    assert registry.get_sample_value("gs_decode_seconds_bucket", {"le": "0.0005"}) == 0.0
    assert registry.get_sample_value("gs_decode_seconds_bucket", {"le": "0.001"}) == 2.0
    assert registry.get_sample_value("gs_decode_seconds_bucket", {"le": "+Inf"}) == 2.0
    assert registry.get_sample_value("gs_decode_seconds_count") == 2.0
    assert registry.get_sample_value("gs_decode_seconds_sum") == pytest.approx(0.002)
    text = generate_latest(registry).decode()
    assert 'gs_packet_latency_seconds_bucket{le="1800.0",vehicle="ingenuity"} 5.0' in text
    assert "gs_envelopes_total_total" not in text
