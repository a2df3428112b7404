"""Reliability under faults (docs/reliability.md, items 1-4): no data loss, every loss counted.

Real processes only: Mosquitto (tests/services.py) and the daemon as a subprocess
(tests/reliability_support.py). Each test records its figures (docs/reliability.md); the
CI runs use reduced sizes (`integration`), the issue's full sizes are marked `slow`:

    python -m pytest -m slow tests/test_reliability.py -s
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.reliability_support import (
    FAST_RECONNECT,
    RECONNECT_MAX_S,
    DaemonProcess,
    build_envelopes,
    count_archive,
    publish_all,
    record_figures,
    replay_summary,
    running_daemon,
    total,
    wait_for,
    wait_for_last,
)
from tests.services import Mosquitto


@dataclass(frozen=True)
class Size:
    """How much to publish, and how fast: the CI size or the issue's full size."""

    envelopes: int
    rate_per_s: float | None

    @property
    def label(self) -> str:
        return f"{self.envelopes}"


CI_SIZE = Size(envelopes=6_000, rate_per_s=3_000)
FULL_SIZE = Size(envelopes=100_000, rate_per_s=5_000)
SIZES = [
    pytest.param(CI_SIZE, marks=pytest.mark.integration, id="ci"),
    pytest.param(FULL_SIZE, marks=[pytest.mark.integration, pytest.mark.slow], id="full"),
]


async def consumer_restart(
    tmp_path: Path, mosquitto: Mosquitto, *, size: Size, kill: bool
) -> dict[str, float | int | bool]:
    """Publish `size` envelopes; stop the daemon part-way (kill -9 or SIGTERM); restart it.

    Returns the figures; the callers assert on them.
    """
    daemon = DaemonProcess(workdir=tmp_path / "daemon", broker_port=mosquitto.port)
    payloads = build_envelopes(size.envelopes)
    with running_daemon(daemon):
        publishing = asyncio.create_task(
            publish_all(mosquitto.port, payloads, rate_per_s=size.rate_per_s)
        )
        part_way = size.envelopes * 0.4
        await wait_for(
            daemon,
            lambda samples: total(samples, "gs_envelopes_total", result="ok") >= part_way,
            what=f"{part_way:.0f} envelopes before stopping",
        )
        stop_s = await asyncio.to_thread(daemon.stop, kill=kill)
        before_restart = count_archive(daemon.archive_dir)
        restarted = time.monotonic()
        await asyncio.to_thread(daemon.start)
        await wait_for(
            daemon,
            lambda samples: total(samples, "gs_envelopes_total", result="ok") > 0,
            what="the first envelope after the restart",
        )
        resume_s = time.monotonic() - restarted
        published = await publishing
        samples = await wait_for_last(daemon, size.envelopes - 1)
        drain_s = time.monotonic() - restarted
        await asyncio.to_thread(daemon.stop)
    archive = count_archive(daemon.archive_dir)
    replayed = await asyncio.to_thread(replay_summary, daemon.archive_dir)
    return {
        "envelopes_published": size.envelopes,
        "publish_rate_per_s": round(published.rate_per_s),
        "archived_before_stop": len(before_restart.distinct_seqs),
        "stop_s": round(stop_s, 3),
        "drain_budget_exceeded": "shutdown drain exceeded" in daemon.log_path.read_text(),
        "resume_s": round(resume_s, 3),
        "drain_after_restart_s": round(drain_s, 3),
        "envelopes_lost": len(archive.missing(range(size.envelopes))),
        "archive_records": archive.records,
        "duplicates_archived": archive.duplicates,
        "duplicates_after_dedup": replayed.ok_packets - size.envelopes,
        "replay_lost_packets": replayed.lost_packets,
        "gs_envelopes_lost_total": total(samples, "gs_envelopes_lost_total"),
        "gs_packets_lost_total": total(samples, "gs_packets_lost_total"),
    }


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.asyncio
async def test_consumer_crash_loses_nothing(
    tmp_path: Path, mosquitto: Mosquitto, size: Size
) -> None:
    """Item 1: kill -9 mid-stream, restart with the same client id: nothing lost.

    1. Start the daemon; publish the envelopes (QoS 1) at a steady rate.
    2. When 40 % are counted, SIGKILL the daemon; the broker queues the rest for its
       persistent session (and redelivers what was not acknowledged).
    3. Restart it with the same client id and archive; measure the time to the first
       envelope; wait for the last envelope to be decoded, then stop it with SIGTERM.
    4. The archive holds every seq (duplicates allowed: archived but not acknowledged);
       a replay of the archive counts every packet `ok` exactly once.
    """
    figures = await consumer_restart(tmp_path, mosquitto, size=size, kill=True)
    record_figures("consumer_crash", size.label, figures)
    assert figures["envelopes_lost"] == 0
    assert figures["duplicates_after_dedup"] == 0
    assert figures["replay_lost_packets"] == 0
    assert figures["gs_envelopes_lost_total"] == 0
    assert figures["gs_packets_lost_total"] == 0


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.asyncio
async def test_graceful_stop_loses_nothing_and_duplicates_nothing(
    tmp_path: Path, mosquitto: Mosquitto, size: Size
) -> None:
    """Item 2: SIGTERM mid-stream: bounded shutdown, nothing lost, nothing archived twice.

    1. As item 1, but stop the daemon with SIGTERM at 40 %.
    2. It drains and acknowledges what it archived, then exits within its shutdown budget
       (ingest.shutdown_timeout_s, 10 s by default).
    3. After the restart and the drain, the archive holds every seq exactly once.
    """
    figures = await consumer_restart(tmp_path, mosquitto, size=size, kill=False)
    record_figures("graceful_stop", size.label, figures)
    assert figures["stop_s"] < 10.0 + 5.0
    assert figures["envelopes_lost"] == 0
    assert figures["duplicates_archived"] == 0
    assert figures["duplicates_after_dedup"] == 0
    assert figures["gs_envelopes_lost_total"] == 0


