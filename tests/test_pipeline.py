"""The pipeline without a broker: validation, batching, sequence resume, takeovers."""

from __future__ import annotations

import logging
import random
from dataclasses import replace
from pathlib import Path

import msgpack
import pytest
from prometheus_client import CollectorRegistry

from groundstation.cli.replay import counter_samples, packet_records
from groundstation.config import ArchiveConfig
from groundstation.consumers.pipeline import Pipeline, archived_arrivals, batched, resume_sequences
from groundstation.consumers.telemetry import Telemetry
from groundstation.core.decoder import PacketDecoder
from groundstation.core.definitions import load_dictionaries
from groundstation.core.envelope import Arrival, Envelope, Invalid, check_payload
from groundstation.ingest.archive import ArchiveReader, ArchiveRecord, ArchiveWriter
from groundstation.ingest.mqtt import backoff_delay_s
from groundstation.log import InvalidEnvelopeLog, RateLimitedWarnings
from groundstation.service.metrics import PipelineStatus, TelemetryCollector
from tests.daemon_support import HK_PER_ENVELOPE, envelope, hk_packet
from tests.icd_packets import HELI_HK, SCLK_EPOCH, hand_pack

DICTIONARIES = load_dictionaries()
INGENUITY, PERSEVERANCE = "mars/tm/ingenuity", "mars/tm/perseverance"
OK = 'gs_packets_total{apid="100",result="ok",vehicle="ingenuity"}'
DUPLICATE = 'gs_packets_total{apid="100",result="duplicate",vehicle="ingenuity"}'


def arrival(
    payload: bytes, *, received_at: float = 1.7e9 + 3600, topic: str = "mars/tm/ingenuity"
) -> Arrival:
    return check_payload(
        topic,
        payload,
        received_at,
        max_payload_bytes=1 << 20,
        vehicles=DICTIONARIES,
    )


def new_pipeline() -> Pipeline:
    return Pipeline(DICTIONARIES, telemetry=Telemetry(DICTIONARIES))


def test_check_payload_marks_valid_and_invalid() -> None:
    good = arrival(envelope(7))
    assert isinstance(good.envelope, Envelope)
    assert good.envelope.seq == 7
    assert good.size == len(envelope(7))
    bad = arrival(b"\x00not msgpack")
    assert isinstance(bad.envelope, Invalid)
    assert bad.envelope.reason == "not_msgpack"


def test_counts_do_not_depend_on_batching() -> None:
    """Live batches depend on timing; replay's on a setting: the counts must not."""
    payloads = [(INGENUITY, envelope(seq)) for seq in range(40)]
    payloads += [(INGENUITY, envelope(5)), (INGENUITY, b"junk")]
    payloads += [
        (PERSEVERANCE, envelope(seq, vehicle="perseverance", packets=hk_packet(seq)))
        for seq in range(3)
    ]
    results = []
    for size in (1, 7, 1000):
        pipeline = new_pipeline()
        for batch in batched((arrival(p, topic=topic) for topic, p in payloads), size):
            pipeline.process(batch)
        results.append(counter_samples(pipeline.telemetry.snapshot()))
    assert results[0] == results[1] == results[2]
    assert results[0][OK] == 40 * HK_PER_ENVELOPE
    assert results[0][DUPLICATE] == HK_PER_ENVELOPE
    assert results[0]['gs_envelopes_total{result="invalid",vehicle="unknown"}'] == 1


def test_process_reports_each_vehicle_decode() -> None:
    pipeline = new_pipeline()
    decoded = pipeline.process([arrival(envelope(0)), arrival(envelope(1)), arrival(b"junk")])
    assert [d.vehicle for d in decoded] == ["ingenuity"]
    assert [e.seq for e in decoded[0].envelopes] == [0, 1]
    records = list(packet_records(decoded[0], DICTIONARIES["ingenuity"]))
    assert len(records) == 2 * HK_PER_ENVELOPE
    assert [r["envelope_seq"] for r in records] == [0, 0, 0, 1, 1, 1]
    assert {r["result"] for r in records} == {"ok"}
    assert records[0]["apid"] == 100
    assert records[0]["name"] == "HELI_HK"
    assert records[0]["vehicle"] == "ingenuity"
    assert records[0]["fields"]["battery_voltage"] == pytest.approx(7.5)


def test_resume_sequences_makes_redelivery_a_duplicate(tmp_path: Path) -> None:
    """Restart: the archive's tail rebuilds the decoders' sequence windows, nothing counted."""
    with ArchiveWriter(ArchiveConfig(directory=tmp_path)) as writer:
        writer.append(
            [
                ArchiveRecord("mars/tm/ingenuity", 1.7e9, envelope(seq), valid=True)
                for seq in range(5)
            ]
        )
    decoders = {vehicle: PacketDecoder(d) for vehicle, d in DICTIONARIES.items()}
    resumed = resume_sequences(
        decoders,
        ArchiveReader(tmp_path).records(),
        max_payload_bytes=1 << 20,
        batch_size=2,
    )
    assert resumed == 5
    pipeline = Pipeline(DICTIONARIES, telemetry=Telemetry(DICTIONARIES), decoders=decoders)
    pipeline.process([arrival(envelope(4)), arrival(envelope(5))])
    counts = counter_samples(pipeline.telemetry.snapshot())
    assert counts[DUPLICATE] == HK_PER_ENVELOPE
    assert counts[OK] == HK_PER_ENVELOPE


