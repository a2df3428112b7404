"""Prometheus exposition of the telemetry snapshot and the pipeline's status (ICD section 5).

A custom collector (STYLE habit 7): the pipeline swaps in an immutable `TelemetrySnapshot`
once per batch, and each scrape builds fresh metric families from it. prometheus_client
may call `collect()` from several server threads at once, so the collector keeps no
mutable state; a scrape costs O(series).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Final

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from groundstation.consumers.telemetry import (
    TELEMETRY_FAMILIES,
    FamilySamples,
    FamilySpec,
    HistogramSamples,
    TelemetrySnapshot,
)

__all__ = [
    "ARCHIVE_DAMAGED_BYTES",
    "ARCHIVE_DAMAGED_RECORDS",
    "ARCHIVE_FREE_BYTES",
    "ARCHIVE_SIZE_BYTES",
    "ARCHIVE_WRITE_ERRORS",
    "ARCHIVE_WRITE_FAILING",
    "INGEST_QUEUE_DEPTH",
    "MQTT_CONNECTED",
    "MQTT_RECONNECTS",
    "MQTT_SESSION_TAKEOVERS",
    "PIPELINE_FAMILIES",
    "PipelineStatus",
    "TelemetryCollector",
]

MQTT_CONNECTED: Final = FamilySpec(
    name="gs_mqtt_connected",
    kind="gauge",
    labels=(),
    help="1 while the daemon is connected to the MQTT broker, else 0.",
)
MQTT_RECONNECTS: Final = FamilySpec(
    name="gs_mqtt_reconnects_total",
    kind="counter",
    labels=(),
    help="Connections to the MQTT broker made after the first one.",
)
MQTT_SESSION_TAKEOVERS: Final = FamilySpec(
    name="gs_mqtt_session_takeovers_total",
    kind="counter",
    labels=(),
    help="MQTT sessions the broker ended because another client connected with our client id.",
)
INGEST_QUEUE_DEPTH: Final = FamilySpec(
    name="gs_ingest_queue_depth",
    kind="gauge",
    labels=(),
    help="Envelopes archived and not yet read by the decoding consumer.",
)
# Counted by the decoding consumer: in the archive's tail it reads at start
# (ingest.resume_scan_bytes) and in all it reads after; `groundstation replay` reads it all.
ARCHIVE_DAMAGED_RECORDS: Final = FamilySpec(
    name="gs_archive_damaged_records_total",
    kind="counter",
    labels=(),
    help="Damaged archive records the decoding consumer skipped (each unreadable stretch once).",
)
ARCHIVE_DAMAGED_BYTES: Final = FamilySpec(
    name="gs_archive_damaged_bytes_total",
    kind="counter",
    labels=(),
    help="Bytes of damaged archive records the decoding consumer skipped.",
)
# A failing archive write pauses ingest (docs/reliability.md, "Full disk").
ARCHIVE_WRITE_FAILING: Final = FamilySpec(
    name="gs_archive_write_failing",
    kind="gauge",
    labels=(),
    help="1 while archive writes fail (e.g. the file system is full) and ingest is paused.",
)
ARCHIVE_WRITE_ERRORS: Final = FamilySpec(
    name="gs_archive_write_errors_total",
    kind="counter",
    labels=(),
    help="Archive write or sync attempts that failed, retries included.",
)
ARCHIVE_FREE_BYTES: Final = FamilySpec(
    name="gs_archive_filesystem_free_bytes",
    kind="gauge",
    labels=(),
    help="Bytes of the archive directory's file system available to the daemon.",
)
ARCHIVE_SIZE_BYTES: Final = FamilySpec(
    name="gs_archive_filesystem_size_bytes",
    kind="gauge",
    labels=(),
    help="Size in bytes of the archive directory's file system.",
)
PIPELINE_FAMILIES: Final = (
    MQTT_CONNECTED,
    MQTT_RECONNECTS,
    MQTT_SESSION_TAKEOVERS,
    INGEST_QUEUE_DEPTH,
    ARCHIVE_DAMAGED_RECORDS,
    ARCHIVE_DAMAGED_BYTES,
    ARCHIVE_WRITE_FAILING,
    ARCHIVE_WRITE_ERRORS,
    ARCHIVE_FREE_BYTES,
    ARCHIVE_SIZE_BYTES,
)

# The `le` spelling Prometheus itself uses ("+Inf", "0.001"); prometheus_client leaves it
# untyped.
_bucket_label: Final[Callable[[float], str]] = floatToGoString


@dataclass(frozen=True)
class PipelineStatus:
    """What the daemon's MQTT and queue side reports at scrape time."""

    mqtt_connected: bool
    reconnects_total: int
    queue_depth: int
    archive_damaged_records: int = 0  # found by the decoding consumer
    archive_damaged_bytes: int = 0
    session_takeovers_total: int = 0
    archive_write_failing: bool = False
    archive_write_errors_total: int = 0
    # statvfs of the archive directory at scrape time; None when it cannot be read
    archive_free_bytes: int | None = None
    archive_size_bytes: int | None = None


