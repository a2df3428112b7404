"""The daemon in-process against a real Mosquitto: ingest, archive, metrics, sessions."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import msgpack
import pytest

from groundstation.cli.replay import replay
from groundstation.config import MqttVersion, Overrides, load_config
from groundstation.ingest.archive import ArchiveReader
from groundstation.ingest.mqtt import STABLE_CONNECTION_S
from groundstation.service.daemon import running_daemon
from tests.daemon_support import (
    HK_BATTERY_VOLTAGE_V,
    HK_PER_ENVELOPE,
    counters,
    daemon_config,
    envelope,
    get,
    processed,
    publish,
    scrape,
)
from tests.icd_packets import HELI_HK, SCLK_EPOCH, hand_pack
from tests.services import LOOPBACK, Mosquitto, free_port

pytestmark = [pytest.mark.integration]


@pytest.mark.asyncio
async def test_envelopes_reach_archive_and_metrics(mosquitto: Mosquitto, tmp_path: Path) -> None:
    """Good and bad payloads: everything archived, counted, and replay agrees.

    1. start the daemon against Mosquitto; /healthz is 200 once subscribed;
    2. publish 20 valid HELI_HK envelopes, one garbage payload and one unknown vehicle;
    3. wait until the worker has applied all 22;
    4. /metrics shows 20 ok and 2 invalid envelopes, 60 ok packets and the HK values;
    5. the archive holds 22 records, 2 marked invalid; replaying it gives the same counters.
    """
    config = daemon_config(mosquitto, tmp_path)
    async with running_daemon(config) as daemon:
        await daemon.subscriber.connected_event.wait()  # type: ignore[union-attr]
        assert daemon.metrics_address is not None
        host, port = daemon.metrics_address
        status, body = await asyncio.to_thread(get, f"http://{host}:{port}/healthz")
        assert (status, body) == (200, "ok\n")
        payloads = [envelope(seq) for seq in range(20)]
        payloads += [b"\xc1 garbage", envelope(20, vehicle="voyager")]
        await publish(mosquitto.port, payloads)
        await processed(daemon, len(payloads))
        metrics = await scrape(daemon.metrics_address)
    assert metrics['gs_envelopes_total{result="ok",vehicle="ingenuity"}'] == 20
    assert metrics['gs_envelopes_total{result="invalid",vehicle="unknown"}'] == 2
    assert metrics['gs_packets_total{apid="100",result="ok",vehicle="ingenuity"}'] == 60
    assert metrics['gs_battery_voltage_volts{vehicle="ingenuity"}'] == HK_BATTERY_VOLTAGE_V
    assert metrics["gs_mqtt_connected{}"] == 1
    assert metrics["gs_ingest_queue_depth{}"] == 0

    records = list(ArchiveReader(config.archive.directory).records())
    assert len(records) == 22
    assert [record.valid for record in records].count(False) == 2
    assert {record.topic for record in records} == {"mars/tm/ingenuity"}
    summary = replay(config.archive.directory, max_payload_bytes=2**24, batch_size=7)
    assert summary["counters"] == counters(metrics)


@pytest.mark.asyncio
async def test_broker_keeps_the_session_while_the_daemon_is_down(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """Persistent session: what is published while the daemon is stopped arrives afterwards.

    1. run the daemon once so the broker records the session and subscription, stop it;
    2. publish 30 envelopes with no daemon running;
    3. start the daemon with the same client id: it receives all 30, none lost.
    """
    config = daemon_config(mosquitto, tmp_path)
    async with running_daemon(config) as daemon:
        await daemon.subscriber.connected_event.wait()  # type: ignore[union-attr]
    await publish(mosquitto.port, [envelope(seq) for seq in range(30)])
    async with running_daemon(config) as daemon:
        await processed(daemon, 30)
        metrics = await scrape(daemon.metrics_address)
    assert metrics['gs_envelopes_total{result="ok",vehicle="ingenuity"}'] == 30
    assert metrics['gs_packets_total{apid="100",result="ok",vehicle="ingenuity"}'] == 90
    assert metrics['gs_envelopes_lost_total{vehicle="ingenuity"}'] == 0


@pytest.mark.asyncio
async def test_reconnects_after_the_broker_restarts(mosquitto: Mosquitto, tmp_path: Path) -> None:
    """Broker outage: the daemon reports it, reconnects by itself and carries on.

    1. start the daemon; 2. stop Mosquitto: gs_mqtt_connected goes to 0, /healthz to 503;
    3. start Mosquitto again on the same port: the daemon reconnects (reconnects_total 1);
    4. an envelope published now is ingested.
    """
    config = daemon_config(mosquitto, tmp_path)
    async with running_daemon(config) as daemon:
        subscriber = daemon.subscriber
        assert subscriber is not None
        await subscriber.connected_event.wait()
        mosquitto.stop()
        while subscriber.status.connected:  # noqa: ASYNC110 - paho reports the loss by polling
            await asyncio.sleep(0.02)
        assert daemon.metrics_address is not None
        host, port = daemon.metrics_address
        status, _ = await asyncio.to_thread(get, f"http://{host}:{port}/healthz")
        assert status == 503
        assert (await scrape(daemon.metrics_address))["gs_mqtt_connected{}"] == 0
        mosquitto.start()
        await subscriber.connected_event.wait()
        await publish(mosquitto.port, [envelope(0)])
        await processed(daemon, 1)
        metrics = await scrape(daemon.metrics_address)
    assert metrics["gs_mqtt_reconnects_total{}"] == 1
    assert metrics["gs_mqtt_connected{}"] == 1
    assert (
        metrics['gs_packets_total{apid="100",result="ok",vehicle="ingenuity"}'] == HK_PER_ENVELOPE
    )


@pytest.mark.asyncio
async def test_repeated_broker_restarts_reset_the_backoff_and_report_the_outage(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """Connection health tells the truth across broker restarts, and waits do not grow.

    1. start the daemon (reconnect backoff 1 s .. 30 s) against Mosquitto;
    2. twice: once it has been connected for longer than STABLE_CONNECTION_S, stop
       Mosquitto; for 1.2 s (the first backoff wait is 0.5-1 s) sample /healthz and
       gs_mqtt_connected: every sample says disconnected; start Mosquitto again;
    3. the first wait after each outage is drawn from the first step, [0.5, 1] s: a
       connection that was up for a while resets the backoff (without the reset the
       second outage would start at the second step, 1-2 s);
    4. an envelope published at the end is ingested.
    """
    config = daemon_config(mosquitto, tmp_path)
    config = dataclasses.replace(
        config,
        broker=dataclasses.replace(config.broker, reconnect_min_s=1.0, reconnect_max_s=30.0),
    )
    first_waits: list[float] = []
    samples: list[tuple[int, float]] = []
    async with running_daemon(config) as daemon:
        subscriber = daemon.subscriber
        assert subscriber is not None
        assert daemon.metrics_address is not None
        host, port = daemon.metrics_address
        for _ in range(2):
            await subscriber.connected_event.wait()
            await asyncio.sleep(STABLE_CONNECTION_S + 0.5)
            retries_before = len(subscriber.retry_delays_s)
            await asyncio.to_thread(mosquitto.stop)
            outage_ends = asyncio.get_running_loop().time() + 1.2
            while asyncio.get_running_loop().time() < outage_ends:
                status, _ = await asyncio.to_thread(get, f"http://{host}:{port}/healthz")
                connected = (await scrape(daemon.metrics_address))["gs_mqtt_connected{}"]
                samples.append((status, connected))
                await asyncio.sleep(0.05)
            first_waits.append(subscriber.retry_delays_s[retries_before])
            await asyncio.to_thread(mosquitto.start)
        await subscriber.connected_event.wait()
        await publish(mosquitto.port, [envelope(0)])
        await processed(daemon, 1)
        metrics = await scrape(daemon.metrics_address)
    print(f"first backoff wait after each outage: {first_waits}; samples: {len(samples)}")
    assert len(samples) >= 20
    assert all(sample == (503, 0) for sample in samples), samples
    assert all(0.5 <= wait <= 1.0 for wait in first_waits), first_waits
    assert metrics["gs_mqtt_reconnects_total{}"] == 2
    assert metrics["gs_mqtt_connected{}"] == 1


@pytest.mark.asyncio
async def test_restart_resumes_sequences_from_the_archive(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """A redelivered envelope after a restart counts as duplicate, not as new data.

    1. run the daemon and ingest envelopes 0-9; stop it;
    2. publish envelope 9 again (as the broker would redeliver an unacknowledged one);
    3. the restarted daemon has rebuilt sequence state from the archive's tail, so its
       3 packets count as duplicate; replay of the whole archive says the same.
    """
    config = daemon_config(mosquitto, tmp_path)
    async with running_daemon(config) as daemon:
        await daemon.subscriber.connected_event.wait()  # type: ignore[union-attr]
        await publish(mosquitto.port, [envelope(seq) for seq in range(10)])
        await processed(daemon, 10)
    await publish(mosquitto.port, [envelope(9)])
    async with running_daemon(config) as daemon:
        await processed(daemon, 1)
        metrics = await scrape(daemon.metrics_address)
    duplicate = 'gs_packets_total{apid="100",result="duplicate",vehicle="ingenuity"}'
    assert metrics[duplicate] == HK_PER_ENVELOPE
    assert metrics['gs_packets_total{apid="100",result="ok",vehicle="ingenuity"}'] == 0
    summary = replay(config.archive.directory, max_payload_bytes=2**24, batch_size=100)
    assert summary["counters"][duplicate] == HK_PER_ENVELOPE
    assert summary["counters"]['gs_packets_total{apid="100",result="ok",vehicle="ingenuity"}'] == 30


@pytest.mark.asyncio
async def test_without_a_broker_the_embedded_one_is_used(tmp_path: Path) -> None:
    """No broker configured: the daemon runs amqtt on loopback and subscribes to it.

    1. a config with no host: embedded, MQTT 3.1.1, on a free loopback port;
    2. the daemon starts amqtt and subscribes; 3. an envelope published to that port
       is ingested and counted.
    """
    config = load_config(
        None,
        env={},
        overrides=Overrides(metrics_addr=f"{LOOPBACK}:0", archive_dir=tmp_path / "archive"),
    )
    config = dataclasses.replace(
        config, broker=dataclasses.replace(config.broker, port=free_port())
    )
    assert config.broker.embedded
    async with running_daemon(config) as daemon:
        await daemon.subscriber.connected_event.wait()  # type: ignore[union-attr]
        await publish(config.broker.port, [envelope(0)])
        await processed(daemon, 1)
        metrics = await scrape(daemon.metrics_address)
    assert (
        metrics['gs_packets_total{apid="100",result="ok",vehicle="ingenuity"}'] == HK_PER_ENVELOPE
    )


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("mqtt_version", "receive_maximum", "inbox_max_bytes"),
    [("5", 20, None), ("3.1.1", 20, None), ("5", 5_000, 8 * 1024)],
    ids=["messages-mqtt5", "messages-mqtt311", "bytes-mqtt5"],
)
async def test_a_resumed_backlog_stays_bounded_in_the_daemon(
    mosquitto: Mosquitto,
    tmp_path: Path,
    mqtt_version: MqttVersion,
    receive_maximum: int,
    inbox_max_bytes: int | None,
) -> None:
    """Mosquitto sends a resumed session's whole backlog at once; the daemon's inbox stays small.

    1. run the daemon once so the session exists, stop it;
    2. publish 5,000 envelopes while it is down;
    3. restart: the subscriber stops reading the socket when aiomqtt's queue holds
       `receive_maximum` messages or the inbox's bytes (one batch's, `batch_max_bytes`),
       and reads again below half, so the queue never holds more than that (by bytes:
       more by at most the one message read last);
    4. all 5,000 envelopes are ingested, each once.
    """
    backlog = 5_000
    config = daemon_config(mosquitto, tmp_path)
    config = dataclasses.replace(
        config,
        broker=dataclasses.replace(
            config.broker, receive_maximum=receive_maximum, mqtt_version=mqtt_version
        ),
    )
    if inbox_max_bytes is not None:
        config = dataclasses.replace(
            config, ingest=dataclasses.replace(config.ingest, batch_max_bytes=inbox_max_bytes)
        )
    async with running_daemon(config) as daemon:
        await daemon.subscriber.connected_event.wait()  # type: ignore[union-attr]
    payloads = [envelope(seq) for seq in range(backlog)]
    await publish(mosquitto.port, payloads)
    async with running_daemon(config) as daemon:
        await processed(daemon, backlog)
        subscriber = daemon.subscriber
        assert subscriber is not None
        metrics = await scrape(daemon.metrics_address)
    print(
        f"inbox peak with a {backlog}-message backlog: {subscriber.inbox_peak} messages,"
        f" {subscriber.inbox_peak_bytes} bytes"
    )
    if inbox_max_bytes is None:
        assert 0 < subscriber.inbox_peak <= receive_maximum
    else:
        assert 1 < subscriber.inbox_peak < receive_maximum
        assert subscriber.inbox_peak_bytes <= inbox_max_bytes + max(map(len, payloads))
    assert metrics['gs_envelopes_total{result="ok",vehicle="ingenuity"}'] == backlog
    seqs = [
        msgpack.unpackb(record.payload)["seq"]
        for record in ArchiveReader(config.archive.directory).records()
    ]
    assert sorted(seqs) == list(range(backlog))


@pytest.mark.asyncio
@pytest.mark.parametrize("mqtt_version", ["5", "3.1.1"])
async def test_stop_with_a_backlog_at_the_broker_is_quick_and_loses_nothing(
    mosquitto: Mosquitto, tmp_path: Path, mqtt_version: MqttVersion
) -> None:
    """Stopping while the broker holds a backlog: receiving stops at once, nothing lost.

    On both protocols: each batch's PUBACKs leave as one write, and the broker must take
    every one of them, or step 4 would find envelopes archived twice.

    1. run the daemon once so the session exists, stop it;
    2. publish 4,000 envelopes while it is down;
    3. restart it; once 200 are decoded, shut it down while the broker still sends the
       rest: it stops reading, confirms its acks by waiting for the broker to close the
       connection, drains its own queue; its recorded drain is far within the 10 s budget;
    4. restart it: the broker delivers what was left; the archive holds every seq once.
    """
    backlog = 4_000
    config = daemon_config(mosquitto, tmp_path)
    config = dataclasses.replace(
        config, broker=dataclasses.replace(config.broker, mqtt_version=mqtt_version)
    )
    async with running_daemon(config) as daemon:
        await daemon.subscriber.connected_event.wait()  # type: ignore[union-attr]
    await publish(mosquitto.port, [envelope(seq) for seq in range(backlog)])
    async with running_daemon(config) as daemon:
        await processed(daemon, 200)
    drain = daemon.drain_outcome
    subscriber = daemon.subscriber
    archived_at_stop = len(list(ArchiveReader(config.archive.directory).records()))
    async with running_daemon(config) as daemon:
        await processed(daemon, backlog - archived_at_stop)
    seqs = [
        msgpack.unpackb(record.payload)["seq"]
        for record in ArchiveReader(config.archive.directory).records()
    ]
    assert archived_at_stop < backlog, "the broker held no backlog at the stop"
    assert drain is not None
    assert not drain.timed_out
    assert drain.left_undecoded == 0
    assert drain.seconds < config.ingest.shutdown_timeout_s / 4
    assert subscriber is not None
    assert subscriber.close_seconds is not None
    assert subscriber.close_seconds < config.broker.connect_timeout_s / 4
    assert sorted(seqs) == list(range(backlog))


@pytest.mark.asyncio
async def test_impossible_times_and_topics_are_refused(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """Wrong clocks and wrong topics through Mosquitto into the daemon (ICD section 6).

    1. publish: HK at 7.5 V; a CRC-valid HK dated SCLK 0xFFFFFFFF (2136) at 15.0 V; two
       envelopes with ert 1e308 and one with -1e308; an ingenuity envelope on
       mars/tm/perseverance; then HK at 22.0 V, newer than the first;
    2. /metrics: the battery gauge shows 22.0 V (the 2136 packet is `clock_error` and lost),
       three envelopes invalid by time and one by topic, the latency sum finite;
    3. replaying the archive (which kept each receive time) gives the same counters."""
    ert = 1.7e9 + 600.0

    def hk(seq: int, coarse: int, voltage_mv: int) -> bytes:
        fields = HELI_HK.pack(3, 0, voltage_mv, 100, 80, -60, 2000, 2500, 2537, 2537)
        return hand_pack(100, seq, fields, coarse=coarse)

    def wrap(seq: int, at: float, packets: bytes, vehicle: str = "ingenuity") -> bytes:
        document = {"v": 1, "relay": "perseverance", "vehicle": vehicle, "seq": seq, "ert": at,
                    "packets": packets}  # fmt: skip
        payload: bytes = msgpack.packb(document, use_bin_type=True)
        return payload

    now_sclk = int(ert) - SCLK_EPOCH - 600
    config = daemon_config(mosquitto, tmp_path)
    async with running_daemon(config) as daemon:
        await daemon.subscriber.connected_event.wait()  # type: ignore[union-attr]
        await publish(mosquitto.port, [
            wrap(0, ert, hk(0, now_sclk, 7500)),
            wrap(1, ert + 1, hk(1, 0xFFFFFFFF, 15000)),
            wrap(2, 1e308, hk(2, now_sclk + 2, 9000)),
            wrap(3, 1e308, hk(3, now_sclk + 3, 9000)),
            wrap(4, -1e308, hk(4, now_sclk + 4, 9000)),
        ])  # fmt: skip
        await publish(mosquitto.port, [wrap(5, ert + 5, hk(5, now_sclk + 5, 9000))],
                      topic="mars/tm/perseverance")  # fmt: skip
        await publish(mosquitto.port, [wrap(6, ert + 6, hk(6, now_sclk + 6, 22000))])
        await processed(daemon, 7)
        metrics = await scrape(daemon.metrics_address)
    heli = 'vehicle="ingenuity"'
    assert metrics[f"gs_battery_voltage_volts{{{heli}}}"] == pytest.approx(22.0)
    assert metrics[f'gs_packets_total{{apid="100",result="clock_error",{heli}}}'] == 1
    assert metrics[f'gs_packets_total{{apid="100",result="ok",{heli}}}'] == 2
    assert metrics[f'gs_envelopes_total{{result="invalid",{heli}}}'] == 4
    assert metrics[f"gs_packet_latency_seconds_count{{{heli}}}"] == 2
    assert metrics[f"gs_packet_latency_seconds_sum{{{heli}}}"] == pytest.approx(1200.0)
    summary = await asyncio.to_thread(
        replay, config.archive.directory, max_payload_bytes=2**24, batch_size=4
    )
    assert summary["counters"] == counters(metrics)
