"""The command line as a new user meets it: clear one-line errors, quiet pipes, one format."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import termios
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest

from groundstation.config import ArchiveConfig
from groundstation.ingest.archive import ArchiveRecord, ArchiveWriter
from tests.daemon_support import envelope
from tests.icd_packets import HELI_HK, HELI_NAV, hand_pack
from tests.test_cli_decode import STREAM

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


def write_archive(directory: Path, envelopes: int) -> None:
    """An archive as the daemon writes it: hand-packed HK envelopes, one record each."""
    with ArchiveWriter(ArchiveConfig(directory=directory, fsync="never")) as writer:
        writer.append(
            [
                ArchiveRecord("mars/tm/ingenuity", 1.7e9 + seq, envelope(seq), valid=True)
                for seq in range(envelopes)
            ]
        )


def test_replay_of_a_folder_without_segments_is_an_error(tmp_path: Path) -> None:
    """An empty folder, or the simulator's output folder: no segment found, exit 2."""
    empty = tmp_path / "empty"
    empty.mkdir()
    simulator_output = tmp_path / "sim"
    simulator_output.mkdir()
    (simulator_output / "flight3.bin").write_bytes(STREAM)
    for folder in (empty, simulator_output):
        run = groundstation("replay", str(folder))
        line = assert_one_line_error(run, "replay")
        assert f"{folder}: no archive segment" in line
        assert run.stdout == ""


def test_replay_of_a_file_says_it_is_not_a_directory(tmp_path: Path) -> None:
    """An existing file is not 'no such directory': it is not a directory."""
    path = tmp_path / "flight3.bin"
    path.write_bytes(STREAM)
    line = assert_one_line_error(groundstation("replay", str(path)), "replay")
    assert f"{path}: not a directory" in line


