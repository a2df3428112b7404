"""Shared by the reliability tests: figures, /proc, publisher, archive oracle, daemon.

Figures are the point of these tests (docs/reliability.md): each test prints its figures and
merges them into the JSON file named by RELIABILITY_FIGURES (default: one in the temp dir).
The daemon runs as a real subprocess (`DaemonProcess`), restartable with the same archive,
client id and metrics port; tests/daemon_support.py has a lighter one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import aiomqtt
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from groundstation.core.decoder import PacketDecoder
from groundstation.core.definitions import load_dictionaries, load_dictionary
from groundstation.core.encoder import encode_packets
from groundstation.core.envelope import Invalid, pack_envelope, unpack_envelope
from groundstation.ingest.archive import ArchiveReader
from tests.services import LOOPBACK, free_port

REPO = Path(__file__).resolve().parent.parent  # `python -m groundstation` from a checkout
SEQ_COUNT_MODULUS = 16384  # ICD section 3: 14-bit packet sequence count
FIGURES_ENV = "RELIABILITY_FIGURES"
FIGURES_DEFAULT_NAME = "groundstation-reliability-figures.json"

# glibc's allocator as the shipped systemd unit sets it (deploy/systemd/groundstation.service):
# batch-sized temporaries freed and made again reuse warm pages (docs/decisions.md).
GLIBC_TUNABLES = "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=268435456"


def service_environment() -> dict[str, str]:
    """This process's environment with the unit's allocator setting: the daemon as deployed."""
    return {**os.environ, "GLIBC_TUNABLES": GLIBC_TUNABLES}


Figure = int | float | str | bool | None
MIB = 1024 * 1024


def figures_path() -> Path:
    """Where the figures go: $RELIABILITY_FIGURES, else a fixed name in the temp dir."""
    configured = os.environ.get(FIGURES_ENV)
    return Path(configured) if configured else Path(tempfile.gettempdir()) / FIGURES_DEFAULT_NAME


def record_figures(section: str, key: str, figures: Mapping[str, Figure]) -> None:
    """Print one test's figures and merge them into the figures file under section/key."""
    print(f"FIGURES {section}/{key}: {json.dumps(dict(figures), sort_keys=True)}")
    path = figures_path()
    document: dict[str, dict[str, dict[str, Figure]]] = {}
    if path.exists():
        try:
            document = json.loads(path.read_text())
        except json.JSONDecodeError:
            document = {}  # a half-written file from an interrupted run: start over
    document.setdefault(section, {})[key] = dict(figures)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    temporary.replace(path)


@dataclass(frozen=True, kw_only=True)
class ProcessSample:
    """One look at a process and its descendants in /proc (Linux), summed over the tree.

    The daemon decodes in a child process (groundstation/consumers/decoding.py), so its memory,
    threads and descriptors are those of the whole tree. The peak is the sum of each
    process's own peak (VmHWM): an upper bound, since the peaks need not coincide.
    """

    processes: int
    rss_bytes: int
    peak_rss_bytes: int
    threads: int
    open_fds: int


def process_tree(pid: int) -> list[int]:
    """`pid` and every descendant, from /proc/PID/task/TID/children."""
    found = [pid]
    for parent in found:  # grows while iterating: a breadth-first walk
        with contextlib.suppress(OSError):  # a process that just exited
            for task in os.listdir(f"/proc/{parent}/task"):
                children = Path(f"/proc/{parent}/task/{task}/children").read_text().split()
                found.extend(int(child) for child in children)
    return found


def sample_process(pid: int) -> ProcessSample:
    """VmRSS, VmHWM and Threads from /proc/PID/status and the /proc/PID/fd count, per tree."""
    rss = peak = threads = fds = processes = 0
    for member in process_tree(pid):
        fields: dict[str, str] = {}
        try:
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                name, _, value = line.partition(":")
                fields[name] = value.strip()
            open_fds = len(os.listdir(f"/proc/{member}/fd"))
        except OSError:
            continue  # exited between the walk and the read
        if "VmRSS" not in fields:
            continue  # a zombie has no memory left to count
        processes += 1
        rss += _kibibytes(fields["VmRSS"])
        peak += _kibibytes(fields["VmHWM"])
        threads += int(fields["Threads"])
        fds += open_fds
    return ProcessSample(
        processes=processes, rss_bytes=rss, peak_rss_bytes=peak, threads=threads, open_fds=fds
    )


