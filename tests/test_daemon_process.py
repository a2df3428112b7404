"""`python -m groundstation run` as a process: SIGTERM drains and exits 0; kill -9 loses nothing."""

from __future__ import annotations

import asyncio
import collections
import signal
import threading
import time
from pathlib import Path

import msgpack
import pytest

from groundstation.ingest.archive import ArchiveReader
from tests.daemon_support import HK_PER_ENVELOPE, envelope, publish, replay_summary
from tests.reliability_support import DaemonProcess, running_daemon, total
from tests.services import Mosquitto

pytestmark = [pytest.mark.integration]

ENVELOPES = 3000
CLIENT_ID = "gs-process-test"
OK_PACKETS = 'gs_packets_total{apid="100",result="ok",vehicle="ingenuity"}'
DUPLICATE_PACKETS = 'gs_packets_total{apid="100",result="duplicate",vehicle="ingenuity"}'


def publish_in_background(port: int) -> threading.Thread:
    """A publisher streaming ENVELOPES envelopes at QoS 1 while the test acts on the daemon."""
    thread = threading.Thread(
        target=lambda: asyncio.run(publish(port, (envelope(seq) for seq in range(ENVELOPES)))),
        name="publisher",
    )
    thread.start()
    return thread


def ok_envelopes(daemon: DaemonProcess) -> float:
    return total(daemon.scrape(), "gs_envelopes_total", result="ok", vehicle="ingenuity")


def wait_until_ingesting(daemon: DaemonProcess, *, envelopes: int) -> float:
    """Poll /metrics until the daemon has decoded `envelopes` envelopes (mid-stream)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        seen = ok_envelopes(daemon)
        if seen >= envelopes:
            return seen
        time.sleep(0.01)
    pytest.fail(f"daemon did not reach {envelopes} envelopes:\n{daemon.log_tail()}")


def new_daemon(mosquitto: Mosquitto, workdir: Path) -> DaemonProcess:
    """A daemon process whose archive is `workdir / "archive"`; restarts reuse the session."""
    return DaemonProcess(workdir=workdir, broker_port=mosquitto.port, client_id=CLIENT_ID)


def archived_seqs(archive: Path) -> collections.Counter[int]:
    """How often each envelope seq is in the archive."""
    return collections.Counter(
        msgpack.unpackb(record.payload)["seq"]
        for record in ArchiveReader(archive).records()
        if record.valid
    )


def finish_with_second_daemon(mosquitto: Mosquitto, workdir: Path) -> float:
    """Restart with the same client id and archive; wait until all is archived and decoded.

    The second daemon decodes what it archives, and first what the first one archived
    after its last saved decode position (after a kill -9). Returns the duplicate packets
    the second daemon counted."""
    daemon = new_daemon(mosquitto, workdir)
    archived_before = sum(archived_seqs(daemon.archive_dir).values())
    with running_daemon(daemon):
        deadline = time.monotonic() + 60
        while True:
            assert time.monotonic() < deadline, daemon.log_tail()
            seqs = archived_seqs(daemon.archive_dir)
            samples = daemon.scrape()
            decoded = total(samples, "gs_envelopes_total", result="ok", vehicle="ingenuity")
            if (
                len(seqs) == ENVELOPES
                and total(samples, "gs_ingest_queue_depth") == 0
                and decoded >= sum(seqs.values()) - archived_before
            ):
                break
            time.sleep(0.05)
        daemon.stop()
        assert daemon.process is not None
        assert daemon.process.returncode == 0
    return total(samples, "gs_packets_total", apid="100", result="duplicate")


def test_sigterm_mid_stream_drains_and_exits_zero(mosquitto: Mosquitto, tmp_path: Path) -> None:
    """Graceful stop under load.

    1. start the daemon process; stream 3,000 envelopes at it;
    2. once it has decoded 500, send SIGTERM: it stops receiving, drains, closes the
       archive and exits 0 within the drain timeout;
    3. a restarted daemon (same client id) receives the rest from the broker's session;
    4. the archive holds every envelope exactly once (no loss, no duplicate from the stop),
       and `groundstation replay` counts all 9,000 packets ok.
    """
    daemon = new_daemon(mosquitto, tmp_path / "daemon")
    archive = daemon.archive_dir
    with running_daemon(daemon):
        publisher = publish_in_background(mosquitto.port)
        wait_until_ingesting(daemon, envelopes=500)
        stop_s = daemon.stop()
        assert daemon.process is not None
        assert daemon.process.returncode == 0
        assert stop_s < 10, daemon.log_tail()  # ingest.shutdown_timeout_s, the default
        assert "drained in" in daemon.log_path.read_text()
    first_run = archived_seqs(archive)
    assert 500 <= len(first_run) < ENVELOPES
    publisher.join()
    finish_with_second_daemon(mosquitto, daemon.workdir)
    seqs = archived_seqs(archive)
    assert set(seqs) == set(range(ENVELOPES))
    assert max(seqs.values()) == 1
    summary = replay_summary(archive)
    assert summary["counters"][OK_PACKETS] == ENVELOPES * HK_PER_ENVELOPE
    assert summary["counters"][DUPLICATE_PACKETS] == 0


def test_kill_9_mid_stream_loses_nothing(mosquitto: Mosquitto, tmp_path: Path) -> None:
    """Crash under load, then restart with the same client id.

    1. start the daemon process; stream 3,000 envelopes at it;
    2. once it has decoded 500, SIGKILL it: whatever it acknowledged was already archived,
       whatever it had not acknowledged the broker keeps for the session;
    3. restart (same client id, same archive): the broker redelivers the rest;
    4. every envelope sent is in the archive; those archived twice (archived, crashed
       before the ack) count as duplicate packets, live in the second run and in replay.
    """
    daemon = new_daemon(mosquitto, tmp_path / "daemon")
    archive = daemon.archive_dir
    with running_daemon(daemon):
        publisher = publish_in_background(mosquitto.port)
        wait_until_ingesting(daemon, envelopes=500)
        daemon.stop(kill=True)
        assert daemon.process is not None
        assert daemon.process.returncode == -signal.SIGKILL
    publisher.join()
    duplicates_counted = finish_with_second_daemon(mosquitto, daemon.workdir)
    seqs = archived_seqs(archive)
    assert set(seqs) == set(range(ENVELOPES))  # none lost
    redelivered = sum(count - 1 for count in seqs.values())
    assert duplicates_counted == redelivered * HK_PER_ENVELOPE
    summary = replay_summary(archive)
    assert summary["counters"][DUPLICATE_PACKETS] == redelivered * HK_PER_ENVELOPE
    assert summary["counters"][OK_PACKETS] == ENVELOPES * HK_PER_ENVELOPE