@pytest.mark.parametrize("command", ["decode", "replay"])
def test_a_reader_that_hangs_up_is_not_an_error(tmp_path: Path, command: str) -> None:
    """`… | head -1`: the reader closes the pipe after one line; exit 0, nothing on stderr."""
    write_archive(tmp_path / "archive", 3000)
    (tmp_path / "many.bin").write_bytes(STREAM * 20000)
    target = {"decode": ["many.bin", "--vehicle", "ingenuity"], "replay": ["archive"]}[command]
    with subprocess.Popen(
        [sys.executable, "-m", "groundstation", command, *target, "--log-level", "WARNING"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as process:
        assert process.stdout is not None
        assert process.stderr is not None
        assert json.loads(process.stdout.readline())["result"] == "ok"
        process.stdout.close()
        stderr = process.stderr.read().decode()
        assert process.wait(timeout=60) == 0, stderr
    assert stderr == ""


def test_decode_and_replay_print_one_record_shape_by_default(tmp_path: Path) -> None:
    """Same default (jsonl), same keys and values; replay adds vehicle and envelope_seq."""
    write_archive(tmp_path, 1)
    packets = envelope(0)
    document = msgpack.unpackb(packets)
    (tmp_path / "packets.bin").write_bytes(document["packets"])
    decoded = groundstation("decode", str(tmp_path / "packets.bin"), "--vehicle", "ingenuity")
    replayed = groundstation("replay", str(tmp_path))
    assert decoded.returncode == replayed.returncode == 0, decoded.stderr + replayed.stderr
    from_decode = [json.loads(line) for line in decoded.stdout.splitlines()]
    from_replay = [json.loads(line) for line in replayed.stdout.splitlines()]
    assert len(from_decode) == 3
    assert from_replay == [
        {"vehicle": "ingenuity", "envelope_seq": 0, **record} for record in from_decode
    ]
    assert decoded.stdout.splitlines()[0].startswith('{"apid":100,')  # compact, same writer
    assert replayed.stdout.splitlines()[0].startswith('{"vehicle":"ingenuity","envelope_seq":0,')
    for command in ("decode", "replay"):
        help_text = " ".join(groundstation(command, "--help").stdout.split())
        assert "jsonl (default)" in help_text


def test_jsonl_values_carry_the_precision_of_their_type(tmp_path: Path) -> None:
    """Hand-packed: an f32 -27.3 prints -27.3; raw 9 mV x 0.001 prints 0.009, -35 cA -0.35."""
    nav = HELI_NAV.pack(-27.3, *[0.0] * 8, 1000, 1, 0)
    hk = HELI_HK.pack(4, 0, 9, -35, 50, -60, 0, 0, 0, 0)
    assert repr(struct.unpack(">f", struct.pack(">f", -27.3))[0]) == "-27.299999237060547"
    assert repr(9 * 0.001) == "0.009000000000000001"
    assert repr(-35 * 0.01) == "-0.35000000000000003"
    path = tmp_path / "packets.bin"
    path.write_bytes(hand_pack(101, 0, nav) + hand_pack(100, 0, hk))
    run = groundstation("decode", str(path), "--vehicle", "ingenuity")
    assert run.returncode == 0, run.stderr
    nav_line, hk_line = run.stdout.splitlines()
    assert '"pos_x":-27.3,' in nav_line
    assert '"battery_voltage":0.009,' in hk_line
    assert '"battery_current":-0.35,' in hk_line


def test_decoding_with_the_wrong_vehicle_warns_and_names_the_right_one(tmp_path: Path) -> None:
    """Helicopter packets with --vehicle perseverance: a warning naming ingenuity, exit 0."""
    path = tmp_path / "heli.bin"
    path.write_bytes(STREAM)
    run = groundstation("decode", str(path), "--vehicle", "perseverance", "--format", "summary")
    assert run.returncode == 0
    assert "no packet matched the perseverance dictionary" in run.stderr
    assert "try --vehicle ingenuity" in run.stderr
    right = groundstation("decode", str(path), "--vehicle", "ingenuity", "--format", "summary")
    assert "no packet matched" not in right.stderr


def test_log_level_is_accepted_after_the_subcommand(tmp_path: Path) -> None:
    """`decode … --log-level ERROR` parses and takes effect: the warning above is gone."""
    path = tmp_path / "heli.bin"
    path.write_bytes(STREAM)
    for args in (
        ["decode", str(path), "--vehicle", "perseverance", "--log-level", "ERROR"],
        ["--log-level", "ERROR", "decode", str(path), "--vehicle", "perseverance"],
    ):
        run = groundstation(*args)
        assert run.returncode == 0, run.stderr
        assert run.stderr == ""
    assert "no packet matched" in groundstation("--log-level", "ERROR", "decode", str(path),
                                                "--vehicle", "perseverance", "--log-level",
                                                "WARNING").stderr  # fmt: skip


def test_replay_shows_progress_on_a_terminal_only(tmp_path: Path) -> None:
    """stderr a terminal (a pty): a tqdm bar with bytes, rate and time left; a pipe: nothing."""
    write_archive(tmp_path, 200)
    command = [sys.executable, "-m", "groundstation", "replay", str(tmp_path), "--format",
               "summary", "--log-level", "WARNING"]  # fmt: skip
    piped = subprocess.run(
        command, check=False, capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert piped.returncode == 0
    assert piped.stderr == ""
    assert json.loads(piped.stdout)["archive"]["records"] == 200
    shown = on_a_terminal(command)
    assert "replay: 100%" in shown
    assert "B/s" in shown
    assert "<00:00" in shown  # time left


def on_a_terminal(command: list[str]) -> str:
    """Run `command` with stderr on a pseudo-terminal; what it wrote there."""
    leader, follower = pty.openpty()
    # 24 rows x 100 columns, as a terminal window has (a fresh pty is 0 x 0).
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    with os.fdopen(leader, "rb", buffering=0) as terminal:
        process = subprocess.Popen(
            command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=follower, stdin=subprocess.DEVNULL
        )
        os.close(follower)
        chunks = []
        while True:
            try:
                chunk = terminal.read(4096)
            except OSError:  # EIO: the child closed its end
                break
            if not chunk:
                break
            chunks.append(chunk)
        assert process.wait(timeout=60) == 0
    return b"".join(chunks).decode(errors="replace")


def test_demo_says_where_it_archives_and_leaves_no_archive_behind(tmp_path: Path) -> None:
    """No --archive-dir: the log names a temporary directory, removed on exit; cwd untouched."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        mqtt_port = probe.getsockname()[1]
    command = [sys.executable, "-m", "groundstation", "demo", "--mqtt-port", str(mqtt_port),
               "--metrics-addr", "127.0.0.1:0", "--speed", "20"]  # fmt: skip
    with subprocess.Popen(
        command,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        assert process.stderr is not None
        lines = []
        for line in process.stderr:
            lines.append(line)
            if "demo: flight 3 in a loop" in line:
                break
        process.send_signal(signal.SIGINT)
        lines.extend(process.stderr)
        assert process.wait(timeout=60) == 0, "".join(lines)
    archive_lines = [line for line in lines if "demo: archive in " in line]
    assert len(archive_lines) == 1, "".join(lines)
    archive = Path(archive_lines[0].split("demo: archive in ")[1].split(" (")[0])
    assert archive.is_relative_to(tempfile.gettempdir())
    assert "removed on exit" in archive_lines[0]
    assert not archive.exists()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["flight3"], "packet/s"),
        (["stress", "--packets", "300000", "--rate", "1000000"], "100%"),
        (["stress", "--duration", "0.2", "--rate", "1000000"], "100%"),
    ],
)
def test_simulator_output_and_stress_show_progress_on_a_terminal_only(
    tmp_path: Path, args: list[str], expected: str
) -> None:
    """--output and stress: a tqdm bar on a terminal (rate; total and time left when known)."""
    simulator = "import sys; from groundstation.simulators.cli import main; sys.exit(main())"
    command = [sys.executable, "-c", simulator, *args, "--output", str(tmp_path / "out")]
    piped = subprocess.run(
        command, check=False, capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert piped.returncode == 0, piped.stderr
    assert piped.stderr == ""
    shown = on_a_terminal(command)
    assert f"groundstation-sim {args[0]}" in shown
    assert expected in shown
    assert "/s" in shown