def _kibibytes(value: str) -> int:
    number, unit = value.split()
    if unit != "kB":
        raise ValueError(f"unexpected unit in /proc status: {value!r}")
    return int(number) * 1024


# --- envelopes and a fast QoS 1 publisher -------------------------------------------------

TOPIC = "mars/tm/ingenuity"  # ICD section 2
HK_APID = 100
IMU_APID = 102
FIRST_ERT = 1.7e9


def build_envelopes(
    count: int, *, first_seq: int = 0, imu_per_envelope: int = 0, relay: str = "perseverance"
) -> list[bytes]:
    """`count` ingenuity envelopes, seq first_seq.., each one HELI_HK packet with seq % 16384.

    One HELI_HK per envelope makes packet and envelope sequence accounting (ICD section 6)
    count the same gaps, so a test can compare both loss counters with the archive.
    `imu_per_envelope` HELI_IMU packets (134 bytes each) make an envelope heavier to decode.
    """
    dictionary = load_dictionary("ingenuity")
    seqs = np.arange(first_seq, first_seq + count, dtype=np.int64)
    times = FIRST_ERT + seqs.astype(np.float64)
    housekeeping = dictionary.packets[HK_APID]
    hk_blob = encode_packets(
        housekeeping,
        seq=seqs % SEQ_COUNT_MODULUS,
        time=times,
        columns={definition.name: 0 for definition in housekeeping.fields},
    )
    hk_size = housekeeping.max_length
    imu = dictionary.packets[IMU_APID]
    imu_size = imu.max_length * imu_per_envelope
    imu_blob = b""
    if imu_per_envelope:
        imu_counts = np.arange(
            first_seq * imu_per_envelope, (first_seq + count) * imu_per_envelope, dtype=np.int64
        )
        imu_blob = encode_packets(
            imu,
            seq=imu_counts % SEQ_COUNT_MODULUS,
            time=FIRST_ERT + imu_counts / imu_per_envelope,
            columns={definition.name: 0 for definition in imu.fields},
        )
    return [
        pack_envelope(
            relay=relay,
            vehicle="ingenuity",
            seq=int(seq),
            ert=float(time) + 600.0,
            packets=hk_blob[index * hk_size : (index + 1) * hk_size]
            + imu_blob[index * imu_size : (index + 1) * imu_size],
        )
        for index, (seq, time) in enumerate(zip(seqs, times, strict=True))
    ]


def envelope_stream(
    *, first_seq: int, imu_per_envelope: int = 0, chunk: int = 1000
) -> Iterator[bytes]:
    """build_envelopes without end, made a chunk at a time (for time-limited publishing)."""
    seq = first_seq
    while True:
        yield from build_envelopes(chunk, first_seq=seq, imu_per_envelope=imu_per_envelope)
        seq += chunk


@dataclass(frozen=True)
class Published:
    """What a publisher run did: how many payloads the broker acknowledged, in how long."""

    count: int
    seconds: float

    @property
    def rate_per_s(self) -> float:
        return self.count / self.seconds if self.seconds > 0 else 0.0


async def publish_all(
    port: int,
    payloads: Iterable[bytes],
    *,
    topic: str = TOPIC,
    window: int = 100,
    rate_per_s: float | None = None,
    stop_after_s: float | None = None,
) -> Published:
    """Publish QoS 1 with `window` PUBACKs outstanding, optionally paced and time-limited."""
    started = time.monotonic()
    sent = 0
    # aiomqtt warns once per publish beyond 10 outstanding ones: that is the point here.
    quiet = logging.getLogger("tests.publisher")
    quiet.setLevel(logging.ERROR)
    async with aiomqtt.Client(
        LOOPBACK,
        port,
        identifier=f"publisher-{os.getpid()}-{started}",
        max_inflight_messages=window,
        logger=quiet,
    ) as client:
        slots = asyncio.Semaphore(window)
        pending: set[asyncio.Task[None]] = set()
        failed: list[BaseException] = []

        def settle(task: asyncio.Task[None]) -> None:
            pending.discard(task)
            slots.release()
            error = None if task.cancelled() else task.exception()
            if error is not None:
                failed.append(error)

        for index, payload in enumerate(payloads):
            now = time.monotonic()
            if stop_after_s is not None and now - started >= stop_after_s:
                break
            if rate_per_s is not None:
                ahead_s = started + index / rate_per_s - now
                if ahead_s > 0.005:
                    await asyncio.sleep(ahead_s)
            await slots.acquire()
            task = asyncio.create_task(client.publish(topic, payload, qos=1))
            pending.add(task)
            task.add_done_callback(settle)
            sent += 1
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
    if failed:
        # A publish the broker did not acknowledge would look like loss in the daemon.
        raise AssertionError(f"{len(failed)} of {sent} publishes failed: {failed[0]!r}")
    return Published(count=sent, seconds=time.monotonic() - started)


