"""`groundstation report ARCHIVE_DIR --vehicle ingenuity --out DIR`: the post-flight report.

The archive goes through replay's path (`pipeline.replay_archive`: the daemon's decoder,
sequence accounting and telemetry), so the report's figures agree with the metrics; the
flights are cut by `groundstation.consumers.flights` and drawn by
`groundstation.consumers.flight_figure`.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from groundstation.cli.progress import archive_progress
from groundstation.cli.timespan import add_time_span
from groundstation.config import load_config
from groundstation.consumers.flights import (
    Flight,
    FlightLog,
    Telemetry,
    find_flights,
    flight_view,
    summary_document,
)
from groundstation.consumers.pipeline import Pipeline, replay_archive
from groundstation.consumers.telemetry import Telemetry as TelemetryState
from groundstation.core.definitions import load_dictionaries
from groundstation.core.envelope import DEFAULT_MAX_CLOCK_SKEW_S
from groundstation.errors import ConfigError
from groundstation.ingest.archive import ArchiveReader, list_segments

logger = logging.getLogger(__name__)

SUMMARY_FILE = "summary.json"
MISSING_MATPLOTLIB = (
    "the report's figures need matplotlib: pip install 'mars-groundstation[report]'"
    " (or pip install '.[report]' in a checkout)"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("archive_dir", type=Path, metavar="ARCHIVE_DIR")
    parser.add_argument(
        "--vehicle", default="ingenuity", help="the flying vehicle (default ingenuity)"
    )
    parser.add_argument(
        "--out", type=Path, required=True, metavar="DIR", help="where figures and summary go"
    )
    parser.add_argument(
        "--flight", type=int, metavar="N", help="only flight N (numbered 1.. in the archive)"
    )
    add_time_span(
        parser, after="flights taking off at or after TIME", before="flights taking off before TIME"
    )
    parser.add_argument(
        "--format",
        choices=["png", "pdf"],
        default="png",
        help="figure file format (default png)",
    )
    parser.add_argument(
        "--config", type=Path, metavar="FILE", help="the daemon's TOML file (ingest limits)"
    )


def main(args: argparse.Namespace) -> int:
    if not args.archive_dir.is_dir():
        what = "not a directory" if args.archive_dir.exists() else "no such archive directory"
        raise ConfigError(f"{args.archive_dir}: {what}")
    if not list_segments(args.archive_dir):
        raise ConfigError(f"{args.archive_dir}: no archive segment (segment-*.gsa) found")
    if args.flight is not None and args.flight < 1:
        raise ConfigError(f"--flight {args.flight}: flights are numbered from 1")
    try:
        importlib.import_module("matplotlib")
    except ImportError:
        raise ConfigError(MISSING_MATPLOTLIB) from None
    from groundstation.consumers import flight_figure  # noqa: PLC0415 - needs the optional matplotlib

    config = load_config(args.config, env=os.environ)
    telemetry = read_flights(
        args.archive_dir,
        vehicle=args.vehicle,
        max_payload_bytes=config.ingest.max_payload_bytes,
        max_clock_skew_s=config.ingest.max_clock_skew_s,
        batch_size=config.ingest.batch_max_envelopes,
        progress=sys.stderr.isatty(),
    )
    flights = select_flights(
        find_flights(telemetry),
        number=args.flight,
        time_from=args.time_from,
        time_to=args.time_to,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    entries: list[dict[str, Any]] = []
    for flight in flights:
        view = flight_view(telemetry, flight)
        figure = flight_figure.draw_flight(view, vehicle=args.vehicle)
        name = f"{args.vehicle}-flight-{flight.number:02d}.{args.format}"
        flight_figure.save_figure(figure, args.out / name, fmt=args.format)
        entries.append({**view.summary, "figure": name})
        logger.info("flight %d: %s", flight.number, args.out / name)
    document = summary_document(args.vehicle, entries)
    summary_path = args.out / SUMMARY_FILE
    summary_path.write_text(json.dumps(document, indent=2, allow_nan=False) + "\n")
    logger.info("%d flights: %s", len(entries), summary_path)
    return 0


def select_flights(
    flights: Iterable[Flight],
    *,
    number: int | None = None,
    time_from: float | None = None,
    time_to: float | None = None,
) -> list[Flight]:
    """Flight `number`, and those taking off in [time_from, time_to)."""
    return [
        flight
        for flight in flights
        if (number is None or flight.number == number)
        and (time_from is None or flight.takeoff_time >= time_from)
        and (time_to is None or flight.takeoff_time < time_to)
    ]


def read_flights(
    directory: Path,
    *,
    vehicle: str,
    max_payload_bytes: int,
    batch_size: int,
    max_clock_skew_s: float = DEFAULT_MAX_CLOCK_SKEW_S,
    progress: bool = False,
) -> Telemetry:
    """Replay the archive and keep the vehicle's (and its rover's) series."""
    dictionaries = load_dictionaries()
    log = FlightLog(dictionaries, vehicle=vehicle)
    pipeline = Pipeline(
        dictionaries, telemetry=TelemetryState(dictionaries), max_clock_skew_s=max_clock_skew_s
    )
    reader = ArchiveReader(directory)
    records = reader.records()
    if progress:
        total = sum(path.stat().st_size for path in list_segments(directory))
        records = archive_progress(records, total_bytes=total, description="report", enabled=True)
    for decoded in replay_archive(
        records,
        pipeline,
        max_payload_bytes=max_payload_bytes,
        batch_size=batch_size,
        max_clock_skew_s=max_clock_skew_s,
    ):
        log.add(decoded.vehicle, decoded.result)
    return log.finish()
