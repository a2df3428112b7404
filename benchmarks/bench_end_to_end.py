"""End-to-end throughput: Mosquitto -> daemon (archive, ack, decode), beside raw subscribers.

Same broker, same run, same payloads (ratios, not absolute figures, are what compare across
runs on a shared machine: ../shared/PERFORMANCE.md). For each stream (HELI_IMU in envelopes
of about 500 packets; a mixed flight stream), the broker's persistent session for each
subscriber is preloaded with N messages, then the subscriber drains it:

- `mosquitto_sub` (C): wall time of `mosquitto_sub -C N` on the preloaded session;
- bare aiomqtt: an `async for` over `client.messages`, counting, nothing else;
- the daemon: `python -m groundstation run` (fsync policy as configured, default
  `always`), timed from /healthz turning 200 until gs_envelopes_total says N decoded,
  while /metrics is scraped every 50 ms (its latency during the burst is reported) and
  the daemon's peak RSS (VmHWM) and the CPU shares of its parent and decoding child
  (which one limits) are read at the end. The preloaded backlog is many times
  what the daemon decodes per second (the overload case): its memory stays bounded by
  the broker's in-flight window plus the ingest queue, whatever the backlog.

Run: `python -m benchmarks.bench_end_to_end` (about a minute; --help for sizes).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
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

from simulators.run import Simulation, SimulationOptions
from simulators.stress import DEFAULT_MIX
from tests.services import LOOPBACK, Mosquitto, find_binary, free_port, running_mosquitto

TOPIC_FILTER = "mars/tm/+"
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
    subscriber: str
    stream: str
    seconds: float
    messages: int
    packets: int
    extra: dict[str, float]

    @property
    def messages_per_s(self) -> float:
        return self.messages / self.seconds

    @property
    def packets_per_s(self) -> float:
        return self.packets / self.seconds


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


async def register_session(port: int, client_id: str) -> None:
    """A persistent 3.1.1 session subscribed at QoS 1, so the broker queues for it."""
    async with aiomqtt.Client(LOOPBACK, port, identifier=client_id, clean_session=False) as client:
        await client.subscribe(TOPIC_FILTER, qos=1)


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
    started = time.perf_counter()
    subprocess.run(
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
            str(len(stream.messages)),
        ],
        stdout=subprocess.DEVNULL,
        check=True,
        timeout=300,
    )
    seconds = time.perf_counter() - started
    return Result("mosquitto_sub", stream.name, seconds, len(stream.messages), stream.packets, {})


async def bench_aiomqtt(port: int, stream: Stream, client_id: str) -> Result:
    received = 0
    started = time.perf_counter()
    async with aiomqtt.Client(LOOPBACK, port, identifier=client_id, clean_session=False) as client:
        await client.subscribe(TOPIC_FILTER, qos=1)
        async for _ in client.messages:
            received += 1
            if received == len(stream.messages):
                break
    seconds = time.perf_counter() - started
    return Result("bare aiomqtt", stream.name, seconds, received, stream.packets, {})


def scrape(port: int) -> tuple[float, str]:
    started = time.perf_counter()
    with urllib.request.urlopen(f"http://{LOOPBACK}:{port}/metrics", timeout=10) as response:
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
        children += [int(child) for child in (task / "children").read_text().split()]
    return children


def daemon_command(
    broker: Mosquitto, metrics_port: int, archive: Path, client_id: str
) -> list[str]:
    return [
        sys.executable,
        "-m",
        "groundstation",
        "--log-level",
        "WARNING",
        "run",
        "--broker",
        broker.url,
        "--metrics-addr",
        f"{LOOPBACK}:{metrics_port}",
        "--archive-dir",
        str(archive),
        "--client-id",
        client_id,
    ]


def bench_daemon(broker: Mosquitto, stream: Stream, client_id: str, workdir: Path) -> Result:
    metrics_port = free_port()
    archive = workdir / f"archive-{client_id}"
    process = subprocess.Popen(daemon_command(broker, metrics_port, archive, client_id), cwd=REPO)
    try:
        started = wait_healthy(process, metrics_port)
        cpu_at_start = cpu_seconds(process.pid)
        latencies: list[float] = []
        while True:
            latency, text = scrape(metrics_port)
            latencies.append(latency)
            if decoded_envelopes(text) >= len(stream.messages):
                break
            if process.poll() is not None:
                raise RuntimeError(f"daemon exited with {process.returncode}")
            time.sleep(0.05)
        seconds = time.perf_counter() - started
        rss = peak_rss_bytes(process.pid)
        cpu_at_end = cpu_seconds(process.pid)
    finally:
        process.terminate()
        process.wait(timeout=30)
    extra = {
        "metrics_latency_max_ms": max(latencies) * 1000,
        "metrics_latency_median_ms": statistics.median(latencies) * 1000,
        "scrapes": float(len(latencies)),
        "peak_rss_mb": rss[0] / 2**20,
        "child_peak_rss_mb": rss[1] / 2**20,
        # Busy fraction of the burst: which process is the bottleneck (1.0 = a full core).
        "parent_cpu_share": (cpu_at_end[0] - cpu_at_start[0]) / seconds,
        "child_cpu_share": (cpu_at_end[1] - cpu_at_start[1]) / seconds,
        "exit_code": float(process.returncode),
    }
    return Result(
        "daemon end to end", stream.name, seconds, len(stream.messages), stream.packets, extra
    )


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


def run_stream(broker: Mosquitto, stream: Stream, workdir: Path) -> list[Result]:
    results: list[Result] = []
    for kind in ("mosquitto_sub", "aiomqtt", "daemon"):
        client_id = f"bench-{kind}-{stream.name}"
        if kind == "daemon":
            # The daemon speaks MQTT 5 by default: let it create its own session first.
            port = free_port()
            process = subprocess.Popen(
                daemon_command(broker, port, workdir / "warmup", client_id), cwd=REPO
            )
            wait_healthy(process, port)
            process.terminate()
            process.wait(timeout=30)
        else:
            asyncio.run(register_session(broker.port, client_id))
        asyncio.run(preload(broker.port, stream))
        if kind == "mosquitto_sub":
            results.append(bench_mosquitto_sub(broker.port, stream, client_id))
        elif kind == "aiomqtt":
            results.append(asyncio.run(bench_aiomqtt(broker.port, stream, client_id)))
        else:
            results.append(bench_daemon(broker, stream, client_id, workdir))
        print(describe(results[-1]), flush=True)
    return results


def describe(result: Result) -> str:
    line = (
        f"{result.stream:>6} {result.subscriber:<18} {result.messages_per_s:9,.0f} msg/s"
        f" {result.packets_per_s / 1e6:6.3f} M packets/s ({result.seconds:.2f} s)"
    )
    if result.extra:
        line += "  " + ", ".join(f"{key} {value:.1f}" for key, value in result.extra.items())
    return line


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=2000, help="envelopes per stream")
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
        with running_mosquitto(workdir / "mosquitto") as broker:
            for stream in streams:
                all_results += run_stream(broker, stream, workdir)
    print()
    for stream in streams:
        by_kind = {r.subscriber: r for r in all_results if r.stream == stream.name}
        daemon = by_kind["daemon end to end"]
        for baseline in ("bare aiomqtt", "mosquitto_sub"):
            ratio = daemon.packets_per_s / by_kind[baseline].packets_per_s
            print(f"{stream.name}: daemon / {baseline} = {ratio:.0%}")
    if args.json:
        args.json.write_text(
            json.dumps(
                [
                    {
                        "subscriber": r.subscriber,
                        "stream": r.stream,
                        "seconds": r.seconds,
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
