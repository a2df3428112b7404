"""End-to-end throughput: Mosquitto -> daemon (archive, ack, decode), beside raw subscribers.

Same broker, same run, same payloads (ratios, not absolute figures, are what compare across
runs on a shared machine). For each stream (HELI_IMU in envelopes
of about 500 packets; a mixed flight stream), the broker's persistent session for each
subscriber is preloaded with N messages, then the subscriber drains it:

- `mosquitto_sub` (C): `mosquitto_sub -C N -F %l` on the preloaded session (one line
  per message, read here as it comes);
- bare aiomqtt: an `async for` over `client.messages`, counting, nothing else, once on
  MQTT 3.1.1 (aiomqtt's default) and once on MQTT 5 (the daemon's default);
- the daemon: `python -m groundstation run` (fsync policy as configured, default
  `always`), on MQTT 5 (its default) and on 3.1.1, each compared with bare aiomqtt on
  the same protocol (paho parses an MQTT 5 PUBLISH's properties, about 19 us a message),
  its progress read from gs_envelopes_total every 50 ms and the whole of /metrics
  scraped every 250 ms (its latency during the burst is reported), and
  the daemon's peak RSS (VmHWM) and the CPU shares of its parent and decoding child
  (which one limits) are read at the end. The preloaded backlog is many times
  what the daemon decodes per second (the overload case): its memory stays bounded by
  the broker's in-flight window, whatever the backlog (the decoder's is in the archive).
- with `--history`, the daemon again with `--history-url` (daemon+history): its history
  writer, a process of its own, reads the archive behind ingest and writes its
  samples by remote write to a Prometheus 2.42 started once for the run (receiver on,
  the out-of-order window of deploy/prometheus/prometheus.yml). Its rate is compared with
  the plain daemon's on the same protocol; how far the writer got when ingest was through
  (gs_history_samples_total, gs_history_lag_seconds) is printed with it.

The issue asks for the sustained rate, so each subscriber's rate is taken over the
steady part of its drain, from the moment a fifth of the messages are through to the
last (`SUSTAINED_FROM`): connecting and the daemon's warm-up (first small batches, fresh
pages) stay out of it. The whole drain's rate is printed beside it. The daemon's
crossing times are interpolated between scrapes; bare aiomqtt's are when its client
received the messages (`arrival_clock`), not when the loop consumed them.

Run: `python -m benchmarks.bench_end_to_end` (about eight minutes; --history, about
nine; --help for sizes).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiomqtt
from groundstation.simulators.run import Simulation, SimulationOptions
from groundstation.simulators.stress import DEFAULT_MIX
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.reliability_support import service_environment
from tests.services import LOOPBACK, Mosquitto, find_binary, free_port, running_mosquitto
from tests.test_history_prometheus import prometheus_with_receiver, shipped_window

TOPIC_FILTER = "mars/tm/+"
SUSTAINED_FROM = 0.2  # the sustained rate is measured from this share of messages to the end
# Progress is read every 50 ms from gs_envelopes_total alone; every fifth read is a whole
# scrape, timed. Whole scrapes every 50 ms (20 a second, 300 times Prometheus's default
# rate) cost the parent about 5 % of a core (2.5 ms of CPU each); one family, 1.1 ms.
SCRAPE_INTERVAL_S = 0.05
FULL_SCRAPE_EVERY = 5
REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Stream:
    """Preloaded payloads: what they are and how many packets they carry."""

    name: str
    messages: list[tuple[str, bytes]]
    packets: int

    @property
    def payload_bytes(self) -> int:
        return sum(len(payload) for _, payload in self.messages)


@dataclass(frozen=True)
class Result:
    """One drain: its whole duration, and the steady part the sustained rate is taken over."""

    subscriber: str
    stream: str
    seconds: float  # the whole drain
    messages: int
    packets: int
    sustained_seconds: float  # from SUSTAINED_FROM of the messages to the last
    extra: dict[str, float]

    @property
    def messages_per_s(self) -> float:
        return self.messages * (1 - SUSTAINED_FROM) / self.sustained_seconds

    @property
    def packets_per_s(self) -> float:
        return self.packets * (1 - SUSTAINED_FROM) / self.sustained_seconds

    @property
    def whole_packets_per_s(self) -> float:
        return self.packets / self.seconds


def crossing_time(progress: Sequence[tuple[float, float]], count: float) -> float:
    """When a monotone (time, count) series reached `count`, interpolated linearly."""
    earlier = (0.0, 0.0)
    for at, seen in progress:
        if seen >= count:
            start, before = earlier
            if seen == before:
                return at
            return start + (at - start) * (count - before) / (seen - before)
        earlier = (at, seen)
    raise ValueError(f"the series never reached {count}")


def make_stream(name: str, *, mix: Mapping[str, float], messages: int) -> Stream:
    """Stress-mode deliveries of about 500 packets each (the simulator's generator, no I/O)."""
    per_envelope = 500
    options = SimulationOptions(
        profile="stress",
        stress_packets=messages * per_envelope,
        packets_per_envelope=per_envelope,
        mix=mix,
    )
    payloads: list[tuple[str, bytes]] = []
    packets = 0
    for delivery in Simulation(options).deliveries():
        if delivery.payload is not None:
            payloads.append((delivery.topic, delivery.payload))
            packets += sum(delivery.account.packets_sent.values())
    return Stream(name=name, messages=payloads, packets=packets)


MQTT_VERSIONS = ("3.1.1", "5")


def arrival_clock(received_at: list[float]) -> type[asyncio.Queue[aiomqtt.Message]]:
    """An aiomqtt message queue type (its `queue_type`) that notes in `received_at` when the
    client received each message.

    The `async for` consumer lags the socket reader: the reader parses for as long as
    data is there and the queue (unbounded) absorbs the backlog, then the consumer empties
    it at ~50,000 messages/s. The consumer's clock would show a slow start and a fast end;
    the reception clock is the one to compare with the daemon's.
    """

    class ArrivalClock(asyncio.Queue[aiomqtt.Message]):
        def put_nowait(self, item: aiomqtt.Message) -> None:
            received_at.append(time.perf_counter())
            super().put_nowait(item)

    return ArrivalClock


def bare_client(
    port: int, client_id: str, mqtt_version: str, received_at: list[float] | None = None
) -> aiomqtt.Client:
    """A persistent-session client: clean_session off (3.1.1), or clean start off plus a
    session expiry (5), as the daemon's; with `received_at`, it notes its arrival times."""
    queue_type = arrival_clock(received_at if received_at is not None else [])
    if mqtt_version == "5":
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = 3600
        return aiomqtt.Client(
            LOOPBACK,
            port,
            identifier=client_id,
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=False,
            properties=properties,
            queue_type=queue_type,
        )
    return aiomqtt.Client(
        LOOPBACK, port, identifier=client_id, clean_session=False, queue_type=queue_type
    )


async def register_session(port: int, client_id: str, mqtt_version: str) -> None:
    """A persistent session subscribed at QoS 1, so the broker queues for it."""
    async with bare_client(port, client_id, mqtt_version) as client:
        await client.subscribe(TOPIC_FILTER, qos=1)


async def forget_session(port: int, client_id: str) -> None:
    """Discard a session (a clean-session connect does): the broker stops queueing for it,
    so later preloads and rounds do not pile up copies for subscribers already measured."""
    async with aiomqtt.Client(LOOPBACK, port, identifier=client_id, clean_session=True):
        pass


async def preload(port: int, stream: Stream) -> None:
    """Publish every message at QoS 1, 200 in flight, until the broker has them all."""
    window = 200
    async with aiomqtt.Client(
        LOOPBACK, port, identifier=f"preload-{os.getpid()}", max_inflight_messages=window
    ) as client:
        client.pending_calls_threshold = 2 * window  # aiomqtt warns above it
        for start in range(0, len(stream.messages), window):
            chunk = stream.messages[start : start + window]
            await asyncio.gather(
                *(client.publish(topic, payload, qos=1) for topic, payload in chunk)
            )


def bench_mosquitto_sub(port: int, stream: Stream, client_id: str) -> Result:
    total = len(stream.messages)
    started = time.perf_counter()
    process = subprocess.Popen(
        [
            find_binary("mosquitto_sub"),
            "-h",
            LOOPBACK,
            "-p",
            str(port),
            "-c",
            "-i",
            client_id,
            "-q",
            "1",
            "-t",
            TOPIC_FILTER,
            "-C",
            str(total),
            "-F",
            "%l",  # the payload's length: one short line per message
        ],
        stdout=subprocess.PIPE,
    )
    assert process.stdout is not None
    received = 0
    steady_from = started
    for _ in process.stdout:
        received += 1
        if received == int(total * SUSTAINED_FROM):
            steady_from = time.perf_counter()
    finished = time.perf_counter()
    if process.wait(timeout=60) != 0 or received != total:
        raise RuntimeError(f"mosquitto_sub got {received} of {total} (exit {process.returncode})")
    return Result(
        "mosquitto_sub",
        stream.name,
        finished - started,
        total,
        stream.packets,
        finished - steady_from,
        {},
    )


async def bench_aiomqtt(port: int, stream: Stream, client_id: str, mqtt_version: str) -> Result:
    total = len(stream.messages)
    received = 0
    arrivals: list[float] = []
    started = time.perf_counter()
    async with bare_client(port, client_id, mqtt_version, arrivals) as client:
        await client.subscribe(TOPIC_FILTER, qos=1)
        async for _ in client.messages:
            received += 1
            if received == total:
                break
    finished = time.perf_counter()
    return Result(
        f"bare aiomqtt {mqtt_version}",
        stream.name,
        finished - started,
        received,
        stream.packets,
        arrivals[total - 1] - arrivals[int(total * SUSTAINED_FROM) - 1],
        {},
    )


def scrape(port: int, *, only: str | None = None) -> tuple[float, str]:
    """One /metrics request and its latency; `only` asks for one family (`name[]`)."""
    query = f"?name[]={only}" if only else ""
    started = time.perf_counter()
    with urllib.request.urlopen(f"http://{LOOPBACK}:{port}/metrics{query}", timeout=10) as response:
        text = response.read().decode()
    return time.perf_counter() - started, text


def decoded_envelopes(text: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("gs_envelopes_total{") and 'result="ok"' in line
    )


def peak_rss_bytes(pid: int) -> tuple[int, int]:
    """VmHWM of the process, and the sum over its children (the decoding child process)."""
    return _vm_hwm(pid), sum(_vm_hwm(child) for child in _children(pid))


def _vm_hwm(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def cpu_seconds(pid: int) -> tuple[float, float]:
    """CPU time (user + system) of the process, and the sum over its children."""
    return _cpu(pid), sum(_cpu(child) for child in _children(pid))


def _cpu(pid: int) -> float:
    # /proc/PID/stat fields 14 and 15 (utime, stime) in clock ticks; the name may hold spaces.
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        # A thread may end between the listing and the read (the daemon's workers do).
        with contextlib.suppress(FileNotFoundError):
            children += [int(child) for child in (task / "children").read_text().split()]
    return children


def daemon_command(
    broker: Mosquitto,
    metrics_port: int,
    archive: Path,
    client_id: str,
    mqtt_version: str,
    *,
    history_url: str | None = None,
) -> list[str]:
    config = archive.with_name(f"{archive.name}.toml")
    config.write_text(f'[broker]\nmqtt_version = "{mqtt_version}"\n')
    history = ["--history-url", history_url] if history_url else []
    return [
        sys.executable,
        "-m",
        "groundstation",
        "--log-level",
        "WARNING",
        "run",
        "--config",
        str(config),
        "--broker",
        broker.url,
        "--metrics-addr",
        f"{LOOPBACK}:{metrics_port}",
        "--archive-dir",
        str(archive),
        "--client-id",
        client_id,
        *history,
    ]


def bench_daemon(
    broker: Mosquitto,
    stream: Stream,
    client_id: str,
    workdir: Path,
    mqtt_version: str,
    *,
    history_url: str | None = None,
) -> Result:
    metrics_port = free_port()
    archive = workdir / f"archive-{client_id}"
    process = subprocess.Popen(
        daemon_command(
            broker, metrics_port, archive, client_id, mqtt_version, history_url=history_url
        ),
        cwd=REPO,
        env=service_environment(),
    )
    try:
        started = wait_healthy(process, metrics_port)
        cpu_at_start = cpu_seconds(process.pid)
        latencies: list[float] = []
        progress: list[tuple[float, float]] = []  # (seconds since healthy, decoded)
        while True:
            if len(progress) % FULL_SCRAPE_EVERY == 0:
                latency, text = scrape(metrics_port)
                latencies.append(latency)
            else:
                _, text = scrape(metrics_port, only="gs_envelopes_total")
            progress.append((time.perf_counter() - started, decoded_envelopes(text)))
            if progress[-1][1] >= len(stream.messages):
                break
            if process.poll() is not None:
                raise RuntimeError(f"daemon exited with {process.returncode}")
            time.sleep(SCRAPE_INTERVAL_S)
        seconds = crossing_time(progress, len(stream.messages))
        steady_from = crossing_time(progress, len(stream.messages) * SUSTAINED_FROM)
        rss = peak_rss_bytes(process.pid)
        cpu_at_end = cpu_seconds(process.pid)
        wall = time.perf_counter() - started
        history = history_progress(scrape(metrics_port)[1]) if history_url else {}
    finally:
        process.terminate()
        process.wait(timeout=30)
        shutil.rmtree(archive, ignore_errors=True)  # a few hundred MB per run
    extra = {
        "metrics_latency_max_ms": max(latencies) * 1000,
        "metrics_latency_median_ms": statistics.median(latencies) * 1000,
        "scrapes": float(len(latencies)),
        "peak_rss_mb": rss[0] / 2**20,
        "child_peak_rss_mb": rss[1] / 2**20,
        # Busy fraction of the burst: which process is the bottleneck (1.0 = a full core).
        "parent_cpu_share": (cpu_at_end[0] - cpu_at_start[0]) / wall,
        "child_cpu_share": (cpu_at_end[1] - cpu_at_start[1]) / wall,
        "exit_code": float(process.returncode),
        **history,
    }
    return Result(
        f"daemon+history {mqtt_version}" if history_url else f"daemon {mqtt_version}",
        stream.name,
        seconds,
        len(stream.messages),
        stream.packets,
        seconds - steady_from,
        extra,
    )


def history_progress(text: str) -> dict[str, float]:
    """The writer's samples by result and its lag, as ingest finished the drain."""
    progress = {}
    for line in text.splitlines():
        if line.startswith("gs_history_samples_total{"):
            result = line.split('result="', 1)[1].split('"', 1)[0]
            progress[f"history_samples_{result}"] = float(line.rsplit(" ", 1)[1])
        elif line.startswith("gs_history_lag_seconds "):
            progress["history_lag_s"] = float(line.rsplit(" ", 1)[1])
    return progress


def wait_healthy(process: subprocess.Popen[bytes], port: int) -> float:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"daemon exited with {process.returncode} on start")
        try:
            with urllib.request.urlopen(f"http://{LOOPBACK}:{port}/healthz", timeout=1) as response:
                if response.status == 200:
                    return time.perf_counter()
        except OSError:
            time.sleep(0.01)
    raise RuntimeError("daemon not healthy within 30 s")


def run_stream(
    broker: Mosquitto, stream: Stream, workdir: Path, round_: int, history_url: str | None
) -> list[Result]:
    """One round of every subscriber; daemon+history too when `history_url` is given."""
    results: list[Result] = []
    kinds = ("aiomqtt", "daemon", "daemon+history") if history_url else ("aiomqtt", "daemon")
    runs = [("mosquitto_sub", "3.1.1")]
    runs += [(kind, version) for version in ("5", "3.1.1") for kind in kinds]
    for kind, version in runs:
        client_id = f"bench-{kind}-{version}-{stream.name}-{round_}"
        url = history_url if kind == "daemon+history" else None
        if kind.startswith("daemon"):
            # Let the daemon create its own session first, as it would in service.
            port = free_port()
            warmup = workdir / f"warmup-{client_id}"
            process = subprocess.Popen(
                daemon_command(broker, port, warmup, client_id, version, history_url=url),
                cwd=REPO,
                env=service_environment(),
            )
            wait_healthy(process, port)
            process.terminate()
            process.wait(timeout=30)
        else:
            asyncio.run(register_session(broker.port, client_id, version))
        asyncio.run(preload(broker.port, stream))
        if kind == "mosquitto_sub":
            results.append(bench_mosquitto_sub(broker.port, stream, client_id))
        elif kind == "aiomqtt":
            results.append(asyncio.run(bench_aiomqtt(broker.port, stream, client_id, version)))
        else:
            results.append(
                bench_daemon(broker, stream, client_id, workdir, version, history_url=url)
            )
        asyncio.run(forget_session(broker.port, client_id))
        print(describe(results[-1]), flush=True)
    return results


def describe(result: Result) -> str:
    line = (
        f"{result.stream:>6} {result.subscriber:<18} {result.messages_per_s:9,.0f} msg/s"
        f" {result.packets_per_s / 1e6:6.3f} M packets/s sustained"
        f" (whole drain {result.whole_packets_per_s / 1e6:.3f} M in {result.seconds:.2f} s)"
    )
    if result.extra:
        line += "  " + ", ".join(f"{key} {value:.1f}" for key, value in result.extra.items())
    return line


def summarise(stream: Stream, results: Sequence[Result]) -> str:
    """Median rate of each subscriber over the rounds, and the daemon's ratios to them.

    The baselines drain the backlog in well under a second, and one run of bare aiomqtt
    can vary by half from the next on a shared 2-core host: medians of interleaved rounds are what
    the ratios use; each round's own ratio is listed too.
    """
    rates: dict[str, list[float]] = {}
    whole: dict[str, list[float]] = {}
    for result in results:
        rates.setdefault(result.subscriber, []).append(result.packets_per_s)
        whole.setdefault(result.subscriber, []).append(result.whole_packets_per_s)
    lines = [
        f"{stream.name}: {name} median {statistics.median(values) / 1e6:.3f} M packets/s"
        f" sustained (rounds: {', '.join(f'{v / 1e6:.2f}' for v in values)})"
        for name, values in rates.items()
    ]
    for version in MQTT_VERSIONS:
        daemon = rates[f"daemon {version}"]
        for baseline in (f"bare aiomqtt {version}", "mosquitto_sub"):
            base = rates[baseline]
            each = ", ".join(f"{d / b:.0%}" for d, b in zip(daemon, base, strict=True))
            lines.append(
                f"{stream.name}: daemon {version} / {baseline} ="
                f" {statistics.median(daemon) / statistics.median(base):.0%}"
                f" of the sustained medians (rounds: {each})"
            )
        bare = f"bare aiomqtt {version}"
        lines.append(
            f"{stream.name}: daemon {version} / {bare}, whole drains ="
            f" {statistics.median(whole[f'daemon {version}']) / statistics.median(whole[bare]):.0%}"
        )
        with_history = rates.get(f"daemon+history {version}")
        if with_history:
            each = ", ".join(f"{h / d:.0%}" for h, d in zip(with_history, daemon, strict=True))
            lines.append(
                f"{stream.name}: daemon+history {version} / daemon {version} ="
                f" {statistics.median(with_history) / statistics.median(daemon):.0%}"
                f" of the sustained medians (rounds: {each})"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=6000, help="envelopes per stream")
    parser.add_argument(
        "--rounds", type=int, default=3, help="runs of every subscriber, interleaved"
    )
    parser.add_argument(
        "--history",
        action="store_true",
        help="also run the daemon with its history writer, into a local Prometheus",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    streams = [
        make_stream("imu", mix={"HELI_IMU": 1.0}, messages=args.messages),
        make_stream("mixed", mix=DEFAULT_MIX, messages=args.messages),
    ]
    for stream in streams:
        print(
            f"{stream.name}: {len(stream.messages)} messages, {stream.packets} packets,"
            f" {stream.payload_bytes / len(stream.messages) / 1024:.1f} KiB per message",
            flush=True,
        )
    all_results: list[Result] = []
    with tempfile.TemporaryDirectory() as scratch:
        workdir = Path(scratch)
        prometheus = None
        if args.history:
            prometheus = prometheus_with_receiver(workdir / "prometheus", window=shipped_window())
        history_url = f"{prometheus.url}/api/v1/write" if prometheus else None
        try:
            with running_mosquitto(workdir / "mosquitto") as broker:
                for round_ in range(args.rounds):
                    for stream in streams:
                        all_results += run_stream(broker, stream, workdir, round_, history_url)
        finally:
            if prometheus:
                prometheus.stop()
    print()
    for stream in streams:
        print(summarise(stream, [r for r in all_results if r.stream == stream.name]))
    if args.json:
        args.json.write_text(
            json.dumps(
                [
                    {
                        "subscriber": r.subscriber,
                        "stream": r.stream,
                        "seconds": r.seconds,
                        "sustained_seconds": r.sustained_seconds,
                        "messages_per_s": r.messages_per_s,
                        "packets_per_s": r.packets_per_s,
                        **r.extra,
                    }
                    for r in all_results
                ],
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