def test_archived_arrivals_revalidate_like_live(tmp_path: Path) -> None:
    """Each record is judged at its archived receive time: envelope(1) has ert 1.7e9 + 1, so
    received at 1.7e9 - 100 (more than 60 s before its ert) it is invalid now as it was then."""
    records = [
        ArchiveRecord(INGENUITY, 1.7e9 + 1, envelope(1), valid=True),
        ArchiveRecord(INGENUITY, 1.7e9 + 2, b"junk", valid=False),
        ArchiveRecord(INGENUITY, 1.7e9 - 100, envelope(1), valid=False),
    ]
    arrivals = list(archived_arrivals(records, max_payload_bytes=1 << 20, vehicles=DICTIONARIES))
    assert [isinstance(a.envelope, Envelope) for a in arrivals] == [True, False, False]
    assert [a.received_at for a in arrivals] == [1.7e9 + 1, 1.7e9 + 2, 1.7e9 - 100]
    late = arrivals[2].envelope
    assert isinstance(late, Invalid)
    assert (late.reason, late.vehicle) == ("ert_in_future", "ingenuity")
    tight = archived_arrivals(
        records[:1], max_payload_bytes=1 << 20, vehicles=DICTIONARIES, max_clock_skew_s=0.5
    )
    assert isinstance(next(tight).envelope, Envelope)  # ert at the receive time: valid


