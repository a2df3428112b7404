"""Real services for integration tests: Mosquitto (and friends) on free loopback ports.

A missing service is a test failure, never a skip (DEVELOPERS.md: in CI a skipped
integration test is a failure). `scripts/test.sh` installs them from Debian's packages.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

LOOPBACK = "127.0.0.1"
STARTUP_TIMEOUT_S = 10.0


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        port: int = probe.getsockname()[1]
        return port


def find_binary(name: str) -> str:
    """Path of a service binary; fails the test (not skips) when it is not installed."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin")
    if path is None:
        pytest.fail(f"{name} is not installed: run the README's test command (scripts/test.sh)")
    return path


def wait_for_port(port: int, *, process: subprocess.Popen[bytes], what: str) -> None:
    """Block until something accepts on loopback:port, or fail with the process's output."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = process.stdout.read().decode(errors="replace") if process.stdout else ""
            pytest.fail(f"{what} exited with {process.returncode} on start:\n{output}")
        with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), 0.2):
            return
        time.sleep(0.05)
    pytest.fail(f"{what} did not listen on {LOOPBACK}:{port} within {STARTUP_TIMEOUT_S} s")


@contextlib.contextmanager
def small_file_system(path: Path, *, size_bytes: int) -> Iterator[Path]:
    """A tmpfs of `size_bytes` mounted at `path` (a real file system that fills up: writes
    there fail with ENOSPC), unmounted on exit. Needs root, as the test command runs."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "groundstation-test", str(path)],
        check=False,
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs at {path} (run the tests as root): {mounted.stderr}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "--lazy", str(path)], check=True)


def fill_file_system(path: Path, *, leave_bytes: int) -> Path:
    """A file in `path` taking all but about `leave_bytes` of its file system; returns it."""
    filesystem = os.statvfs(path)
    filler = path / "filler"
    size = max(0, filesystem.f_bavail * filesystem.f_frsize - leave_bytes)
    with filler.open("wb") as file:
        file.write(b"\0" * size)
    return filler


@dataclass
class Mosquitto:
    """One Mosquitto broker on a free loopback port, with a config the test may extend."""

    workdir: Path
    extra_config: str = ""
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{LOOPBACK}:{self.port}"

    def config_text(self) -> str:
        # Queue limits as in deploy/mosquitto/mosquitto.conf: an offline persistent session
        # keeps a whole stored-flight playback instead of silently dropping past 1000
        # messages (explicit large limits: 0 = "unlimited" has been buggy across 2.0.x).
        return (
            f"listener {self.port} {LOOPBACK}\n"
            "allow_anonymous true\n"
            "persistence true\n"
            f"persistence_location {self.workdir}/\n"
            "max_queued_messages 1000000\n"
            "max_queued_bytes 1073741824\n"
            "max_inflight_messages 100\n"
            # Run as root, Mosquitto drops to user `mosquitto`, which cannot write the
            # persistence file into a root-owned test directory: stay the current user.
            f"user {getpass.getuser()}\n"
            "log_dest stdout\n"
            "log_type error\n"
            "log_type warning\n" + self.extra_config
        )

    def start(self) -> None:
        """Start (or restart, keeping persistence and port) the broker and wait for it."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "mosquitto.conf"
        config.write_text(self.config_text())
        self.process = subprocess.Popen(
            [find_binary("mosquitto"), "-c", str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        wait_for_port(self.port, process=self.process, what="mosquitto")

    def stop(self, *, kill: bool = False) -> None:
        """SIGTERM (saves persistence) or SIGKILL (a crash) the broker and reap it."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.process.stdout:
            self.process.stdout.close()


@contextlib.contextmanager
def running_mosquitto(workdir: Path, *, extra_config: str = "") -> Iterator[Mosquitto]:
    """A started broker, stopped on exit whatever happens."""
    broker = Mosquitto(workdir=workdir, extra_config=extra_config)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@dataclass
class VictoriaMetrics:
    """Debian's single-node VictoriaMetrics on a free loopback port, with a temporary store.

    `-retentionPeriod=100y` keeps samples at old spacecraft times (VictoriaMetrics drops
    samples outside its retention, default one month, silently). `-search.latencyOffset=0s`
    and `-search.disableCache` make a sample queryable as soon as it is flushed: by default
    queries hide the newest 30 s and cache answers. `-dedup.minScrapeInterval=1ms` keeps
    one sample per series and millisecond, so an archive written twice stores its samples
    once (VictoriaMetrics stores a sample sent twice twice otherwise). `flush()` forces
    the flush of samples still in memory (otherwise about a second)."""

    workdir: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def write_url(self) -> str:
        """The remote-write 1.0 receiver (Prometheus's path)."""
        return f"{self.url}/api/v1/write"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                find_binary("victoria-metrics"),
                f"-httpListenAddr={LOOPBACK}:{self.port}",
                f"-storageDataPath={self.workdir / 'data'}",
                "-retentionPeriod=100y",
                "-search.latencyOffset=0s",
                "-search.disableCache",
                "-dedup.minScrapeInterval=1ms",
                "-loggerLevel=WARN",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        wait_for_port(self.port, process=self.process, what="victoria-metrics")

    def flush(self) -> None:
        """Make every accepted sample searchable now."""
        with urllib.request.urlopen(f"{self.url}/internal/force_flush", timeout=10) as answer:
            assert answer.status == 200

    def api(self, path: str, **params: str) -> dict[str, Any]:
        """GET /api/v1/<path> after a flush; the JSON answer, errors included."""
        self.flush()
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                answer: dict[str, Any] = json.load(response)
        except urllib.error.HTTPError as error:
            answer = json.load(error)
        return answer

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.process.stdout:
            self.process.stdout.close()


@contextlib.contextmanager
def running_victoria_metrics(workdir: Path) -> Iterator[VictoriaMetrics]:
    """A started VictoriaMetrics, stopped on exit whatever happens."""
    server = VictoriaMetrics(workdir=workdir)
    server.start()
    try:
        yield server
    finally:
        server.stop()
