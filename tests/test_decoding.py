"""The decoding consumer: follows the archive from its durable position, in-process and as
the daemon's child process."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from groundstation.cli.replay import counter_samples
from groundstation.config import ArchiveConfig
from groundstation.consumers.decoding import (
    POSITION_FILE,
    DecodeConsumer,
    DecodeFollower,
    DecodeSettings,
    DecodingProcess,
    load_position,
    save_position,
)
from groundstation.consumers.telemetry import Telemetry
from groundstation.core.definitions import load_dictionaries
from groundstation.ingest.archive import (
    ArchiveReader,
    ArchiveRecord,
    ArchiveWriter,
    LogPosition,
    archive_end,
    framed_size,
)
from groundstation.service.daemon import running_daemon
from tests.daemon_support import (
    HK_PER_ENVELOPE,
    daemon_config,
    envelope,
    processed,
    publish,
    scrape,
)
from tests.services import Mosquitto

DICTIONARIES = load_dictionaries()
TOPIC = "mars/tm/ingenuity"
OK = 'gs_packets_total{apid="100",result="ok",vehicle="ingenuity"}'
DUPLICATE = 'gs_packets_total{apid="100",result="duplicate",vehicle="ingenuity"}'
ENVELOPES_OK = 'gs_envelopes_total{result="ok",vehicle="ingenuity"}'


def settings(directory: Path, *, batch_max_bytes: int = 1 << 20) -> DecodeSettings:
    return DecodeSettings(
        archive_dir=directory,
        resume_tail_bytes=1 << 20,
        max_payload_bytes=1 << 16,
        max_clock_skew_s=60.0,
        batch_max_envelopes=100,
        batch_max_bytes=batch_max_bytes,
    )


def archive(directory: Path, seqs: range) -> LogPosition:
    """One more daemon run's segment with these envelopes; where the archive ends."""
    with ArchiveWriter(ArchiveConfig(directory=directory, fsync="never")) as writer:
        writer.append([ArchiveRecord(TOPIC, 1.7e9 + s, envelope(s), valid=True) for s in seqs])
        end = writer.end
    assert end is not None
    return end


def read_to(consumer: DecodeConsumer, until: LogPosition) -> None:
    while consumer.advance(until).position < until:
        pass


def counts(consumer: DecodeConsumer) -> dict[str, float]:
    return counter_samples(consumer.pipeline.telemetry.snapshot())


def test_a_new_archive_starts_at_its_end_and_saves_the_position(tmp_path: Path) -> None:
    consumer = DecodeConsumer(settings(tmp_path), DICTIONARIES)
    assert consumer.resumed.backlog_records == 0
    assert load_position(tmp_path) == LogPosition("", 0)
    end = archive(tmp_path, range(5))
    read_to(consumer, end)
    assert counts(consumer)[ENVELOPES_OK] == 5
    consumer.save()
    assert load_position(tmp_path) == end


def test_an_archive_without_a_position_is_not_decoded_again(tmp_path: Path) -> None:
    """Records from before the consumer existed count nothing; their sequences are known."""
    archive(tmp_path, range(5))
    consumer = DecodeConsumer(settings(tmp_path), DICTIONARIES)
    assert consumer.resumed.envelopes == 5
    assert consumer.resumed.backlog_records == 0
    end = archive(tmp_path, range(4, 7))  # 4 redelivered, 5 and 6 new
    read_to(consumer, end)
    found = counts(consumer)
    assert found[DUPLICATE] == HK_PER_ENVELOPE
    assert found[OK] == 2 * HK_PER_ENVELOPE


def test_a_restart_decodes_what_was_archived_after_the_saved_position(tmp_path: Path) -> None:
    """The position says where the last run stopped decoding: what follows (archived but not
    yet decoded, as after a kill -9) is the backlog, decoded and counted once; a record
    redelivered after the restart is a duplicate of one before the position."""
    first = DecodeConsumer(settings(tmp_path), DICTIONARIES)
    decoded = archive(tmp_path, range(10))
    read_to(first, decoded)
    first.save()
    archive(tmp_path, range(10, 25))  # archived; that run was killed before decoding them
    second = DecodeConsumer(settings(tmp_path), DICTIONARIES)
    assert second.resumed.envelopes == 10  # the tail before the position
    assert second.resumed.backlog_records == 15
    assert second.resumed.end == archive_end(tmp_path)
    read_to(second, second.resumed.end)
    assert counts(second)[ENVELOPES_OK] == 15
    end = archive(tmp_path, range(9, 10))  # the broker redelivers an envelope of the first run
    read_to(second, end)
    found = counts(second)
    assert found[DUPLICATE] == HK_PER_ENVELOPE
    assert found[OK] == 15 * HK_PER_ENVELOPE