def test_rate_limited_warnings_summarise_the_rest(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    warnings = RateLimitedWarnings(
        logging.getLogger("test.ratelimit"), limit=2, interval_s=10.0, clock=lambda: now[0]
    )
    with caplog.at_level(logging.WARNING, logger="test.ratelimit"):
        for _ in range(5):
            warnings.warning("bad_seq", "bad %s", "seq", extra={"reason": "bad_seq"})
        warnings.warning("not_msgpack", "other key", extra={})
        now[0] = 11.0
        warnings.warning("bad_seq", "bad %s", "seq", extra={"reason": "bad_seq"})
    messages = [record.getMessage() for record in caplog.records]
    assert messages.count("bad seq") == 3
    assert "other key" in messages
    assert "3 more bad_seq warnings in the last 11 s were not logged" in messages


def test_backoff_is_capped_exponential_with_jitter() -> None:
    rng = random.Random(1)
    delays = [backoff_delay_s(n, minimum_s=0.5, maximum_s=30, rng=rng) for n in range(12)]
    caps = [min(30.0, 0.5 * 2**n) for n in range(12)]
    assert all(cap / 2 <= delay <= cap for delay, cap in zip(delays, caps, strict=True))
    assert max(delays) <= 30
    assert len(set(delays)) == len(delays)  # jittered


# --- impossible times and topics (ICD section 6) ------------------------------------------


def hk_at(seq: int, *, coarse: int, voltage_mv: int) -> bytes:
    """A CRC-valid HELI_HK, hand-packed, at the given SCLK coarse time and battery voltage."""
    body = HELI_HK.pack(3, 0, voltage_mv, 100, 80, -60, 2000, 2500, 2537, 2537)
    return hand_pack(100, seq, body, coarse=coarse)


def raw_envelope(seq: int, ert: float, packets: bytes) -> bytes:
    document = {"v": 1, "relay": "perseverance", "vehicle": "ingenuity", "seq": seq, "ert": ert,
                "packets": packets}  # fmt: skip
    payload: bytes = msgpack.packb(document, use_bin_type=True)
    return payload


def test_packet_from_the_future_does_not_freeze_the_battery_gauge() -> None:
    """1. HK count 0 at 7.5 V, dated before its envelope's ert.
    2. HK count 1, CRC-valid, SCLK 0xFFFFFFFF (the year 2136) at 15.0 V: clock_error.
    3. HK count 2 at 22.0 V, newer than the first: the gauge shows 22.0 V, not 15.0 V; the
       clock_error packet was not accounted, so its count is lost."""
    ert = SCLK_EPOCH + 753_000_100.0
    pipeline = new_pipeline()
    batches = [
        raw_envelope(0, ert, hk_at(0, coarse=753_000_000, voltage_mv=7500)),
        raw_envelope(1, ert + 1, hk_at(1, coarse=0xFFFFFFFF, voltage_mv=15000)),
        raw_envelope(2, ert + 2, hk_at(2, coarse=753_000_002, voltage_mv=22000)),
    ]
    for payload in batches:
        pipeline.process([arrival(payload, received_at=ert + 10)])
    counts = counter_samples(pipeline.telemetry.snapshot())
    assert counts['gs_packets_total{apid="100",result="clock_error",vehicle="ingenuity"}'] == 1
    assert counts[OK] == 2
    assert counts['gs_packets_lost_total{apid="100",vehicle="ingenuity"}'] == 1
    registry = CollectorRegistry()
    status = PipelineStatus(mqtt_connected=True, reconnects_total=0, queue_depth=0)
    snapshot = pipeline.telemetry.snapshot()
    registry.register(TelemetryCollector(snapshot=lambda: snapshot, pipeline=lambda: status))
    heli = {"vehicle": "ingenuity"}
    assert registry.get_sample_value("gs_battery_voltage_volts", heli) == pytest.approx(22.0)
    newest = registry.get_sample_value("gs_last_packet_time_seconds", {**heli, "apid": "100"})
    assert newest == SCLK_EPOCH + 753_000_002


def test_impossible_ert_keeps_the_latency_histogram_finite() -> None:
    """Envelopes with ert 1e308, 1e308 and -1e308 are invalid (counted, their packets not
    decoded); a normal envelope after them gives a finite latency sum of its own."""
    ert = SCLK_EPOCH + 753_000_600.0
    packet = hk_at(0, coarse=753_000_000, voltage_mv=7500)
    pipeline = new_pipeline()
    arrivals = [
        arrival(raw_envelope(seq, bad, packet), received_at=ert)
        for seq, bad in enumerate((1e308, 1e308, -1e308))
    ]
    assert [a.envelope.reason for a in arrivals if isinstance(a.envelope, Invalid)] == [
        "ert_in_future", "ert_in_future", "ert_before_epoch",
    ]  # fmt: skip
    arrivals.append(arrival(raw_envelope(3, ert, packet), received_at=ert))
    pipeline.process(arrivals)
    snapshot = pipeline.telemetry.snapshot()
    counts = counter_samples(snapshot)
    assert counts['gs_envelopes_total{result="invalid",vehicle="ingenuity"}'] == 3
    assert counts[OK] == 1
    (latency,) = (h for h in snapshot.histograms if h.family.name == "gs_packet_latency_seconds")
    heli = next(series for series in latency.series if series.labels == ("ingenuity",))
    assert heli.sum == pytest.approx(600.0)
    assert heli.cumulative_counts[-1] == 1


def test_topic_mismatch_is_invalid_counted_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    """Eight ingenuity envelopes on mars/tm/perseverance: each invalid (`topic_mismatch`),
    counted under ingenuity, none decoded; the warning is logged for the first five only."""
    log = InvalidEnvelopeLog(RateLimitedWarnings(logging.getLogger("test.topic"), limit=5))
    pipeline = new_pipeline()
    arrivals = [arrival(envelope(seq), topic=PERSEVERANCE) for seq in range(8)]
    with caplog.at_level(logging.WARNING, logger="test.topic"):
        for item in arrivals:
            log(item)
    pipeline.process(arrivals)
    assert {a.envelope.reason for a in arrivals if isinstance(a.envelope, Invalid)} == {
        "topic_mismatch"
    }
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 5
    assert all(PERSEVERANCE in m and "topic_mismatch" in m for m in messages)
    counts = counter_samples(pipeline.telemetry.snapshot())
    assert counts['gs_envelopes_total{result="invalid",vehicle="ingenuity"}'] == 8
    assert counts['gs_envelopes_total{result="ok",vehicle="ingenuity"}'] == 0
    assert counts[OK] == 0


# --- session takeovers (docs/reliability.md, "Session takeover") ---------------------------


def taken_over_stream() -> list[Arrival]:
    """Envelopes 0-9, then 20-29 with the first marked as received after a takeover."""
    before = [arrival(envelope(seq), received_at=1.7e9 + seq) for seq in range(10)]
    after = [arrival(envelope(seq), received_at=1.7e9 + seq) for seq in range(20, 30)]
    after[0] = replace(after[0], after_takeover=True)
    return before + after


def counter(pipeline: Pipeline, name: str) -> float:
    return sum(
        value
        for family in pipeline.telemetry.snapshot().families
        if family.family.name == name
        for _, value in family.samples
    )


@pytest.mark.parametrize("batch_size", [1, 7, 10, 20])
def test_a_gap_after_a_takeover_is_taken_over_not_lost_in_any_batching(batch_size: int) -> None:
    """The 10 envelopes (and their packets) the other client received count taken over,
    wherever the batches fall (replay and the history writer batch without regard to it)."""
    pipeline = new_pipeline()
    stream = taken_over_stream()
    for start in range(0, len(stream), batch_size):
        pipeline.process(stream[start : start + batch_size])
    assert counter(pipeline, "gs_envelopes_lost_total") == 0
    assert counter(pipeline, "gs_envelopes_taken_over_total") == 10
    assert counter(pipeline, "gs_packets_lost_total") == 0
    assert counter(pipeline, "gs_packets_taken_over_total") == 10 * HK_PER_ENVELOPE


def test_without_the_mark_the_same_gap_is_lost() -> None:
    pipeline = new_pipeline()
    pipeline.process([replace(a, after_takeover=False) for a in taken_over_stream()])
    assert counter(pipeline, "gs_envelopes_lost_total") == 10
    assert counter(pipeline, "gs_envelopes_taken_over_total") == 0
    assert counter(pipeline, "gs_packets_lost_total") == 10 * HK_PER_ENVELOPE
