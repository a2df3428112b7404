"""The daemon process and its archive directory: one daemon per directory; damage counted."""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path

import pytest

from groundstation.config import ArchiveConfig
from groundstation.ingest.archive import (
    LOCK_NAME,
    MAGIC,
    ArchiveRecord,
    ArchiveWriter,
    encode_record,
    list_segments,
)
from tests.daemon_support import HK_PER_ENVELOPE, envelope, publish, replay_summary
from tests.reliability_support import REPO, DaemonProcess, running_daemon, total
from tests.services import Mosquitto

pytestmark = [pytest.mark.integration]

ENVELOPES = 900
DAMAGED = 5
RECORD_HEADER_BYTES = 16
OK_PACKETS = 'gs_packets_total{apid="100",result="ok",vehicle="ingenuity"}'


def test_second_daemon_on_one_archive_refuses_to_start(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """Two daemons, one archive directory (an operator mistake).

    1. daemon A starts on `archive/` and holds it;
    2. daemon B (another client id, another metrics port, the same directory) exits 2 with
       one line naming the directory and A's pid, and leaves no segment behind;
    3. A archives 10 envelopes; `groundstation replay` (read-only) reads them while A runs;
    4. A is killed with SIGKILL: the kernel releases the lock, so B now starts.
    """
    first = DaemonProcess(workdir=tmp_path / "daemon", broker_port=mosquitto.port, client_id="a")
    second = DaemonProcess(workdir=tmp_path / "daemon", broker_port=mosquitto.port, client_id="b")
    with running_daemon(first):
        segments = list_segments(first.archive_dir)
        started = time.monotonic()
        refused = subprocess.run(
            second.command(), capture_output=True, check=False, cwd=REPO, timeout=60
        )
        assert refused.returncode == 2, refused.stderr.decode()
        assert time.monotonic() - started < 30
        assert refused.stderr.decode().strip().splitlines() == [
            f"groundstation run: archive directory {first.archive_dir} is in use by another"
            f" groundstation daemon (pid {first.pid}); refusing to start"
        ]
        assert list_segments(first.archive_dir) == segments
        asyncio.run(publish(mosquitto.port, (envelope(seq) for seq in range(10))))
        first.wait_for(
            lambda samples: total(samples, "gs_envelopes_total", result="ok") == 10,
            timeout_s=30,
            what="10 envelopes decoded",
        )
        summary = replay_summary(first.archive_dir)
        assert summary["archive"]["records"] == 10
        assert summary["counters"][OK_PACKETS] == 10 * HK_PER_ENVELOPE
        first.stop(kill=True)
    assert (first.archive_dir / LOCK_NAME).exists()  # left behind, and harmless
    with running_daemon(second):
        assert total(second.scrape(), "gs_mqtt_connected") == 1
        second.stop()
        assert second.process is not None
        assert second.process.returncode == 0


def test_resume_scan_counts_damage_in_metrics_and_log(mosquitto: Mosquitto, tmp_path: Path) -> None:
    """A restart on a damaged archive.

    1. the archive writer stores 900 envelopes; one bit of record 5's body is flipped;
    2. the daemon process starts on that archive: its resume scan reads the other 899,
       logs one damaged record with its bytes, and exports both counts on /metrics;
    3. `groundstation replay` reports the same damage for the whole archive.
    """
    daemon = DaemonProcess(workdir=tmp_path / "daemon", broker_port=mosquitto.port)
    written = [
        ArchiveRecord("mars/tm/ingenuity", 1.7e9 + seq, envelope(seq), valid=True)
        for seq in range(ENVELOPES)
    ]
    with ArchiveWriter(ArchiveConfig(directory=daemon.archive_dir)) as writer:
        writer.append(written)
    (segment,) = list_segments(daemon.archive_dir)
    data = bytearray(segment.read_bytes())
    sizes = [len(encode_record(item)) for item in written]
    at = len(MAGIC) + sum(sizes[:DAMAGED]) + RECORD_HEADER_BYTES + 40
    data[at] ^= 0x04
    segment.write_bytes(bytes(data))
    with running_daemon(daemon):
        samples = daemon.scrape()
        assert total(samples, "gs_archive_damaged_records_total") == 1
        assert total(samples, "gs_archive_damaged_bytes_total") == sizes[DAMAGED]
        daemon.stop()
    log = daemon.log_path.read_text()
    assert (
        f"resume scan of {daemon.archive_dir} skipped 1 damaged archive records"
        f" ({sizes[DAMAGED]} bytes)" in log
    )
    assert f"sequence accounting resumed from {ENVELOPES - 1} archived envelopes" in log
    summary = replay_summary(daemon.archive_dir)
    assert summary["archive"]["damaged_records"] == 1
    assert summary["archive"]["damaged_bytes"] == sizes[DAMAGED]
    assert summary["counters"][OK_PACKETS] == (ENVELOPES - 1) * HK_PER_ENVELOPE
