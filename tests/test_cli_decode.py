"""`groundstation decode` through `python -m groundstation`, as an operator runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.icd_packets import HELI_HK, HELI_NAV, hand_pack

pytestmark = [pytest.mark.integration]

NAV = HELI_NAV.pack(1.5, *[0.0] * 8, 1000, 1, 0)
HK = HELI_HK.pack(4, 0, 7900, 0, 50, -60, 0, 0, 0, 0)
STREAM = (
    hand_pack(101, 0, NAV) + hand_pack(100, 0, HK) + hand_pack(101, 2, NAV, coarse=700_000_002)
) + b"\x08\x65"  # NAV 0 and 2 two seconds apart: count 1 lost


def groundstation(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    """Run the CLI in a subprocess, from the repository root."""
    return subprocess.run(
        [sys.executable, "-m", "groundstation", *args],
        input=stdin,
        capture_output=True,
        check=False,
        cwd=Path(__file__).resolve().parents[1],
        timeout=60,
    )


def test_jsonl_from_a_file(tmp_path: Path) -> None:
    """Default output: one JSON object per line, in input order, the tail last; exit 0."""
    path = tmp_path / "flight.bin"
    path.write_bytes(STREAM)
    run = groundstation("decode", str(path), "--vehicle", "ingenuity")
    assert run.returncode == 0, run.stderr
    lines = [json.loads(line) for line in run.stdout.decode().splitlines()]
    assert [line["result"] for line in lines] == ["ok", "ok", "ok", "malformed"]
    assert lines[0]["fields"]["pos_x"] == 1.5
    assert lines[0]["fields"]["nav_state"] == "GROUND"
    assert lines[1]["name"] == "HELI_HK"
    assert lines[1]["fields"]["mode"] == "LANDED"
    assert lines[3] == {"result": "malformed", "offset": len(STREAM) - 2}


def test_summary_from_stdin() -> None:
    """PATH - reads stdin; the summary counts every result and the net loss per APID."""
    run = groundstation(
        "decode", "-", "--vehicle", "ingenuity", "--format", "summary", stdin=STREAM
    )
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    assert summary["packets"] == 4
    assert summary["results"] == {
        "ok": 3, "crc_error": 0, "malformed": 1, "unknown_apid": 0, "duplicate": 0,
        "clock_error": 0,  # a bare packet file has no ert (ICD section 5)
    }  # fmt: skip
    assert summary["lost"] == {"100": 0, "101": 1, "102": 0, "103": 0}
    assert summary["packets_per_second"] > 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["/nonexistent/flight.bin", "--vehicle", "ingenuity"], "/nonexistent/flight.bin: No such"),
        (["-", "--vehicle", "mars"], "unknown vehicle 'mars' (known: ingenuity, perseverance)"),
    ],
)
def test_errors_are_one_line_and_exit_2(args: list[str], message: str) -> None:
    """A missing file or an unknown vehicle: exit 2, one line on stderr, nothing on stdout."""
    run = groundstation("decode", *args)
    assert run.returncode == 2
    assert run.stdout == b""
    lines = run.stderr.decode().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("groundstation decode: ")
    assert message in lines[0]


def test_reader_hanging_up_early(tmp_path: Path) -> None:
    """`decode ... | head -1` exits quietly with 0 when the reader closes the pipe."""
    path = tmp_path / "many.bin"
    path.write_bytes(b"".join(hand_pack(101, seq, NAV) for seq in range(5000)))
    decode = subprocess.Popen(
        [sys.executable, "-m", "groundstation", "decode", str(path), "--vehicle", "ingenuity"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert decode.stdout is not None
    assert json.loads(decode.stdout.readline())["seq"] == 0
    decode.stdout.close()
    _, stderr = decode.communicate(timeout=60)
    assert decode.returncode == 0
    assert stderr == b""
