"""Hostile input through the daemon (docs/reliability.md, item 7): counted, archived, survived.

The unit-level costs are in tests/test_hostile.py; here every corpus payload goes over
MQTT to the daemon subprocess, each followed by a valid envelope that must be decoded.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from groundstation.core.envelope import pack_envelope
from tests.fuzz.corpus import hostile_buffers, hostile_envelopes, valid_envelope
from tests.reliability_support import (
    MIB,
    DaemonProcess,
    count_archive,
    publish_all,
    record_figures,
    running_daemon,
    total,
    wait_for,
)
from tests.services import Mosquitto

MAX_PAYLOAD_BYTES = 1 << 20  # ICD section 6 limit, configured small to keep the test small
HOSTILE_CONFIG = f"[ingest]\nmax_payload_bytes = {MAX_PAYLOAD_BYTES}\n"


@pytest.mark.integration
@pytest.mark.asyncio
async def test_hostile_payloads_are_counted_and_the_next_message_is_processed(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """Each corpus payload, then a valid envelope; then each hostile packet buffer, likewise.

    1. Start the daemon (max_payload_bytes 1 MiB) and note its peak RSS.
    2. Publish hostile envelope 1, valid envelope 1, hostile envelope 2, valid 2, ...
    3. Publish valid envelopes whose `packets` are the hostile buffers, each followed by a
       valid envelope (one HELI_HK packet).
    4. Every hostile envelope is counted `invalid` and archived (marked invalid); every
       valid one is counted `ok`; the daemon is still up, its peak RSS bounded.
    """
    envelopes = hostile_envelopes(max_payload_bytes=MAX_PAYLOAD_BYTES)
    buffers = hostile_buffers()
    payloads: list[bytes] = []
    seq = 0
    for case in envelopes:
        payloads += [case.payload, valid_envelope(seq=seq)]
        seq += 1
    for buffer in buffers:
        payloads.append(
            pack_envelope(
                relay="perseverance", vehicle="ingenuity", seq=seq, ert=1.7e9, packets=buffer.buffer
            )
        )
        payloads.append(valid_envelope(seq=seq + 1))
        seq += 2
    daemon = DaemonProcess(
        workdir=tmp_path / "daemon", broker_port=mosquitto.port, config_toml=HOSTILE_CONFIG
    )
    with running_daemon(daemon):
        before = daemon.sample()
        started = time.monotonic()
        await publish_all(mosquitto.port, payloads, window=1)  # in order, one at a time
        samples = await wait_for(
            daemon,
            lambda samples: total(samples, "gs_envelopes_total") >= len(payloads),
            what="every payload to be counted",
            timeout_s=60.0,
        )
        elapsed_s = time.monotonic() - started
        after = daemon.sample()
        await asyncio.to_thread(daemon.stop)
    archive = count_archive(daemon.archive_dir)
    figures = {
        "hostile_envelopes": len(envelopes),
        "hostile_packet_buffers": len(buffers),
        "payload_bytes": sum(len(payload) for payload in payloads),
        "invalid_counted": total(samples, "gs_envelopes_total", result="invalid"),
        "ok_counted": total(samples, "gs_envelopes_total", result="ok"),
        "malformed_packets": total(samples, "gs_packets_total", result="malformed"),
        "archived_invalid": archive.invalid,
        "elapsed_s": round(elapsed_s, 3),
        "ms_per_payload": round(elapsed_s * 1000 / len(payloads), 3),
        "peak_rss_mib_before": round(before.peak_rss_bytes / MIB, 1),
        "peak_rss_mib_after": round(after.peak_rss_bytes / MIB, 1),
    }
    record_figures("hostile_daemon", "corpus", figures)
    assert figures["invalid_counted"] == len(envelopes)
    assert figures["ok_counted"] == len(payloads) - len(envelopes)
    assert figures["archived_invalid"] == len(envelopes)
    assert figures["malformed_packets"] > 0
    # Bounded: the largest hostile payload is 1 MiB; allow generous slack for buffers.
    assert after.peak_rss_bytes - before.peak_rss_bytes < 64 * MIB
