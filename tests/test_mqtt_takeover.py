"""Two daemons with one client id (an operator mistake): each takes the session from the other.

Real Mosquitto, two real daemon processes with the same `--client-id` and their own
archives, the simulator flying flight 3 live. Each daemon recognises the takeover (MQTT 5
DISCONNECT 0x8E), logs it as an error naming the client id and counts it in
`gs_mqtt_session_takeovers_total`; between them the two archives hold every envelope. What
one daemon misses because the other held the session is counted taken over, not lost, live
and in a replay of its archive alike.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from pathlib import Path

import pytest
from groundstation.simulators.run import Simulation, SimulationOptions, simulate

from groundstation.config import parse_broker_url
from groundstation.core.envelope import Envelope, unpack_envelope
from groundstation.ingest.archive import ArchiveReader
from tests.daemon_support import replay_summary
from tests.reliability_support import DaemonProcess, Samples, record_figures, total
from tests.services import Mosquitto

CLIENT_ID = "gs-twin"
START_TIME = 1_700_000_000.0
# Quick retries, so that the two take the session back and forth during the flight.
TWIN_CONFIG = "[broker]\nreconnect_min_s = 0.2\nreconnect_max_s = 0.5\n"
DRAIN_TIMEOUT_S = 60.0


def archived_payloads(daemon: DaemonProcess) -> list[bytes]:
    return [record.payload for record in ArchiveReader(daemon.archive_dir).records()]


def seqs(payloads: list[bytes]) -> dict[tuple[str, str], set[int]]:
    """Envelope seq values per (relay, vehicle) stream (ICD section 6)."""
    streams: dict[tuple[str, str], set[int]] = {}
    for payload in payloads:
        envelope = unpack_envelope(
            payload, max_payload_bytes=1 << 24, vehicles={"ingenuity", "perseverance"}
        )
        assert isinstance(envelope, Envelope)
        streams.setdefault((envelope.relay, envelope.vehicle), set()).add(envelope.seq)
    return streams


def gaps(streams: dict[tuple[str, str], set[int]]) -> dict[tuple[str, str], set[int]]:
    """The seq values missing between each stream's first and last: what a daemon with this
    archive counts lost (no relay restarts in the flight)."""
    return {key: set(range(min(got), max(got) + 1)) - got for key, got in streams.items()}


def settled(daemon: DaemonProcess) -> tuple[Samples, list[bytes]]:
    """A scrape and the archive at one moment: every archived envelope counted."""
    while True:
        samples = daemon.scrape()
        payloads = archived_payloads(daemon)
        if total(samples, "gs_envelopes_total") == len(payloads):
            return samples, payloads
        time.sleep(0.1)


@pytest.mark.integration
@pytest.mark.asyncio
async def test_two_daemons_with_one_client_id_detect_the_takeover_and_lose_nothing(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """1. Daemons A and B start with the same client id, each with its own archive.
    2. The simulator flies flight 3 live at 40x while they take the session from each other.
    3. Both count takeovers and log them as errors naming the client id.
    4. The union of both archives holds every envelope the simulator published; each holds
       only part of it.
    5. Each daemon's seq gaps are all in the other daemon's archive, and it counts them
       taken over (gs_envelopes_taken_over_total), none lost; packets likewise; a replay
       of its archive counts the same.
    """
    options = SimulationOptions(
        profile="flight3",
        broker=parse_broker_url(mosquitto.url),
        speed=40.0,
        seed=23,
        start_time=START_TIME,
        publish_timeout_s=1.0,
    )
    expected = {
        d.payload
        for d in Simulation(replace(options, broker=None), start_time=START_TIME).deliveries()
        if d.payload is not None
    }
    twins = [
        DaemonProcess(
            workdir=tmp_path / name,
            broker_port=mosquitto.port,
            client_id=CLIENT_ID,
            config_toml=TWIN_CONFIG,
        )
        for name in ("a", "b")
    ]
    a, b = twins
    try:
        # Started together, so that every takeover, the first one too, comes within
        # STABLE_CONNECTION_S of a connection (Mosquitto 2.0.11 says none with 0x8E).
        await asyncio.gather(
            asyncio.to_thread(a.start), asyncio.to_thread(b.start, wait_connected=False)
        )
        started = time.monotonic()
        report = (await simulate(options)).document
        flown_s = time.monotonic() - started
        published = sum(v["envelopes_published"] for v in report["vehicles"].values())
        # Both running: wait until the two archives hold everything between them.
        await asyncio.to_thread(
            a.wait_for,
            lambda _: expected <= set(archived_payloads(a)) | set(archived_payloads(b)),
            timeout_s=DRAIN_TIMEOUT_S,
            what="the two archives to hold every envelope",
        )
        settle = [await asyncio.to_thread(settled, twin) for twin in twins]
        await asyncio.to_thread(b.stop)
        await asyncio.to_thread(a.stop)
    finally:
        for twin in twins:
            twin.stop(kill=True)
    samples = [sample for sample, _ in settle]
    archived = [payloads for _, payloads in settle]
    takeovers = [total(s, "gs_mqtt_session_takeovers_total") for s in samples]
    lost = [total(s, "gs_envelopes_lost_total") for s in samples]
    taken = [total(s, "gs_envelopes_taken_over_total") for s in samples]
    packets_lost = [total(s, "gs_packets_lost_total") for s in samples]
    packets_taken = [total(s, "gs_packets_taken_over_total") for s in samples]
    replayed = [replay_summary(twin.archive_dir)["counters"] for twin in twins]
    missing = [gaps(seqs(payloads)) for payloads in archived]
    record_figures(
        "takeover",
        "two_daemons",
        {
            "published": published,
            "flown_s": round(flown_s, 1),
            "takeovers_a": takeovers[0],
            "takeovers_b": takeovers[1],
            "archived_a": len(archived[0]),
            "archived_b": len(archived[1]),
            "archived_by_both": len(set(archived[0]) & set(archived[1])),
            "lost_a": lost[0],
            "lost_b": lost[1],
            "taken_over_a": taken[0],
            "taken_over_b": taken[1],
            "packets_lost_a": packets_lost[0],
            "packets_lost_b": packets_lost[1],
            "packets_taken_over_a": packets_taken[0],
            "packets_taken_over_b": packets_taken[1],
        },
    )
    assert len(expected) == published
    assert all(count >= 1 for count in takeovers), takeovers
    for twin in twins:
        errors = [
            line
            for line in twin.log_path.read_text().splitlines()
            if "ERROR" in line and "taken over" in line and CLIENT_ID in line
        ]
        assert errors, twin.log_tail()
    # Nothing lost: every envelope is in one archive or the other.
    assert expected <= set(archived[0]) | set(archived[1])
    # What one daemon misses the other received: counted taken over, not lost
    # (docs/reliability.md, Session takeover), exactly its archive's gaps.
    for own, other in ((0, 1), (1, 0)):
        other_seqs = seqs(archived[other])
        assert all(gap <= other_seqs.get(key, set()) for key, gap in missing[own].items())
        assert taken[own] == sum(len(gap) for gap in missing[own].values()) > 0
        assert lost[own] == 0
        assert packets_lost[own] == 0
        assert packets_taken[own] > 0
        # The archive marks the first record after each takeover: replay counts the same.
        for name in ("gs_envelopes_lost_total", "gs_envelopes_taken_over_total",
                     "gs_packets_lost_total", "gs_packets_taken_over_total"):  # fmt: skip
            assert sum(v for k, v in replayed[own].items() if k.startswith(name + "{")) == total(
                samples[own], name
            ), name
    # Each daemon received only part of the stream.
    assert all(0 < len(payloads) < published for payloads in archived), [len(p) for p in archived]
