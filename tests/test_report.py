"""`groundstation report`: flights found in simulator archives, their summary and figures."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import pty
import select
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from groundstation.simulators.delivery import Delivery
from groundstation.simulators.faults import parse_faults
from groundstation.simulators.run import Simulation, SimulationOptions
from matplotlib.image import imread

from groundstation import cli
from groundstation.cli.report import read_flights, select_flights
from groundstation.cli.timespan import parse_time
from groundstation.config import ArchiveConfig
from groundstation.consumers.flight_figure import draw_flight
from groundstation.consumers.flights import find_flights, flight_summary, flight_view, lost_in
from groundstation.consumers.pipeline import Pipeline, replay_archive
from groundstation.consumers.telemetry import Telemetry
from groundstation.core.decoder import RESULTS
from groundstation.core.definitions import load_dictionaries
from groundstation.core.envelope import Envelope, check_payload
from groundstation.ingest.archive import ArchiveReader, ArchiveRecord, ArchiveWriter

T0 = 1_619_350_000.0  # 2021-04-25, the morning of flight 3
FAULTS = (
    "flip_bits=0.01,reorder=0.05,drop_packet=0.01,duplicate_packet=0.02,"
    "drop_envelope=0.01,truncate=0.01,garbage=0.01,unknown_apid=0.01"
)
REPO = Path(__file__).resolve().parents[1]
DICTIONARIES = load_dictionaries()
# Drawn once per figure: the time axes (7 series and the events strip), the ground track,
# and the right-hand axes of battery (state of charge) and link (quality).
PANELS = [
    "Ground track (local frame)",
    "Altitude",
    "Ground speed",
    "Battery",
    "Rotor speed",
    "Temperatures",
    "Link",
    "Vibration RMS",
    "Modes and event reports",
]
AXES_PER_FIGURE = len(PANELS) + 2


def write_archive(
    directory: Path, options: SimulationOptions, keep: Callable[[Delivery], bool] = lambda _: True
) -> Path:
    """The simulator's deliveries archived as the daemon's sink would, received 1 s after ert."""
    names = frozenset(DICTIONARIES)
    with ArchiveWriter(ArchiveConfig(directory=directory, fsync="never")) as writer:
        records = []
        for delivery in Simulation(options, start_time=T0).deliveries():
            if delivery.payload is None or not keep(delivery):
                continue
            received_at = delivery.ert + 1.0
            arrival = check_payload(
                delivery.topic,
                delivery.payload,
                received_at,
                max_payload_bytes=1 << 24,
                vehicles=names,
            )
            valid = isinstance(arrival.envelope, Envelope)
            records.append(ArchiveRecord(delivery.topic, received_at, delivery.payload, valid))
        writer.append(records)
    return directory


def groundstation(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "groundstation", *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
        timeout=120,
    )


@dataclass(frozen=True)
class Report:
    archive: Path
    out: Path
    summary: dict[str, Any]
    stderr: str


def in_process(argv: list[str]) -> tuple[int, str]:
    """`groundstation ARGV` in this process (no interpreter start-up): exit status, stderr.

    The CLI installs its log handler on the root logger; it is taken off again after."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            status = cli.main(argv)
    finally:
        for handler in root.handlers:
            if handler not in handlers:
                root.removeHandler(handler)
        root.setLevel(level)
    return status, stderr.getvalue()


def run_report(archive: Path, out: Path, *extra: str) -> Report:
    status, stderr = in_process(
        ["report", str(archive), "--vehicle", "ingenuity", "--out", str(out), *extra]
    )
    assert status == 0, stderr
    return Report(archive, out, json.loads((out / "summary.json").read_text()), stderr)


def metrics_after_replay(archive: Path) -> Mapping[str, dict[tuple[str, ...], float]]:
    """Every family's samples after the daemon's replay of the archive, by family name."""
    pipeline = Pipeline(DICTIONARIES, telemetry=Telemetry(DICTIONARIES))
    for _ in replay_archive(
        ArchiveReader(archive).records(), pipeline, max_payload_bytes=1 << 24, batch_size=256
    ):
        pass
    return {
        family.family.name: dict(family.samples)
        for family in pipeline.telemetry.snapshot().families
    }


FLIGHT3_RUNS: dict[str, dict[str, Any]] = {
    "live": {},
    "live-faults": {"faults": parse_faults(FAULTS), "seed": 7},
    "store-and-forward": {"store_and_forward": True, "light_time_s": 900.0},
    "store-and-forward-faults": {
        "store_and_forward": True,
        "light_time_s": 900.0,
        "faults": parse_faults(FAULTS),
        "seed": 11,
    },
}


