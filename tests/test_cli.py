"""The command line as a new user meets it: clear one-line errors, quiet pipes, one format."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[1]


def groundstation(
    *args: str, stdin: bytes = b"", cwd: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    """Run the CLI in a subprocess as an operator would; text output."""
    return subprocess.run(
        [sys.executable, "-m", "groundstation", *args],
        input=stdin.decode(),
        capture_output=True,
        text=True,
        check=False,
        cwd=cwd,
        timeout=60,
    )


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port some other program is listening on."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield int(listener.getsockname()[1])


def assert_one_line_error(run: subprocess.CompletedProcess[str], command: str) -> str:
    """Exit 2, no traceback, the last stderr line is the error; return that line."""
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr
    last = run.stderr.splitlines()[-1]
    assert last.startswith(f"groundstation {command}: ")
    return last


@pytest.mark.parametrize(
    ("args", "service", "option"),
    [
        (["demo", "--mqtt-port", "{port}", "--metrics-addr", "127.0.0.1:0"], "MQTT", "--mqtt-port"),
        (["demo", "--mqtt-port", "0", "--metrics-addr", "127.0.0.1:{port}"], "metrics",
         "--metrics-addr"),
        (["run", "--metrics-addr", "127.0.0.1:{port}"], "metrics", "--metrics-addr"),
        (["run", "--metrics-addr", "127.0.0.1:0", "--config", "{config}"], "MQTT", "[broker] port"),
    ],
)  # fmt: skip
def test_port_in_use_is_one_line_naming_address_and_option(
    tmp_path: Path, taken_port: int, args: list[str], service: str, option: str
) -> None:
    """Another program holds the port: one line with the address and the option, exit 2."""
    config = tmp_path / "groundstation.toml"
    config.write_text(f"[broker]\nport = {taken_port}\n")
    command, *argv = [arg.format(port=taken_port, config=config) for arg in args]
    run = groundstation(command, *argv, "--archive-dir", str(tmp_path / "archive"))
    line = assert_one_line_error(run, command)
    assert f"{service} address 127.0.0.1:{taken_port} is already in use" in line
    assert option in line