def backoff_delays_logged(daemon: DaemonProcess) -> list[float]:
    """The 'retrying in X s' delays the daemon logged (groundstation/ingest/mqtt.py)."""
    text = daemon.log_path.read_text(errors="replace")
    return [float(match) for match in re.findall(r"retrying in ([0-9.]+) s", text)]


async def stop_broker_with_backlog(
    daemon: DaemonProcess,
    mosquitto: Mosquitto,
    payloads: list[bytes],
    *,
    batch: int,
    kill: bool,
) -> None:
    """Items 3a/3b, steps 1-2: consume a batch, queue a second at the broker, stop it.

    The daemon is paused (SIGSTOP) while the second batch is published, so the broker holds
    it as a backlog when it stops (SIGTERM saves it, SIGKILL loses it); then it resumes.
    """
    await publish_all(mosquitto.port, payloads[:batch])
    await wait_for_last(daemon, batch - 1)
    daemon.pause()
    try:
        await publish_all(mosquitto.port, payloads[batch : 2 * batch])
        mosquitto.stop(kill=kill)
    finally:
        daemon.resume()


@pytest.mark.integration
@pytest.mark.asyncio
async def test_broker_restart_loses_nothing_and_backoff_is_capped(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """Item 3a: the broker stops cleanly with a backlog queued and comes back: nothing lost.

    1. The daemon (reconnect backoff 0.1 s .. 2 s) consumes a first batch.
    2. It is paused (SIGSTOP) while a second batch is published, so the broker holds a
       backlog for it; the broker is stopped with SIGTERM (Mosquitto saves the session and
       its queue to its persistence file); the daemon resumes and finds the broker gone.
    3. The broker stays down 5 s: the daemon retries with capped backoff.
    4. The broker restarts on the same port; the daemon reconnects by itself; a third
       batch is published. Every envelope of the three batches is archived.
    """
    daemon = DaemonProcess(
        workdir=tmp_path / "daemon", broker_port=mosquitto.port, config_toml=FAST_RECONNECT
    )
    batch = 2_000
    payloads = build_envelopes(3 * batch)
    with running_daemon(daemon):
        await stop_broker_with_backlog(daemon, mosquitto, payloads, batch=batch, kill=False)
        await wait_for(
            daemon,
            lambda samples: total(samples, "gs_mqtt_connected") == 0,
            what="the daemon to notice",
        )
        at_stop = total(daemon.scrape(), "gs_envelopes_total", result="ok")
        await asyncio.sleep(5.0)  # the outage itself, long enough for several retries
        mosquitto.start()
        back = time.monotonic()
        await wait_for(
            daemon,
            lambda samples: total(samples, "gs_mqtt_connected") == 1,
            what="the daemon to reconnect",
        )
        reconnect_s = time.monotonic() - back
        await publish_all(mosquitto.port, payloads[2 * batch :])
        samples = await wait_for_last(daemon, 3 * batch - 1)
        await asyncio.to_thread(daemon.stop)
    archive = count_archive(daemon.archive_dir)
    delays = backoff_delays_logged(daemon)
    figures = {
        "envelopes_published": 3 * batch,
        "queued_at_broker_stop": 2 * batch - at_stop,
        "envelopes_lost": len(archive.missing(range(3 * batch))),
        "duplicates_archived": archive.duplicates,
        "reconnect_after_broker_back_s": round(reconnect_s, 3),
        "retries_logged": len(delays),
        "max_backoff_logged_s": max(delays, default=0.0),
        "gs_mqtt_reconnects_total": total(samples, "gs_mqtt_reconnects_total"),
        "gs_envelopes_lost_total": total(samples, "gs_envelopes_lost_total"),
    }
    record_figures("broker_restart", "clean", figures)
    assert figures["queued_at_broker_stop"] > 0, "no backlog at the stop: the test shows nothing"
    assert figures["envelopes_lost"] == 0
    assert figures["gs_envelopes_lost_total"] == 0
    assert figures["gs_mqtt_reconnects_total"] >= 1
    assert len(delays) >= 2
    assert max(delays) <= RECONNECT_MAX_S
    assert reconnect_s <= RECONNECT_MAX_S + 3.0


@pytest.mark.integration
@pytest.mark.asyncio
async def test_broker_crash_loss_is_counted_exactly(tmp_path: Path, mosquitto: Mosquitto) -> None:
    """Item 3b: kill -9 of the broker with a queue outstanding: the loss is counted exactly.

    1. The daemon consumes a first batch; then it is paused (SIGSTOP) while a second batch
       is published: the broker queues it, in memory only (no autosave before the crash).
    2. SIGKILL the broker and resume the daemon: the broker's queue (and the session) is
       gone; that loss is the broker's, not the daemon's.
    3. Restart the broker; the daemon reconnects and subscribes again; publish a third
       batch whose seqs continue, so the gap is behind a newer seq.
    4. gs_envelopes_lost_total and gs_packets_lost_total equal exactly the seqs missing
       from the archive (one HELI_HK packet per envelope).
    """
    daemon = DaemonProcess(
        workdir=tmp_path / "daemon", broker_port=mosquitto.port, config_toml=FAST_RECONNECT
    )
    batch = 2_000
    payloads = build_envelopes(3 * batch)
    with running_daemon(daemon):
        await stop_broker_with_backlog(daemon, mosquitto, payloads, batch=batch, kill=True)
        mosquitto.start()
        await wait_for(
            daemon,
            lambda samples: (
                total(samples, "gs_mqtt_reconnects_total") >= 1
                and total(samples, "gs_mqtt_connected") == 1
            ),
            what="the daemon to reconnect to the restarted broker",
        )
        await publish_all(mosquitto.port, payloads[2 * batch :])
        samples = await wait_for_last(daemon, 3 * batch - 1)
        await asyncio.to_thread(daemon.stop)
    archive = count_archive(daemon.archive_dir)
    missing = archive.missing(range(3 * batch))
    figures = {
        "envelopes_published": 3 * batch,
        "lost_by_the_broker": len(missing),
        "gs_envelopes_lost_total": total(samples, "gs_envelopes_lost_total"),
        "gs_packets_lost_total": total(samples, "gs_packets_lost_total"),
        "duplicates_archived": archive.duplicates,
    }
    record_figures("broker_crash", "kill9", figures)
    assert missing, "the crash should have cost the queued envelopes (else the test shows nothing)"
    assert figures["gs_envelopes_lost_total"] == len(missing)
    assert figures["gs_packets_lost_total"] == len(missing)


@pytest.mark.integration
@pytest.mark.asyncio
async def test_backlog_within_the_deploy_queue_loses_nothing(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """Item 4a: an offline backlog with the deploy queue limits (unlimited): nothing lost.

    1. Connect the daemon once (persistent session), stop it.
    2. Publish 5,000 envelopes while it is away (5 x Mosquitto's default queue of 1,000).
    3. Start it: it drains the whole backlog; nothing missing, nothing counted lost.
    """
    daemon = DaemonProcess(workdir=tmp_path / "daemon", broker_port=mosquitto.port)
    backlog = 5_000
    with running_daemon(daemon):
        await asyncio.to_thread(daemon.stop)
    await publish_all(mosquitto.port, build_envelopes(backlog))
    started = time.monotonic()
    with running_daemon(daemon):
        samples = await wait_for_last(daemon, backlog - 1)
        drain_s = time.monotonic() - started
        await asyncio.to_thread(daemon.stop)
    archive = count_archive(daemon.archive_dir)
    figures = {
        "backlog": backlog,
        "envelopes_lost": len(archive.missing(range(backlog))),
        "drain_s": round(drain_s, 3),
        "drain_rate_per_s": round(backlog / drain_s),
        "gs_envelopes_lost_total": total(samples, "gs_envelopes_lost_total"),
    }
    record_figures("offline_backlog", "deploy_queue", figures)
    assert figures["envelopes_lost"] == 0
    assert figures["gs_envelopes_lost_total"] == 0


@pytest.mark.integration
@pytest.mark.asyncio
async def test_backlog_over_a_small_broker_queue_is_counted(tmp_path: Path) -> None:
    """Item 4b: a broker queue smaller than the backlog drops; every drop is counted.

    1. A Mosquitto with `max_queued_messages 1000` (its default): connect the daemon once,
       stop it, publish 3,000 envelopes: the broker keeps about 1,000 and drops the rest.
    2. Start the daemon and publish one more envelope, so the gap is behind a newer seq.
    3. gs_envelopes_lost_total and gs_packets_lost_total equal the seqs missing from the
       archive: the loss is not silent (deploy/prometheus alerts on both counters).
    """
    backlog = 3_000
    # A later line wins in mosquitto.conf: this undoes the fixture's unlimited queue.
    small_queue = Mosquitto(
        workdir=tmp_path / "mosquitto", extra_config="max_queued_messages 1000\n"
    )
    small_queue.start()
    try:
        daemon = DaemonProcess(workdir=tmp_path / "daemon", broker_port=small_queue.port)
        payloads = build_envelopes(backlog + 1)
        with running_daemon(daemon):
            await asyncio.to_thread(daemon.stop)
        await publish_all(small_queue.port, payloads[:backlog])
        with running_daemon(daemon):
            await publish_all(small_queue.port, payloads[backlog:])
            samples = await wait_for_last(daemon, backlog)
            await asyncio.to_thread(daemon.stop)
    finally:
        small_queue.stop()
    archive = count_archive(daemon.archive_dir)
    missing = archive.missing(range(backlog + 1))
    figures = {
        "backlog": backlog,
        "broker_queue": 1000,
        "dropped_by_the_broker": len(missing),
        "gs_envelopes_lost_total": total(samples, "gs_envelopes_lost_total"),
        "gs_packets_lost_total": total(samples, "gs_packets_lost_total"),
    }
    record_figures("offline_backlog", "small_queue", figures)
    assert len(missing) >= backlog - 1000 - 100  # Mosquitto keeps about its queue's worth
    assert figures["gs_envelopes_lost_total"] == len(missing)
    assert figures["gs_packets_lost_total"] == len(missing)
    assert_loss_alerts_exist()


def assert_loss_alerts_exist() -> None:
    """deploy/prometheus alerts on a loss ratio built from the loss counters (never silent)."""
    rules = Path(__file__).parent.parent / "deploy" / "prometheus" / "rules"
    text = "".join(path.read_text() for path in sorted(rules.glob("*.yml")))
    assert "gs_packets_lost_total" in text
    assert "gs_envelopes_lost_total" in text
    alert_expressions = re.findall(r"- alert: \w+\n\s+expr: (.*)", text)
    assert any("_loss:ratio" in expression for expression in alert_expressions)