def test_each_advance_reads_a_bounded_chunk(tmp_path: Path) -> None:
    """A chunk is a batch's worth of bytes plus room for one largest record: here 128 KiB."""
    consumer = DecodeConsumer(settings(tmp_path, batch_max_bytes=1), DICTIONARIES)
    end = archive(tmp_path, range(3000))
    smallest = min(framed_size(record) for record in ArchiveReader(tmp_path).records())
    read: list[int] = []
    while (progress := consumer.advance(end)).records_read > sum(read):
        read.append(progress.records_read - sum(read))
    assert sum(read) == 3000
    assert len(read) >= 3
    assert max(read) * smallest <= (1 << 16) + 64 * 1024
    assert consumer.cursor.position == end


def test_an_unreadable_position_starts_at_the_end(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    archive(tmp_path, range(3))
    (tmp_path / POSITION_FILE).write_text("{not json")
    with caplog.at_level(logging.WARNING):
        consumer = DecodeConsumer(settings(tmp_path), DICTIONARIES)
    assert "decode position" in caplog.text
    assert "unreadable" in caplog.text
    assert consumer.resumed.backlog_records == 0
    assert load_position(tmp_path) == archive_end(tmp_path)


def test_a_position_past_a_removed_segment_goes_on_with_the_next(tmp_path: Path) -> None:
    archive(tmp_path, range(3))
    save_position(tmp_path, LogPosition("segment-0000000001.gsa", 8))
    archive(tmp_path, range(3, 6))
    (tmp_path / "segment-0000000001.gsa").unlink()
    consumer = DecodeConsumer(settings(tmp_path), DICTIONARIES)
    assert consumer.resumed.backlog_records == 3
    read_to(consumer, consumer.resumed.end)
    assert counts(consumer)[ENVELOPES_OK] == 3


@pytest.mark.asyncio
async def test_the_follower_reads_up_to_each_archived_end_in_the_child(tmp_path: Path) -> None:
    """The daemon's arrangement: the consumer in a spawned child, told each archived end;
    its snapshot comes back, the backlog counts what it has not read."""
    archive(tmp_path, range(4))
    save_position(tmp_path, LogPosition("", 0))  # all of it is backlog
    follower = DecodeFollower(
        DecodingProcess(settings(tmp_path)), initial=Telemetry(DICTIONARIES).snapshot()
    )
    try:
        resumed = await follower.start()
        assert resumed.backlog_records == 4
        assert follower.backlog == 4
        running = asyncio.create_task(follower.run())
        end = archive(tmp_path, range(4, 10))
        follower.archived(end, 6)
        async with follower.progress:
            await asyncio.wait_for(
                follower.progress.wait_for(lambda: follower.envelopes_decoded >= 6), 30
            )
        assert follower.backlog == 0
        assert counter_samples(follower.latest_snapshot)[ENVELOPES_OK] == 10
        running.cancel()
        await follower.save()
        assert load_position(tmp_path) == end
    finally:
        follower.close()


@pytest.mark.integration
@pytest.mark.asyncio
async def test_the_daemon_decodes_what_an_earlier_run_archived_but_had_not_decoded(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """An earlier run archived 30 envelopes and had decoded 10 when it died (its position
    after the tenth). The daemon started on that archive decodes the other 20 and counts
    them. Redelivered, envelope 15 is a duplicate, and so are envelope 5's packets (the
    tail before the position fed the decoders' windows). On stop the position is the end."""
    config = daemon_config(mosquitto, tmp_path)
    directory = config.archive.directory
    with ArchiveWriter(config.archive) as writer:
        writer.append([ArchiveRecord(TOPIC, 1.7e9 + s, envelope(s), valid=True) for s in range(10)])
        decoded = writer.end
        writer.append(
            [ArchiveRecord(TOPIC, 1.7e9 + s, envelope(s), valid=True) for s in range(10, 30)]
        )
    assert decoded is not None
    save_position(directory, decoded)
    async with running_daemon(config) as daemon:
        assert daemon.follower.resumed.backlog_records == 20
        assert daemon.subscriber is not None
        assert daemon.metrics_address is not None
        await daemon.subscriber.connected_event.wait()
        await publish(mosquitto.port, [envelope(15)])
        await processed(daemon, 1)
        after_15 = await scrape(daemon.metrics_address)
        await publish(mosquitto.port, [envelope(5)])
        await processed(daemon, 2)
        after_5 = await scrape(daemon.metrics_address)
    assert after_15[ENVELOPES_OK] == 21  # a redelivered envelope counts ok as well
    assert after_15['gs_envelopes_duplicate_total{vehicle="ingenuity"}'] == 1
    assert after_15[DUPLICATE] == HK_PER_ENVELOPE
    assert after_15[OK] == 20 * HK_PER_ENVELOPE
    assert after_15["gs_ingest_queue_depth{}"] == 0
    assert after_5[DUPLICATE] == 2 * HK_PER_ENVELOPE
    assert after_5[OK] == 20 * HK_PER_ENVELOPE
    assert load_position(directory) == archive_end(directory)
