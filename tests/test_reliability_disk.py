"""A full archive file system is a pause, not a crash loop (docs/reliability.md, "Full disk").

The daemon's archive directory is a real tmpfs of 16 MiB, filled by a file to 2 MiB short;
a real Mosquitto holds a backlog of 600 envelopes (about 8 MiB) for the daemon's session.
The archive fills up mid-stream: the daemon must stop acknowledging and reading (the broker
keeps the rest), keep serving /metrics with the reason and /healthz 503 naming the path,
survive a restart while the disk is still full without leaving an empty file, and once
the filler is removed take in everything by itself: every envelope archived, none lost.

The broker keepalive is 2 s here, so the pause outlasts it many times over: the broker
link drops while the daemon waits (it reads no PINGRESP while paused) and the messages it
held unacknowledged are redelivered, archived twice and counted as duplicates, not lost.
"""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from groundstation.consumers.decoding import POSITION_FILE
from groundstation.ingest.archive import LOCK_NAME, ArchiveReader, list_segments
from tests.reliability_support import (
    FAST_RECONNECT,
    MIB,
    DaemonProcess,
    build_envelopes,
    count_archive,
    publish_all,
    record_figures,
    running_daemon,
    total,
    wait_for,
    wait_for_last,
)
from tests.services import LOOPBACK, fill_file_system, running_mosquitto, small_file_system

pytestmark = pytest.mark.integration

FILE_SYSTEM_BYTES = 16 * MIB
LEFT_FREE_BYTES = 2 * MIB
ENVELOPES = 600
IMU_PER_ENVELOPE = 100  # about 13.6 KiB an envelope, 8 MiB in all
SEGMENT_MAX_BYTES = MIB  # rotations happen while the disk is full too
PAUSE_S = 8.0  # held paused this long: four keepalives
CONFIG = f"""
[archive]
segment_max_bytes = {SEGMENT_MAX_BYTES}
[ingest]
shutdown_timeout_s = 3
{FAST_RECONNECT}keepalive_s = 2
"""


def healthz(port: int) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://{LOOPBACK}:{port}/healthz", timeout=5) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def segments_without_records(directory: Path) -> list[str]:
    reader = ArchiveReader(directory)
    return [
        path.name
        for path in list_segments(directory)
        if next(iter(reader.segment_records(path)), None) is None
    ]


@pytest.mark.asyncio
async def test_a_full_archive_disk_pauses_ingest_and_loses_nothing(tmp_path: Path) -> None:
    """1. start the daemon with 2 MiB free on its archive file system, publish 600
    envelopes (8 MiB); 2. it reports the write failing, /healthz 503 names the segment and
    the reason, the process lives on and archives nothing more for PAUSE_S; 3. SIGTERM while
    full: it exits 0 within its drain budget, and a restart leaves no file without records
    (nor any other); 4. remove
    the filler: it resumes by itself, every envelope is archived, none lost, no segment
    without records, /healthz 200 again."""
    payloads = build_envelopes(ENVELOPES, imu_per_envelope=IMU_PER_ENVELOPE)
    with running_mosquitto(tmp_path / "mosquitto") as broker:
        daemon = DaemonProcess(
            workdir=tmp_path / "daemon", broker_port=broker.port, config_toml=CONFIG
        )
        with small_file_system(daemon.archive_dir, size_bytes=FILE_SYSTEM_BYTES) as archive:
            filler = fill_file_system(archive, leave_bytes=LEFT_FREE_BYTES)
            with running_daemon(daemon):
                published = await publish_all(broker.port, payloads, window=100)
                assert published.count == ENVELOPES
                full = await wait_for(
                    daemon,
                    lambda s: total(s, "gs_archive_write_failing") == 1,
                    what="the archive write to fail",
                    timeout_s=60,
                )
                failed_at = time.monotonic()
                status, detail = healthz(daemon.metrics_port)
                assert status == 503, detail
                assert "No space left on device" in detail
                assert str(archive) in detail
                assert total(full, "gs_archive_filesystem_free_bytes") < LEFT_FREE_BYTES
                size = total(full, "gs_archive_filesystem_size_bytes")
                assert FILE_SYSTEM_BYTES * 0.9 < size <= FILE_SYSTEM_BYTES
                archived_when_full = count_archive(archive).records
                await asyncio.sleep(PAUSE_S)
                assert count_archive(archive).records == archived_when_full
                paused = daemon.scrape()
                assert total(paused, "gs_archive_write_failing") == 1
                assert total(paused, "gs_archive_write_errors_total") >= 3  # it retries
                segments_when_full = list_segments(archive)

                stop_s = daemon.stop()
                assert daemon.process is not None
                assert daemon.process.returncode == 0, daemon.log_tail()
                daemon.start(wait_connected=False)
                await wait_for(
                    daemon,
                    lambda s: total(s, "gs_archive_write_failing") == 1,
                    what="the restarted daemon's archive write to fail",
                    timeout_s=60,
                )
                await asyncio.sleep(PAUSE_S)
                # A segment is made only with a batch that fits: the restart may have added
                # one holding what fitted in the space left, but no file without records.
                assert list_segments(archive)[: len(segments_when_full)] == segments_when_full
                assert segments_without_records(archive) == []
                # The decoding consumer's position, if it found room for it: nothing else.
                assert {path.name for path in archive.iterdir()} - {POSITION_FILE} == {
                    "filler",
                    LOCK_NAME,
                    *(path.name for path in list_segments(archive)),
                }

                filler.unlink()
                freed_at = time.monotonic()
                done = await wait_for_last(daemon, ENVELOPES - 1)
                resumed_s = time.monotonic() - freed_at
                assert total(done, "gs_archive_write_failing") == 0
                assert healthz(daemon.metrics_port)[0] == 200
                assert total(done, "gs_envelopes_lost_total") == 0
                assert total(done, "gs_packets_lost_total") == 0
                errors = total(done, "gs_archive_write_errors_total")
                reconnects = total(done, "gs_mqtt_reconnects_total")
                daemon.stop()
            archived = count_archive(archive)
            reader = ArchiveReader(archive)
            list(reader.records())
            assert archived.missing(range(ENVELOPES)) == []
            assert archived.invalid == 0
            assert reader.stats.damaged_records == 0
            assert segments_without_records(archive) == []
            segments = len(list_segments(archive))
    log = daemon.log_path.read_text(errors="replace")
    assert "No space left on device" in log
    assert str(archive) in log
    record_figures(
        "full_disk",
        "tmpfs_16mib",
        {
            "envelopes": ENVELOPES,
            "archived_before_full": archived_when_full,
            "paused_s": round(freed_at - failed_at, 1),
            "sigterm_exit_s": round(stop_s, 1),
            "resumed_all_s": round(resumed_s, 1),
            "write_errors_after_restart": int(errors),
            "reconnects_after_restart": int(reconnects),
            "duplicates_archived": archived.duplicates,
            "missing": 0,
            "segments": segments,
        },
    )
