"""The history writer against a real Prometheus 2.42 with its remote-write receiver on.

Flight 3 is simulated store-and-forward into an archive (as the daemon archives it), the
writer runs over the archive, and Prometheus range queries over the flight's own time must
give, per series, the samples ICD section 7 defines.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from groundstation.simulators.run import simulate

from groundstation.config import HistoryConfig
from groundstation.consumers.history.process import RESTART_DELAY_S, WRITER_NICENESS
from groundstation.consumers.history.remote_write import Series, compress, encode_write_request
from groundstation.consumers.history.writer import POSITION_FILE, Verdict, load_position, post
from groundstation.ingest.archive import ArchiveReader, list_segments
from groundstation.service.daemon import running_daemon
from tests.daemon_support import (
    HK_PER_ENVELOPE,
    REPO,
    daemon_config,
    envelope,
    hk_packet,
    processed,
    publish,
    scrape,
)
from tests.history_support import (
    HOUR_S,
    assert_flight3_history,
    assert_hk_and_nav_counts,
    counts,
    fly,
    stored,
    writer_for,
)
from tests.icd_packets import time_of
from tests.reliability_support import DaemonProcess, process_tree, total
from tests.reliability_support import running_daemon as running_process
from tests.services import Mosquitto
from tests.test_daemon_flight import envelopes_published, simulator_options
from tests.test_deploy_static import history_panels
from tests.test_prometheus_live import PrometheusServer

pytestmark = [pytest.mark.integration]

HK_SAMPLES = 19  # per HELI_HK packet: 8 values, 6 modes, 5 faults
FLIGHT3_S = 145  # packet time from the first to the last HK packet, plus one


def prometheus_with_receiver(workdir: Path, *, window: str) -> PrometheusServer:
    server = PrometheusServer(workdir=workdir, extra_args=("--web.enable-remote-write-receiver",))
    server.start({"global": {}, "storage": {"tsdb": {"out_of_order_time_window": window}}})
    return server


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[PrometheusServer]:
    server = prometheus_with_receiver(tmp_path / "prometheus", window=shipped_window())
    yield server
    server.stop()


def test_flight3_history_at_spacecraft_time(tmp_path: Path, prometheus: PrometheusServer) -> None:
    """Flight 3 flown 3 h ago, archived, written: per-series counts, peaks; written twice,
    nothing changes."""
    flight = assert_flight3_history(tmp_path, prometheus)
    # Every query of the Flight dashboard's history row draws this flight.
    for panel in history_panels():
        for target in panel["targets"]:
            answer = prometheus.api(
                "query_range",
                query=target["expr"],
                start=f"{flight.start:.3f}",
                end=f"{flight.end:.3f}",
                step="1",
            )
            assert answer["status"] == "success", (panel["title"], answer)
            assert answer["data"]["result"], (panel["title"], target["expr"])


def test_prometheus_down_mid_stream_loses_nothing(
    tmp_path: Path, prometheus: PrometheusServer
) -> None:
    """Prometheus stopped after a few requests, started again 2 s later: every sample arrives."""
    flight = fly(tmp_path, start_time=time.time() - 3 * HOUR_S, arrive_after_s=HOUR_S)
    writer = writer_for(flight.archive, prometheus, batch_max_samples=2000)
    calls = {"n": 0, "failed": 0}
    restarted = threading.Event()

    def restart() -> None:
        prometheus.start(prometheus_config())
        restarted.set()

    def send(body: bytes) -> Verdict:
        calls["n"] += 1
        if calls["n"] == 3:
            prometheus.stop()
            threading.Timer(2.0, restart).start()
        verdict = post(f"{prometheus.url}/api/v1/write", body, timeout_s=5)
        calls["failed"] += not verdict.ok
        return verdict

    writer._send = send
    assert writer.catch_up()
    assert restarted.is_set()
    assert calls["failed"] > 0
    assert writer.status.up
    assert counts(prometheus, flight) == flight.expected


def shipped_window() -> str:
    """The out-of-order window of deploy/prometheus/prometheus.yml: the tests' receiver
    takes what the operators' does."""
    config = yaml.safe_load((REPO / "deploy" / "prometheus" / "prometheus.yml").read_text())
    window: str = config["storage"]["tsdb"]["out_of_order_time_window"]
    return window


def prometheus_config() -> dict[str, Any]:
    return {"global": {}, "storage": {"tsdb": {"out_of_order_time_window": shipped_window()}}}