@pytest.fixture(scope="module", params=list(FLIGHT3_RUNS))
def flight3(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Report:
    base = tmp_path_factory.mktemp(f"flight3-{request.param}")
    options = SimulationOptions(profile="flight3", output_dir=base, **FLIGHT3_RUNS[request.param])
    archive = write_archive(base / "archive", options)
    return run_report(archive, base / "report")


def test_flight3_summary_matches_the_reference_flight(flight3: Report) -> None:
    """ICD section 1: 5 m up, about 100 m of path in about 80 s, 85 m from the rover."""
    assert flight3.summary["vehicle"] == "ingenuity"
    (flight,) = flight3.summary["flights"]
    assert flight["max_altitude_m"] == pytest.approx(5.0, abs=0.2)
    assert flight["path_m"] == pytest.approx(100.0, abs=3.0)
    assert flight["max_range_to_rover_m"] == pytest.approx(85.0, abs=3.0)
    assert flight["duration_s"] == pytest.approx(80.0, abs=10.0)
    assert flight["duration_s"] == flight["landing_time"] - flight["takeoff_time"]
    assert T0 < flight["spinup_time"] < flight["takeoff_time"] < flight["landing_time"]
    assert flight["max_ground_speed_mps"] == pytest.approx(2.0, abs=0.1)
    assert 0 < flight["battery_soc_end"] < flight["battery_soc_start"] <= 100
    assert flight["packets"]["ok"] > 80 * 50  # IMU alone sends 50 packets/s
    assert set(flight["packets"]) == set(RESULTS)  # the gs_packets_total results
    assert {"ok", "crc_error", "malformed", "unknown_apid", "duplicate"} <= set(flight["packets"])


def test_flight3_figures_agree_with_the_metrics(flight3: Report) -> None:
    """path_m is gs_flight_distance_meters at landing (the archive ends on the ground, where
    the path no longer grows); losses and bad packets are the metrics' counts, in part."""
    (flight,) = flight3.summary["flights"]
    metrics = metrics_after_replay(flight3.archive)
    assert flight["path_m"] == pytest.approx(
        metrics["gs_flight_distance_meters"][("ingenuity",)], abs=1e-6
    )
    counted = metrics["gs_packets_total"]
    for result, count in flight["packets"].items():
        total = sum(v for k, v in counted.items() if k[0] == "ingenuity" and k[2] == result)
        assert count <= total
    lost = sum(v for k, v in metrics["gs_packets_lost_total"].items() if k[0] == "ingenuity")
    assert flight["lost"] <= lost
    if "faults" in flight3.archive.parent.name:
        assert flight["lost"] > 0
        assert flight["packets"]["crc_error"] > 0
        assert flight["packets"]["duplicate"] > 0
    else:
        assert flight["lost"] == 0
        assert flight["packets"]["ok"] == sum(flight["packets"].values())


def test_flight3_png_is_an_image_of_one_page(flight3: Report) -> None:
    (flight,) = flight3.summary["flights"]
    assert flight["figure"] == "ingenuity-flight-01.png"
    image = imread(flight3.out / flight["figure"])
    height, width = image.shape[:2]
    assert (width, height) == (1815, 1287)  # 16.5 x 11.7 in at 110 dpi
    assert float(np.std(image[..., :3])) > 0.05  # something is drawn, not a blank page


def test_progress_bar_stays_silent_off_a_terminal(flight3: Report) -> None:
    assert "B/s" not in flight3.stderr
    assert "%|" not in flight3.stderr


@pytest.fixture(scope="module")
def flight3_telemetry(tmp_path_factory: pytest.TempPathFactory) -> Any:
    base = tmp_path_factory.mktemp("flight3-telemetry")
    archive = write_archive(
        base / "archive", SimulationOptions(profile="flight3", output_dir=base, seed=1)
    )
    return read_flights(archive, vehicle="ingenuity", max_payload_bytes=1 << 24, batch_size=64)


def test_figure_has_every_panel(flight3_telemetry: Any) -> None:
    """The drawing function's figure: one axes per panel (titled), two right-hand axes."""
    (flight,) = find_flights(flight3_telemetry)
    figure = draw_flight(flight_view(flight3_telemetry, flight), vehicle="ingenuity")
    assert len(figure.axes) == AXES_PER_FIGURE
    titles = [axes.get_title(loc="left") for axes in figure.axes if axes.get_title(loc="left")]
    assert sorted(titles) == sorted(PANELS)
    assert "takeoff 2021-04-25" in figure.get_suptitle()
    assert "path 100.0 m" in figure.get_suptitle()
    # Time on the axes: seconds from takeoff, so the flight spans about 0 .. 83 s.
    altitude = next(a for a in figure.axes if a.get_title(loc="left") == "Altitude")
    low, high = altitude.get_xlim()
    assert low < 0
    assert 80 < high < 120


def test_figure_track_marks_rover_and_farthest_point(flight3_telemetry: Any) -> None:
    (flight,) = find_flights(flight3_telemetry)
    view = flight_view(flight3_telemetry, flight)
    assert view.rover_position is not None
    assert view.farthest is not None
    x, y, distance = view.farthest
    assert distance == pytest.approx(85.0, abs=3.0)
    assert np.hypot(x - view.rover_position[0], y - view.rover_position[1]) <= distance
    modes = [event.text for event in view.events if event.kind == "mode"]
    assert modes[-3:] == ["SPINUP", "FLIGHT", "LANDED"]
    assert any(event.kind == "INFO" for event in view.events)


def test_progress_bar_on_request(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    archive = write_archive(
        tmp_path / "archive", SimulationOptions(profile="flight1", output_dir=tmp_path)
    )
    telemetry = read_flights(
        archive, vehicle="ingenuity", max_payload_bytes=1 << 24, batch_size=64, progress=True
    )
    assert len(find_flights(telemetry)) == 1
    err = capsys.readouterr().err
    assert "report:" in err
    assert "B/s" in err  # bytes of the archive, with a rate


@pytest.mark.parametrize(
    ("profile", "path_m", "altitude_m", "duration_s"),
    [("flight4", 266.0, 5.0, 117.0), ("flight5", 129.0, 10.0, 110.0)],
)
def test_later_flights_give_their_own_figures(
    tmp_path: Path, profile: str, path_m: float, altitude_m: float, duration_s: float
) -> None:
    """ICD section 1: flight 4, 133 m downrange and back (266 m, 117 s); flight 5, 129 m one
    way, up to 10 m (its duration is the simulator profile's)."""
    archive = write_archive(
        tmp_path / "archive", SimulationOptions(profile=profile, output_dir=tmp_path)
    )
    report = run_report(archive, tmp_path / "report", "--format", "pdf")
    (flight,) = report.summary["flights"]
    assert flight["path_m"] == pytest.approx(path_m, abs=3.0)
    assert flight["max_altitude_m"] == pytest.approx(altitude_m, abs=0.3)
    assert flight["duration_s"] == pytest.approx(duration_s, abs=10.0)
    pdf = (report.out / flight["figure"]).read_bytes()
    assert flight["figure"].endswith(".pdf")
    assert pdf.startswith(b"%PDF")
    assert pdf.count(b"/Type /Page\n") + pdf.count(b"/Type /Page ") == 1


@pytest.fixture(scope="module")
def two_flights(tmp_path_factory: pytest.TempPathFactory) -> Report:
    base = tmp_path_factory.mktemp("two-flights")
    archive = write_archive(
        base / "archive", SimulationOptions(profile="flight3", output_dir=base, repeat=2)
    )
    return run_report(archive, base / "report")


def test_two_flights_give_two_entries(two_flights: Report) -> None:
    first, second = two_flights.summary["flights"]
    assert [first["number"], second["number"]] == [1, 2]
    assert first["landing_time"] < second["spinup_time"]
    for flight in (first, second):
        assert flight["path_m"] == pytest.approx(100.0, abs=3.0)
        assert (two_flights.out / flight["figure"]).is_file()
    assert sorted(p.name for p in two_flights.out.iterdir()) == [
        "ingenuity-flight-01.png",
        "ingenuity-flight-02.png",
        "summary.json",
    ]


def test_flight_and_time_span_select(two_flights: Report, tmp_path: Path) -> None:
    everything = two_flights.summary["flights"]
    second_takeoff = everything[1]["takeoff_time"]
    only_second = run_report(two_flights.archive, tmp_path / "n", "--flight", "2")
    assert only_second.summary["flights"] == everything[1:]
    iso = np.datetime_as_string(np.datetime64(int(second_takeoff), "s")) + "Z"
    span = run_report(
        two_flights.archive, tmp_path / "span", "--from", iso, "--to", str(second_takeoff + 1)
    )
    assert [f["number"] for f in span.summary["flights"]] == [2]


def test_select_flights_by_number_and_span(flight3_telemetry: Any) -> None:
    (flight,) = find_flights(flight3_telemetry)
    assert select_flights([flight], number=2) == []
    assert select_flights([flight], time_from=flight.takeoff_time) == [flight]
    assert select_flights([flight], time_to=flight.takeoff_time) == []


def test_parse_time_takes_iso_8601_and_unix_seconds() -> None:
    assert parse_time("1619350000") == 1619350000.0
    assert parse_time("1619350000.5") == 1619350000.5
    assert parse_time("2021-04-25T11:26:40Z") == 1619350000.0
    assert parse_time("2021-04-25T11:26:40") == 1619350000.0  # no zone: UTC
    assert parse_time("2021-04-25T13:26:40+02:00") == 1619350000.0


def test_an_archive_without_a_flight_gives_an_empty_list(tmp_path: Path) -> None:
    """The first 20 s of flight 3 (IDLE, PREFLIGHT) hold no takeoff: exit 0, no figure."""
    archive = write_archive(
        tmp_path / "archive",
        SimulationOptions(profile="flight3", output_dir=tmp_path),
        keep=lambda delivery: delivery.send_at_s < 20.0,
    )
    report = run_report(archive, tmp_path / "report")
    assert report.summary == {"vehicle": "ingenuity", "flights": []}
    assert sorted(p.name for p in report.out.iterdir()) == ["summary.json"]


def test_unfinished_flight_has_no_landing(flight3_telemetry: Any) -> None:
    """An archive cut in mid-air: the flight is reported up to its newest HK packet."""
    (flight,) = find_flights(flight3_telemetry)
    hk = flight3_telemetry.series["HELI_HK"]
    cut = flight.takeoff_time + 30.0
    kept = replace(
        flight3_telemetry,
        series={
            name: series.between(-np.inf, cut) for name, series in flight3_telemetry.series.items()
        },
    )
    (unfinished,) = find_flights(kept)
    assert unfinished.landing_time is None
    assert unfinished.end_time == float(hk.between(-np.inf, cut).time[-1])
    summary = flight_summary(kept, unfinished)
    assert summary["landing_time"] is None
    assert summary["duration_s"] == pytest.approx(30.0, abs=1.0)


def test_lost_counts_gaps_but_not_restarts() -> None:
    """ICD section 6: skipped counts are lost; a count going back or jumping to 0 is a
    restart and loses nothing; counts wrap at 16384."""
    counts = np.array([5, 6, 9, 16383, 0, 3, 0, 1], dtype=np.uint16)
    # 6 -> 9 loses 2; 9 -> 16383 goes back (restart); 16383 -> 0 wraps; 0 -> 3 loses 2;
    # 3 -> 0 is a restart.
    assert lost_in(counts) == 4


def test_missing_archive_exits_2_with_one_line(tmp_path: Path) -> None:
    run = groundstation("report", str(tmp_path / "nothing"), "--out", str(tmp_path / "out"))
    assert run.returncode == 2
    assert run.stderr.strip().count("\n") == 0
    assert "no such archive directory" in run.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", ["file", "empty"])
def test_not_an_archive_exits_2_with_one_line(tmp_path: Path, kind: str) -> None:
    target = tmp_path / "target"
    if kind == "file":
        target.write_text("not an archive")
    else:
        target.mkdir()
    run = groundstation("report", str(target), "--out", str(tmp_path / "out"))
    assert run.returncode == 2
    assert run.stderr.strip().count("\n") == 0
    assert ("not a directory" if kind == "file" else "no archive segment") in run.stderr


def test_missing_matplotlib_is_one_line_and_exit_2(
    two_flights: Report, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now fails
    status, stderr = in_process(["report", str(two_flights.archive), "--out", str(tmp_path)])
    assert status == 2
    assert stderr.strip().count("\n") == 0
    assert "pip install 'mars-groundstation[report]'" in stderr


def test_a_vehicle_that_does_not_fly(two_flights: Report, tmp_path: Path) -> None:
    run = groundstation(
        "report", str(two_flights.archive), "--vehicle", "perseverance", "--out", str(tmp_path)
    )
    assert run.returncode == 2
    assert "does not fly" in run.stderr


def test_progress_bar_on_a_terminal(two_flights: Report, tmp_path: Path) -> None:
    """With stderr on a terminal, the command draws a bar over the archive's bytes."""
    leader, follower = pty.openpty()
    command = [sys.executable, "-m", "groundstation", "report", str(two_flights.archive),
               "--out", str(tmp_path / "out"), "--flight", "1"]  # fmt: skip
    with subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=follower, cwd=REPO) as child:
        os.close(follower)
        written = b""
        while True:
            if not select.select([leader], [], [], 1.0)[0]:
                if child.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the child's end is closed and everything was read
                break
            if not chunk:
                break
            written += chunk
        os.close(leader)
        assert child.wait(timeout=120) == 0, written
    assert b"%|" in written  # the bar itself, not only the log lines
    assert b"B/s" in written
