"""The history writer's position, batching, retries and refusals, with a scripted receiver."""

from __future__ import annotations

import json
from pathlib import Path

import cramjam
import pytest

from groundstation.config import ArchiveConfig, HistoryConfig, load_config
from groundstation.consumers.history.writer import (
    POSITION_FILE,
    HistoryWriter,
    Position,
    Verdict,
    load_position,
    save_position,
)
from groundstation.core.definitions import load_dictionaries
from groundstation.errors import ConfigError
from groundstation.ingest.archive import ArchiveRecord, ArchiveWriter
from tests.test_history_remote_write import decode
from tests.test_history_samples import T0, envelope, hk, nav


def archive(directory: Path, envelopes: int, *, segments: int = 1) -> Path:
    """`envelopes` ingenuity envelopes of one HK and one NAV packet each, over segments."""
    per_segment = envelopes // segments
    for part in range(segments):
        with ArchiveWriter(ArchiveConfig(directory=directory, fsync="never")) as writer:
            writer.append(
                [
                    ArchiveRecord(
                        topic="mars/tm/ingenuity",
                        received_at=T0 + 3600 + k,
                        payload=envelope("ingenuity", k, hk(k, k) + nav(k, k, 0, (k, 0.0, 1.0))),
                        valid=True,
                    )
                    for k in range(part * per_segment, (part + 1) * per_segment)
                ]
            )
    return directory


class Receiver:
    """Answers POSTs from a script of verdicts (then 204), keeping every accepted sample."""

    def __init__(self, *answers: Verdict) -> None:
        self.answers = list(answers)
        self.posts = 0
        self.accepted: list[tuple[str, int, float]] = []

    def __call__(self, body: bytes) -> Verdict:
        self.posts += 1
        verdict = self.answers.pop(0) if self.answers else Verdict(status=204, body="")
        if verdict.ok:
            for labels, samples in decode(bytes(cramjam.snappy.decompress_raw(body))):
                key = str(labels)
                self.accepted.extend((key, t, v) for t, v in samples)
        return verdict


def writer(
    directory: Path,
    receiver: Receiver,
    sleeps: list[float],
    *,
    max_clock_skew_s: float = 60.0,
    **settings: object,
) -> HistoryWriter:
    config = HistoryConfig(url="http://127.0.0.1:1/api/v1/write", **settings)  # type: ignore[arg-type]

    def sleep(seconds: float) -> bool:
        sleeps.append(seconds)
        return False

    return HistoryWriter(
        config,
        archive_dir=directory,
        dictionaries=load_dictionaries(),
        max_payload_bytes=2**24,
        batch_max_envelopes=4,
        batch_max_bytes=1 << 23,
        max_clock_skew_s=max_clock_skew_s,
        send=receiver,
        sleep=sleep,
    )


def test_batches_hold_at_most_batch_max_samples(tmp_path: Path) -> None:
    receiver = Receiver()
    history = writer(archive(tmp_path, 8), receiver, [], batch_max_samples=50)
    assert history.catch_up()
    total = history.status.samples["ok"]
    assert total == len(receiver.accepted) > 50
    assert receiver.posts >= total / 50
    assert len(set(receiver.accepted)) == total  # no sample twice
    assert load_position(tmp_path) == Position("segment-0000000001.gsa", 8)
    assert history.status.lag_seconds() == 0.0


def test_connection_errors_and_5xx_are_retried_with_capped_jittered_backoff(tmp_path: Path) -> None:
    failures = [Verdict(status=None, body="refused")] * 5 + [Verdict(status=503, body="busy")] * 3
    receiver = Receiver(*failures)
    sleeps: list[float] = []
    history = writer(archive(tmp_path, 2), receiver, sleeps, backoff_min_s=1.0, backoff_max_s=4.0)
    assert history.catch_up()
    assert history.status.up
    assert len(sleeps) == 8
    caps = [1.0, 2.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0]
    for slept, cap in zip(sleeps, caps, strict=True):
        assert cap / 2 <= slept <= cap
    assert history.status.samples == {"ok": len(receiver.accepted), "rejected": 0, "backfill": 0}


def test_a_4xx_is_counted_rejected_and_not_retried(tmp_path: Path) -> None:
    receiver = Receiver(Verdict(status=400, body="invalid label"))
    sleeps: list[float] = []
    history = writer(archive(tmp_path, 2), receiver, sleeps)
    assert history.catch_up()
    assert receiver.posts == 1
    assert not sleeps
    assert history.status.samples["rejected"] > 0
    assert history.status.samples["ok"] == 0
    assert load_position(tmp_path) is not None  # not retried forever: it moves on


def test_a_stop_while_retrying_leaves_the_position_behind(tmp_path: Path) -> None:
    receiver = Receiver(*[Verdict(status=None, body="refused")] * 100)
    history = writer(archive(tmp_path, 8), receiver, [])
    history._sleep = lambda seconds: True  # stop was asked for
    assert history.catch_up()
    assert load_position(tmp_path) is None
    assert not history.status.up
    assert history.status.lag_seconds() > 0