def test_samples_older_than_the_window_are_left_for_backfill(tmp_path: Path) -> None:
    """Samples outside the receiver's window are counted backfill, the rest written.

    Flight 3 flown twice back to back, written in one request to a Prometheus whose newest
    sample lies 1 h 70 s after the first flight's end: a new series takes samples up to
    1 h older than the newest (Prometheus answers 400 "out of bounds" for the rest and rolls
    the request back), so the first flight and the second's first 70 s are backfill, the
    rest goes in. Written again: every sample but each series' newest is older than the 30
    min out-of-order window of its now existing series (500 "too old sample"): backfill,
    and nothing stored changes.
    """
    server = prometheus_with_receiver(tmp_path / "prometheus", window="30m")
    try:
        start = time.time() - 3 * HOUR_S
        flight = fly(tmp_path, start_time=start, arrive_after_s=HOUR_S, repeat=2)
        first_end_ms = int(flight.start * 1000) + FLIGHT3_S * 1000
        newest_ms = first_end_ms + (3600 + 70) * 1000
        anchor = Series({"__name__": "anchor"}, [(newest_ms, 1.0)])
        url = f"{server.url}/api/v1/write"
        assert post(url, compress(encode_write_request([anchor])), timeout_s=5).ok
        posts = {"n": 0}

        def send(body: bytes) -> Verdict:
            posts["n"] += 1
            return post(url, body, timeout_s=5)

        writer = writer_for(flight.archive, server, batch_max_samples=1_000_000, envelopes=10_000)
        writer._send = send
        assert writer.catch_up()
        status = writer.status.samples
        assert status["rejected"] == 0
        assert status["backfill"] > 0
        assert status["ok"] > 0
        assert posts["n"] < 60  # bisection: about log2(samples) requests, not one per sample
        samples = stored(server, flight)
        times_ms = [float(t) * 1000 for values in samples.values() for t, _ in values]
        assert len(times_ms) == status["ok"]
        assert min(times_ms) >= newest_ms - 3600 * 1000 - 1
        assert max(times_ms) > first_end_ms + 100 * 1000

        (flight.archive / POSITION_FILE).unlink()
        dry = writer_for(flight.archive, server, envelopes=10_000)
        dry._send = lambda body: Verdict(status=204, body="")
        assert dry.catch_up()
        assert status["ok"] + status["backfill"] == dry.status.samples["ok"]

        (flight.archive / POSITION_FILE).unlink()
        posts["n"] = 0
        again = writer_for(flight.archive, server, batch_max_samples=1_000_000, envelopes=10_000)
        again._send = send
        assert again.catch_up()
        written_again = again.status.samples
        # Only each series' newest sample is accepted again (the same sample at its head).
        assert written_again["ok"] <= len(samples)
        assert written_again["rejected"] == 0
        assert written_again["ok"] + written_again["backfill"] == dry.status.samples["ok"]
        assert posts["n"] < 60
        assert stored(server, flight) == samples
    finally:
        server.stop()


@pytest.mark.asyncio
async def test_daemon_writes_the_history_of_a_stored_flight(
    mosquitto: Mosquitto, tmp_path: Path, prometheus: PrometheusServer
) -> None:
    """The daemon with --history-url: flight 3 sent store-and-forward through Mosquitto
    (flown 2 h before it is sent); the writer, one more task of the daemon, puts the whole
    flight into Prometheus at its own time, and /metrics reports it caught up."""
    config = daemon_config(mosquitto, tmp_path)
    config = dataclasses.replace(
        config,
        history=HistoryConfig(url=f"{prometheus.url}/api/v1/write", poll_interval_s=0.2),
    )
    start = time.time() - 2 * HOUR_S
    async with running_daemon(config) as daemon:
        await daemon.subscriber.connected_event.wait()  # type: ignore[union-attr]
        options = dataclasses.replace(
            simulator_options(mosquitto, store_and_forward=True), start_time=start
        )
        report = (await simulate(options)).document
        await processed(daemon, envelopes_published(report))
        deadline = time.monotonic() + 30
        while True:
            metrics = await scrape(daemon.metrics_address)
            written = metrics.get('gs_history_samples_total{result="ok"}', 0.0)
            if written > 0 and metrics["gs_history_lag_seconds{}"] == 0.0:
                break
            assert time.monotonic() < deadline, metrics
            await asyncio.sleep(0.2)
        assert metrics["gs_history_up{}"] == 1.0
        assert metrics['gs_history_samples_total{result="backfill"}'] == 0.0
    assert_hk_and_nav_counts(prometheus, report, start=start)