class TelemetryCollector(Collector):
    """Formats the newest telemetry snapshot and the pipeline status at each scrape."""

    def __init__(
        self,
        *,
        snapshot: Callable[[], TelemetrySnapshot],
        pipeline: Callable[[], PipelineStatus],
    ) -> None:
        self._snapshot = snapshot
        self._pipeline = pipeline

    def collect(self) -> Iterator[Metric]:
        # Take each source once: the snapshot is immutable, so one scrape is consistent.
        snapshot = self._snapshot()
        status = self._pipeline()
        for values in snapshot.families:
            yield _value_family(values)
        for histogram in snapshot.histograms:
            yield _histogram_family(histogram)
        yield _value_family(FamilySamples(MQTT_CONNECTED, (((), float(status.mqtt_connected)),)))
        yield _value_family(FamilySamples(MQTT_RECONNECTS, (((), float(status.reconnects_total)),)))
        yield _value_family(
            FamilySamples(MQTT_SESSION_TAKEOVERS, (((), float(status.session_takeovers_total)),))
        )
        yield _value_family(FamilySamples(INGEST_QUEUE_DEPTH, (((), float(status.queue_depth)),)))
        for spec, value in (
            (ARCHIVE_DAMAGED_RECORDS, status.archive_damaged_records),
            (ARCHIVE_DAMAGED_BYTES, status.archive_damaged_bytes),
            (ARCHIVE_WRITE_FAILING, int(status.archive_write_failing)),
            (ARCHIVE_WRITE_ERRORS, status.archive_write_errors_total),
            (ARCHIVE_FREE_BYTES, status.archive_free_bytes),
            (ARCHIVE_SIZE_BYTES, status.archive_size_bytes),
        ):
            samples = () if value is None else (((), float(value)),)
            yield _value_family(FamilySamples(spec, samples))

    def describe(self) -> Iterator[Metric]:
        """The family names without samples, so registering never calls the sources."""
        for family in (*TELEMETRY_FAMILIES, *PIPELINE_FAMILIES):
            if family.kind == "histogram":
                yield _histogram_family(HistogramSamples(family, ()))
            else:
                yield _value_family(FamilySamples(family, ()))


def _value_family(values: FamilySamples) -> Metric:
    spec = values.family
    metric: GaugeMetricFamily | CounterMetricFamily
    if spec.kind == "counter":
        metric = CounterMetricFamily(spec.name, spec.help, labels=spec.labels)
    else:
        metric = GaugeMetricFamily(spec.name, spec.help, labels=spec.labels)
    for labels, value in values.samples:
        metric.add_metric(labels, value)
    return metric


def _histogram_family(values: HistogramSamples) -> Metric:
    spec = values.family
    metric = HistogramMetricFamily(spec.name, spec.help, labels=spec.labels)
    bounds = [_bucket_label(bound) for bound in spec.buckets]
    for series in values.series:
        metric.add_metric(
            series.labels,
            buckets=list(zip(bounds, series.cumulative_counts, strict=True)),
            sum_value=series.sum,
        )
    return metric