def test_the_lag_is_the_whole_backlog_before_the_writer_has_read_it(tmp_path: Path) -> None:
    """Receive times T0+3600+k over 3 segments of 4 (writer batches of 4): with 5 records
    written (k = 0..4), a restarted writer whose receiver does not answer reports the
    archive's newest (k = 11) minus the position's (k = 4), not just its first batch; with
    no position, the newest minus the first; 0 before its first look and caught up."""
    directory = archive(tmp_path / "archive", 12, segments=3)
    down = Receiver(*[Verdict(status=None, body="refused")] * 100)
    history = writer(directory, down, [])
    assert history.status.lag_seconds() == 0.0  # before its first look
    history._sleep = lambda seconds: True  # stopped while retrying its first request
    assert history.catch_up()
    assert load_position(directory) is None
    assert history.status.lag_seconds() == 11.0
    save_position(directory, Position("segment-0000000002.gsa", 1))  # records k = 0..4
    restarted = writer(directory, Receiver(*[Verdict(status=503, body="busy")] * 100), [])
    restarted._sleep = lambda seconds: True
    assert restarted.catch_up()
    assert restarted.status.lag_seconds() == 11.0 - 4.0
    assert restarted.status.lag_seconds(newest_received=T0 + 3600 + 20) == 20.0 - 4.0
    caught_up = writer(directory, Receiver(), [])
    assert caught_up.catch_up()
    assert caught_up.status.lag_seconds() == 0.0


def test_a_restart_resumes_from_the_position_with_nothing_missing_or_repeated(
    tmp_path: Path,
) -> None:
    directory = archive(tmp_path / "archive", 12, segments=3)
    whole = Receiver()
    assert writer(directory, whole, []).catch_up()
    (directory / POSITION_FILE).unlink()

    first = Receiver()
    history = writer(directory, first, [])
    stop_after = {"left": 2}

    def send(body: bytes) -> Verdict:
        stop_after["left"] -= 1
        if stop_after["left"] < 0:
            history.stop.set()
            return Verdict(status=None, body="the daemon was killed")
        return first(body)

    history._send = send
    history.catch_up()
    position = load_position(directory)
    assert position is not None
    assert position == Position("segment-0000000002.gsa", 4)
    second = Receiver()
    assert writer(directory, second, []).catch_up()
    assert sorted(first.accepted + second.accepted) == sorted(whole.accepted)


def test_position_file_is_replaced_whole(tmp_path: Path) -> None:
    save_position(tmp_path, Position("segment-0000000002.gsa", 17))
    assert json.loads((tmp_path / POSITION_FILE).read_text()) == {
        "segment": "segment-0000000002.gsa",
        "records": 17,
    }
    assert not list(tmp_path.glob("*.tmp"))
    (tmp_path / POSITION_FILE).write_text("{not json")
    assert load_position(tmp_path) is None


def test_history_config_table(tmp_path: Path) -> None:
    path = tmp_path / "gs.toml"
    path.write_text(
        '[history]\nurl = "http://127.0.0.1:9090/api/v1/write"\nbatch_max_samples = 500\n'
    )
    config = load_config(path, env={})
    assert config.history.url == "http://127.0.0.1:9090/api/v1/write"
    assert config.history.batch_max_samples == 500
    assert load_config(None, env={}).history.url is None  # off by default
    path.write_text('[history]\nurl = "http://x/api/v1/write"\nbatch_size = 5\n')
    with pytest.raises(ConfigError, match=r"unknown configuration key history\.batch_size"):
        load_config(path, env={})
    path.write_text('[history]\nurl = "ftp://x/"\n')
    with pytest.raises(ConfigError, match="http or https"):
        load_config(path, env={})


def test_a_duplicate_timestamp_rejects_that_sample_only(tmp_path: Path) -> None:
    """The receiver refuses requests holding one sample (found by bisection): the rest go in."""
    total_receiver = Receiver()
    assert writer(archive(tmp_path / "a", 2), total_receiver, []).catch_up()
    total = len(total_receiver.accepted)
    bad = total_receiver.accepted[len(total_receiver.accepted) // 3]
    duplicate = Verdict(status=400, body="duplicate sample for timestamp")

    class Picky(Receiver):
        def __call__(self, body: bytes) -> Verdict:
            labelled = decode(bytes(cramjam.snappy.decompress_raw(body)))
            present = {(str(labels), t, v) for labels, samples in labelled for t, v in samples}
            if bad in present:
                self.posts += 1
                return duplicate
            return super().__call__(body)

    picky = Picky()
    history = writer(archive(tmp_path / "b", 2), picky, [])
    assert history.catch_up()
    assert history.status.samples["rejected"] == 1
    assert history.status.samples["ok"] == total - 1
    assert sorted(picky.accepted) == sorted(s for s in total_receiver.accepted if s != bad)


@pytest.mark.parametrize(("max_clock_skew_s", "written"), [(60.0, False), (300.0, True)])
def test_envelopes_are_judged_with_the_configured_clock_skew(
    tmp_path: Path, max_clock_skew_s: float, *, written: bool
) -> None:
    """A relay clock 100 s ahead of the receive time: invalid under a 60 s skew, valid under
    300 s, as the live path judges it with the same ingest.max_clock_skew_s."""
    with ArchiveWriter(ArchiveConfig(directory=tmp_path, fsync="never")) as archive_writer:
        archive_writer.append(
            [
                ArchiveRecord(
                    topic="mars/tm/ingenuity",
                    received_at=T0 + 3600 + k - 100.0,  # the envelope's ert is 100 s later
                    payload=envelope("ingenuity", k, hk(k, k)),
                    valid=True,
                )
                for k in range(4)
            ]
        )
    receiver = Receiver()
    history = writer(tmp_path, receiver, [], max_clock_skew_s=max_clock_skew_s)
    history.catch_up()
    assert bool(receiver.accepted) is written
    assert history.status.samples.get("ok", 0) == len(receiver.accepted)


def test_a_writer_with_nothing_to_write_is_up(tmp_path: Path) -> None:
    """gs_history_up is 0 only after a failed write: a quiet station raises no
    HistoryWriterDown."""
    receiver = Receiver()
    history = writer(tmp_path, receiver, [])
    assert history.status.up
    assert not history.catch_up()
    assert history.status.up
    assert receiver.posts == 0