# --- the archive, read back as a test oracle ---------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ArchiveCount:
    """What the archive holds, by envelope seq: the ground truth for loss and duplicates."""

    records: int
    invalid: int
    distinct_seqs: frozenset[int]

    @property
    def duplicates(self) -> int:
        return self.records - self.invalid - len(self.distinct_seqs)

    def missing(self, expected: Iterable[int]) -> list[int]:
        return sorted(set(expected) - self.distinct_seqs)


def count_archive(directory: Path) -> ArchiveCount:
    """Read every archived record and unpack its envelope (independently of the daemon)."""
    records = invalid = 0
    seqs: set[int] = set()
    for record in ArchiveReader(directory).records():
        records += 1
        # The daemon's verdict marks invalid records (ICD section 6); valid ones are
        # unpacked again here to read their seq.
        envelope = unpack_envelope(
            record.payload, max_payload_bytes=1 << 30, vehicles={"ingenuity", "perseverance"}
        )
        if not record.valid or isinstance(envelope, Invalid):
            invalid += 1
        else:
            seqs.add(envelope.seq)
    return ArchiveCount(records=records, invalid=invalid, distinct_seqs=frozenset(seqs))


# --- Prometheus text, scraped --------------------------------------------------------------

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int, *, timeout_s: float = 5.0) -> Samples:
    """Every sample of http://127.0.0.1:port/metrics, keyed by (name, label set)."""
    with urllib.request.urlopen(f"http://{LOOPBACK}:{port}/metrics", timeout=timeout_s) as reply:
        text = reply.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(
        value
        for (sample, label_set), value in samples.items()
        if sample == name and wanted <= label_set
    )


# --- the daemon as a subprocess -----------------------------------------------------------

POLL_S = 0.1
DAEMON_START_TIMEOUT_S = 30.0