def test_replay_with_history_url_writes_the_archive(
    tmp_path: Path, prometheus: PrometheusServer
) -> None:
    """`groundstation replay ARCHIVE --history-url URL`: the archive's history, once."""
    flight = fly(tmp_path, start_time=time.time() - 3 * HOUR_S, arrive_after_s=HOUR_S)
    command = [sys.executable, "-m", "groundstation", "replay", str(flight.archive)]
    command += ["--format", "summary", "--history-url", f"{prometheus.url}/api/v1/write"]
    completed = subprocess.run(command, capture_output=True, check=False, cwd=REPO, timeout=120)
    assert completed.returncode == 0, completed.stderr.decode()
    summary = json.loads(completed.stdout)
    assert summary["history"]["ok"] > 0
    assert summary["history"]["backfill"] == summary["history"]["rejected"] == 0
    assert counts(prometheus, flight) == flight.expected


@pytest.mark.asyncio
async def test_a_store_down_only_makes_the_lag_grow_then_it_catches_up(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """The daemon streams flight 3 while its Prometheus is not running: every envelope is
    still decoded live, gs_history_up is 0 and the lag is the flight's arrival span; once
    Prometheus starts, the writer catches up from its position with every sample."""
    server = PrometheusServer(
        workdir=tmp_path / "prometheus", extra_args=("--web.enable-remote-write-receiver",)
    )
    config = daemon_config(mosquitto, tmp_path)
    config = dataclasses.replace(
        config,
        history=HistoryConfig(
            url=f"{server.url}/api/v1/write",
            poll_interval_s=0.2,
            backoff_min_s=0.1,
            backoff_max_s=0.5,
        ),
    )
    start = time.time() - 2 * HOUR_S
    try:
        async with running_daemon(config) as daemon:
            await daemon.subscriber.connected_event.wait()  # type: ignore[union-attr]
            options = dataclasses.replace(
                simulator_options(mosquitto, store_and_forward=True), start_time=start
            )
            report = (await simulate(options)).document
            await processed(daemon, envelopes_published(report))  # ingest did not wait
            # The writer (a process of its own, starting meanwhile) finds the store down.
            deadline = time.monotonic() + 30
            metrics = await scrape(daemon.metrics_address)
            while metrics["gs_history_up{}"] != 0.0:
                assert time.monotonic() < deadline, metrics
                await asyncio.sleep(0.1)
                metrics = await scrape(daemon.metrics_address)
            assert metrics["gs_history_lag_seconds{}"] > 0.0
            assert metrics['gs_history_samples_total{result="ok"}'] == 0.0
            await asyncio.to_thread(server.start, prometheus_config())
            deadline = time.monotonic() + 30
            while metrics["gs_history_lag_seconds{}"] > 0.0 or not metrics["gs_history_up{}"]:
                assert time.monotonic() < deadline, metrics
                await asyncio.sleep(0.2)
                metrics = await scrape(daemon.metrics_address)
        assert_hk_and_nav_counts(server, report, start=start)
    finally:
        server.stop()


def history_daemon(mosquitto: Mosquitto, tmp_path: Path, server: PrometheusServer) -> DaemonProcess:
    """`groundstation run` with [history] into `server`: small requests, quick polls."""
    history = (
        f'[history]\nurl = "{server.url}/api/v1/write"\nbatch_max_samples = 1000\n'
        "poll_interval_s = 0.2\n"
    )
    return DaemonProcess(
        workdir=tmp_path / "daemon", broker_port=mosquitto.port, config_toml=history
    )


def publish_until_part_written(
    daemon: DaemonProcess, mosquitto: Mosquitto, envelopes: int
) -> float:
    """Publish `envelopes` HK envelopes; return once 20,000 of their samples are written
    and the writer has saved a position (part way), with how many samples are written.

    A sample is counted when its request succeeds, the position only after the whole
    archive batch is written: waiting for the count alone could kill the daemon before
    the first position exists."""
    asyncio.run(publish(mosquitto.port, (envelope(seq) for seq in range(envelopes))))
    deadline = time.monotonic() + 60
    while True:
        written = total(daemon.scrape(), "gs_history_samples_total", result="ok")
        if written >= 20_000 and load_position(daemon.archive_dir) is not None:
            return written
        assert time.monotonic() < deadline, daemon.log_tail()
        time.sleep(0.02)


def stored_voltages(server: PrometheusServer, envelopes: int) -> int:
    """Battery voltage samples of the first `envelopes` HK envelopes that Prometheus holds."""
    # ICD section 3: the SCLK coarse count is bytes 6-9 of the first packet.
    first = time_of(int.from_bytes(hk_packet(0)[6:10], "big"), 0)
    answer = server.api(
        "query",
        query='count_over_time(gs_battery_voltage_volts{timeline="spacecraft"}[4h])',
        time=f"{first + envelopes * HK_PER_ENVELOPE + 10:.3f}",
    )
    results = answer["data"]["result"]
    return int(results[0]["value"][1]) if results else 0


def writer_processes(daemon: DaemonProcess) -> list[int]:
    """The daemon's history writer: its one descendant at WRITER_NICENESS."""
    return [pid for pid in process_tree(daemon.pid)[1:] if _niceness(pid) == WRITER_NICENESS]


def _niceness(pid: int) -> int | None:
    if not _running(pid):
        return None
    try:
        return os.getpriority(os.PRIO_PROCESS, pid)
    except OSError:  # exited meanwhile
        return None


def _running(pid: int) -> bool:
    """Alive, not a zombie waiting to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_a_killed_writer_process_is_started_again_and_resumes(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """`groundstation run` with [history]: 3,000 HK envelopes; the writer's process killed
    with -9 part way. Ingest goes on (every envelope decoded live), the daemon logs the
    exit and starts the writer again, which resumes from its position: every packet's
    samples reach Prometheus. Then the daemon killed with -9: the writer exits with it."""
    server = prometheus_with_receiver(tmp_path / "prometheus", window=shipped_window())
    daemon = history_daemon(mosquitto, tmp_path, server)
    envelopes = 3000
    try:
        with running_process(daemon):
            publish_until_part_written(daemon, mosquitto, envelopes)
            (writer,) = writer_processes(daemon)
            os.kill(writer, signal.SIGKILL)
            killed_at = time.monotonic()
            deadline = killed_at + 90
            while (count := stored_voltages(server, envelopes)) < envelopes * HK_PER_ENVELOPE:
                assert time.monotonic() < deadline, (count, daemon.log_tail())
                time.sleep(0.2)
            caught_up_s = time.monotonic() - killed_at
            samples = daemon.scrape()
            assert total(samples, "gs_envelopes_total", result="ok") == envelopes
            assert total(samples, "gs_mqtt_connected") == 1
            (restarted,) = writer_processes(daemon)
            assert restarted != writer
            assert "history writer process exited with code -9" in daemon.log_path.read_text()
            daemon.stop(kill=True)
            deadline = time.monotonic() + 5
            while _running(restarted):
                assert time.monotonic() < deadline, "the writer outlived the daemon"
                time.sleep(0.05)
        assert stored_voltages(server, envelopes) == envelopes * HK_PER_ENVELOPE
        assert caught_up_s > RESTART_DELAY_S  # it really was down, then started again
    finally:
        server.stop()


def test_kill_9_mid_write_resumes_from_the_position(mosquitto: Mosquitto, tmp_path: Path) -> None:
    """`groundstation run` with [history], 3,000 HK envelopes (9,000 packets) archived, the
    process killed with -9 while the writer is part way; restarted, it resumes from its
    position: every packet's samples are in Prometheus."""
    server = prometheus_with_receiver(tmp_path / "prometheus", window=shipped_window())
    daemon = history_daemon(mosquitto, tmp_path, server)
    envelopes = 3000
    try:
        with running_process(daemon):
            written = publish_until_part_written(daemon, mosquitto, envelopes)
            daemon.stop(kill=True)
        assert written < envelopes * HK_PER_ENVELOPE * HK_SAMPLES  # killed part way
        position = load_position(daemon.archive_dir)
        assert position is not None
        assert position.records < envelopes  # the restart has a backlog to write

        def stored() -> int:
            return stored_voltages(server, envelopes)

        with running_process(daemon):
            # The restarted writer catches up from its position; what Prometheus holds is
            # the figure (test_lag_after_a_restart_is_the_backlog checks the lag).
            deadline = time.monotonic() + 90
            while (count := stored()) < envelopes * HK_PER_ENVELOPE:
                assert time.monotonic() < deadline, (count, daemon.log_tail())
                time.sleep(0.2)
            daemon.stop()
        assert stored() == envelopes * HK_PER_ENVELOPE
    finally:
        server.stop()


def test_lag_after_a_restart_is_the_backlog(mosquitto: Mosquitto, tmp_path: Path) -> None:
    """`groundstation run`: 600 HK envelopes written, Prometheus stopped, 600 more archived,
    the daemon restarted (its live path receives nothing): once the writer has looked at
    the archive, before it has read the backlog, gs_history_lag_seconds is the receive
    time of the archive's newest record minus that of the position's record, and stays so
    while the receiver is down; once it is back the writer catches up, the lag reads 0
    and Prometheus holds all 1,200 envelopes."""
    server = prometheus_with_receiver(tmp_path / "prometheus", window=shipped_window())
    history = (
        f'[history]\nurl = "{server.url}/api/v1/write"\npoll_interval_s = 0.2\n'
        "backoff_min_s = 0.1\nbackoff_max_s = 0.5\n"
        # The writer reads 100 envelopes at a time: the backlog is more than its first read.
        "[ingest]\nbatch_max_envelopes = 100\n"
    )
    daemon = DaemonProcess(
        workdir=tmp_path / "daemon", broker_port=mosquitto.port, config_toml=history
    )
    half = 600
    first = time_of(int.from_bytes(hk_packet(0)[6:10], "big"), 0)

    def stored() -> int:
        answer = server.api(
            "query",
            query='count_over_time(gs_battery_voltage_volts{timeline="spacecraft"}[4h])',
            time=f"{first + 2 * half * HK_PER_ENVELOPE + 10:.3f}",
        )
        return sum(int(item["value"][1]) for item in answer["data"]["result"])

    def until(condition: Any, what: str, timeout_s: float = 60) -> dict[Any, float]:
        deadline = time.monotonic() + timeout_s
        while not condition(samples := daemon.scrape()):
            assert time.monotonic() < deadline, (what, daemon.log_tail())
            time.sleep(0.05)
        return samples

    try:
        with running_process(daemon):
            asyncio.run(publish(mosquitto.port, (envelope(seq) for seq in range(half))))
            until(lambda m: total(m, "gs_envelopes_total", result="ok") == half, "archived")
            until(lambda m: total(m, "gs_history_samples_total", result="ok") > 0, "written")
            caught_up = until(lambda m: total(m, "gs_history_lag_seconds") == 0.0, "caught up")
            assert total(caught_up, "gs_history_samples_total", result="rejected") == 0
            deadline = time.monotonic() + 10
            while (count := stored()) < half * HK_PER_ENVELOPE:
                assert time.monotonic() < deadline, (count, caught_up, daemon.log_tail())
                time.sleep(0.1)
            assert count == half * HK_PER_ENVELOPE
            server.stop()
            time.sleep(1.0)  # the backlog's receive times lie after the position's
            asyncio.run(publish(mosquitto.port, (envelope(seq) for seq in range(half, 2 * half))))
            until(lambda m: total(m, "gs_envelopes_total", result="ok") == 2 * half, "archived")
            daemon.stop()
        position = load_position(daemon.archive_dir)
        assert position is not None
        records = list(ArchiveReader(daemon.archive_dir).records())
        assert len(records) == 2 * half
        done = [p.name for p in list_segments(daemon.archive_dir)].index(position.segment)
        before = sum(
            1
            for path in list_segments(daemon.archive_dir)[:done]
            for _ in ArchiveReader(daemon.archive_dir).segment_records(path)
        )
        written = records[before + position.records - 1].received_at
        backlog = records[-1].received_at - written
        assert backlog > 1.0

        with running_process(daemon):
            # The metrics server starts before the writer's first look: wait for that look.
            samples = until(lambda m: total(m, "gs_history_lag_seconds") > 0, "lag > 0", 30)
            assert total(samples, "gs_history_lag_seconds") == pytest.approx(backlog, abs=1e-3)
            samples = until(lambda m: total(m, "gs_history_up") == 0, "receiver down")
            assert total(samples, "gs_history_lag_seconds") == pytest.approx(backlog, abs=1e-3)
            server.start(prometheus_config())
            until(lambda m: total(m, "gs_history_lag_seconds") == 0.0, "caught up again", 90)
            assert stored() == 2 * half * HK_PER_ENVELOPE
            daemon.stop()
    finally:
        server.stop()