@dataclass
class DaemonProcess:
    """`python -m groundstation run` against a test broker; restartable with the same state.

    The archive, log and config live in `workdir`, and the client id and metrics port stay
    the same across restarts, so a restart resumes the same persistent MQTT session.
    """

    workdir: Path
    broker_port: int
    client_id: str = "reliability"
    config_toml: str = ""  # extra settings (e.g. an [ingest] table); broker etc. from flags
    metrics_port: int = field(default_factory=free_port)
    # False: leave --broker / --metrics-addr out, so that the config file (or the default)
    # decides; the security tests check what the defaults bind.
    broker_flag: bool = True
    metrics_flag: bool = True
    process: subprocess.Popen[bytes] | None = None

    @property
    def archive_dir(self) -> Path:
        return self.workdir / "archive"

    @property
    def log_path(self) -> Path:
        return self.workdir / "daemon.log"

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError("the daemon is not running")
        return self.process.pid

    def command(self) -> list[str]:
        command = [sys.executable, "-m", "groundstation", "run"]
        command += ["--archive-dir", str(self.archive_dir), "--client-id", self.client_id]
        if self.broker_flag:
            command += ["--broker", f"mqtt://{LOOPBACK}:{self.broker_port}"]
        if self.metrics_flag:
            command += ["--metrics-addr", f"{LOOPBACK}:{self.metrics_port}"]
        if self.config_toml:
            config = self.workdir / "daemon.toml"
            config.write_text(self.config_toml)
            command += ["--config", str(config)]
        return command

    def start(self, *, wait_connected: bool = True) -> float:
        """Spawn the daemon; wait until /metrics answers (and MQTT is up); returns seconds."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                env=service_environment(),
            )
        self.wait_for(
            (lambda samples: total(samples, "gs_mqtt_connected") == 1)
            if wait_connected
            else (lambda samples: True),
            timeout_s=DAEMON_START_TIMEOUT_S,
            what="the daemon to serve /metrics" + (" and connect" if wait_connected else ""),
        )
        return time.monotonic() - started

    def scrape(self) -> Samples:
        return scrape(self.metrics_port)

    def wait_for(
        self, predicate: Callable[[Samples], bool], *, timeout_s: float, what: str
    ) -> Samples:
        """Poll /metrics until `predicate` holds; fails with the log tail if it never does."""
        deadline = time.monotonic() + timeout_s
        while True:
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(
                    f"the daemon exited ({self.process.returncode}) waiting for {what}\n"
                    + self.log_tail()
                )
            try:
                samples = self.scrape()
            except OSError:
                samples = {}
            if samples and predicate(samples):
                return samples
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out after {timeout_s} s waiting for {what}\n{self.log_tail()}"
                )
            time.sleep(POLL_S)

    def stop(self, *, kill: bool = False, timeout_s: float = 60.0) -> float:
        """SIGTERM (graceful) or SIGKILL the daemon; returns the seconds until it exited."""
        if self.process is None or self.process.poll() is not None:
            return 0.0
        started = time.monotonic()
        self.process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(
                f"the daemon ignored SIGTERM for {timeout_s} s\n{self.log_tail()}"
            ) from None
        return time.monotonic() - started

    def pause(self) -> None:
        """SIGSTOP: the daemon stops reading, as a starved process would; the broker queues."""
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def sample(self) -> ProcessSample:
        return sample_process(self.pid)

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return "(no daemon log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


@contextlib.contextmanager
def running_daemon(
    daemon: DaemonProcess, *, wait_connected: bool = True
) -> Iterator[DaemonProcess]:
    """A started daemon, killed on exit whatever happens (tests stop it themselves first)."""
    daemon.start(wait_connected=wait_connected)
    try:
        yield daemon
    finally:
        daemon.stop(kill=True)


@dataclass(frozen=True, kw_only=True)
class ReplaySummary:
    """The whole archive decoded again in arrival order: duplicates fall out as `duplicate`."""

    ok_packets: int
    duplicate_packets: int
    lost_packets: int
    other_packets: int  # crc_error, malformed, unknown_apid


def replay_summary(directory: Path) -> ReplaySummary:
    """Decode every archived envelope per vehicle with one fresh decoder (ICD section 6)."""
    dictionaries = load_dictionaries()
    buffers: dict[str, list[bytes | memoryview]] = {}
    for record in ArchiveReader(directory).records():
        envelope = unpack_envelope(record.payload, max_payload_bytes=1 << 30, vehicles=dictionaries)
        if record.valid and not isinstance(envelope, Invalid):
            buffers.setdefault(envelope.vehicle, []).append(envelope.packets)
    by_result: dict[str, int] = {}
    lost = 0
    for vehicle, vehicle_buffers in buffers.items():
        result = PacketDecoder(dictionaries[vehicle]).decode(vehicle_buffers)
        for (_, verdict), count in result.counts().items():
            by_result[verdict] = by_result.get(verdict, 0) + count
        lost += sum(result.lost.values())
    return ReplaySummary(
        ok_packets=by_result.pop("ok", 0),
        duplicate_packets=by_result.pop("duplicate", 0),
        lost_packets=lost,
        other_packets=sum(by_result.values()),
    )


# --- waiting for the daemon from async tests ------------------------------------------------

DRAIN_TIMEOUT_S = 300.0
# Fast reconnects for the broker tests; the default (0.5 s to 30 s) has the same shape.
RECONNECT_MAX_S = 2.0
FAST_RECONNECT = f"[broker]\nreconnect_min_s = 0.1\nreconnect_max_s = {RECONNECT_MAX_S}\n"


def newest_hk_time(samples: Samples) -> float:
    """Packet time of the newest HELI_HK decoded: the test envelopes' seq + FIRST_ERT."""
    return total(samples, "gs_last_packet_time_seconds", vehicle="ingenuity", apid="100")


async def wait_for(
    daemon: DaemonProcess,
    predicate: Callable[[Samples], bool],
    *,
    what: str,
    timeout_s: float = DRAIN_TIMEOUT_S,
) -> Samples:
    """daemon.wait_for off the event loop, so the publisher (and the proxy) keep running."""
    return await asyncio.to_thread(daemon.wait_for, predicate, timeout_s=timeout_s, what=what)


async def wait_for_last(daemon: DaemonProcess, last_seq: int) -> Samples:
    """Wait until the envelope with seq `last_seq` is decoded: the broker delivers in order."""
    return await wait_for(
        daemon,
        lambda samples: newest_hk_time(samples) >= FIRST_ERT + last_seq,
        what=f"envelope {last_seq} to be decoded",
    )
