"""`groundstation replay ARCHIVE_DIR`: re-decode a raw archive in arrival order.

The archive goes through the same `Pipeline` as live ingest, in arrival order, so the
counts equal the live ones by construction (packets of a redelivered envelope come out as
`duplicate` twice over: live and replay both see the second copy).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TextIO

from groundstation.cli.output import add_format_argument, quiet_broken_pipe, write_json, write_jsonl
from groundstation.cli.progress import archive_progress
from groundstation.cli.run import add_history_argument
from groundstation.config import Config, Overrides, load_config
from groundstation.consumers.history.writer import HistoryWriter
from groundstation.consumers.pipeline import Decoded, Pipeline, replay_archive
from groundstation.consumers.telemetry import Telemetry, TelemetrySnapshot
from groundstation.core import records
from groundstation.core.definitions import VehicleDictionary, load_dictionaries
from groundstation.core.envelope import DEFAULT_MAX_CLOCK_SKEW_S
from groundstation.errors import ConfigError
from groundstation.ingest.archive import ArchiveReader, ArchiveRecord, list_segments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("archive_dir", type=Path, metavar="ARCHIVE_DIR")
    add_format_argument(
        parser,
        summary="the archive's read statistics and the counters, as one JSON object;"
        " jsonl records add vehicle and envelope_seq",
    )
    parser.add_argument(
        "--config", type=Path, metavar="FILE", help="the daemon's TOML file (ingest limits)"
    )
    add_history_argument(parser)


def main(args: argparse.Namespace) -> int:
    segments = archive_segments(args.archive_dir)
    config = load_config(
        args.config, env=os.environ, overrides=Overrides(history_url=args.history_url)
    )
    with quiet_broken_pipe(sys.stdout):
        summary = replay(
            args.archive_dir,
            max_payload_bytes=config.ingest.max_payload_bytes,
            max_clock_skew_s=config.ingest.max_clock_skew_s,
            batch_size=config.ingest.batch_max_envelopes,
            jsonl=sys.stdout if args.format == "jsonl" else None,
            progress_total_bytes=sum(path.stat().st_size for path in segments),
        )
        if config.history.url is not None:
            summary["history"] = write_history(args.archive_dir, config)
        if args.format == "summary":
            write_json(sys.stdout, summary)
    return 0


def write_history(directory: Path, config: Config) -> dict[str, int]:
    """The history writer over the archive, from its position to the end (docs/history.md)."""
    writer = HistoryWriter(
        config.history,
        archive_dir=directory,
        dictionaries=load_dictionaries(),
        max_payload_bytes=config.ingest.max_payload_bytes,
        batch_max_envelopes=config.ingest.batch_max_envelopes,
        batch_max_bytes=config.ingest.batch_max_bytes,
        max_clock_skew_s=config.ingest.max_clock_skew_s,
    )
    writer.catch_up()
    return dict(writer.status.samples.items())


def archive_segments(directory: Path) -> list[Path]:
    """The archive's segments; a missing, non-directory or segment-less path is an error."""
    if not directory.exists():
        raise ConfigError(f"{directory}: no such archive directory")
    if not directory.is_dir():
        raise ConfigError(f"{directory}: not a directory (replay reads an archive directory)")
    segments = list_segments(directory)
    if not segments:
        raise ConfigError(
            f"{directory}: no archive segment (segment-NNNNNNNNNN.gsa) found;"
            " is this the daemon's --archive-dir?"
        )
    return segments


def replay(
    directory: Path,
    *,
    max_payload_bytes: int,
    batch_size: int,
    max_clock_skew_s: float = DEFAULT_MAX_CLOCK_SKEW_S,
    jsonl: TextIO | None = None,
    progress_total_bytes: int | None = None,
) -> dict[str, Any]:
    """Decode the archive in arrival order; return the summary, write packets to `jsonl`.

    Each record is judged at its archived receive time, so the verdicts are live's."""
    dictionaries = load_dictionaries()
    pipeline = Pipeline(
        dictionaries, telemetry=Telemetry(dictionaries), max_clock_skew_s=max_clock_skew_s
    )
    reader = ArchiveReader(directory)
    archived: Iterable[ArchiveRecord] = reader.records()
    if progress_total_bytes is not None:
        archived = archive_progress(
            archived, total_bytes=progress_total_bytes, description="replay"
        )
    for decoded in replay_archive(
        archived,
        pipeline,
        max_payload_bytes=max_payload_bytes,
        batch_size=batch_size,
        max_clock_skew_s=max_clock_skew_s,
    ):
        if jsonl is not None:
            write_jsonl(jsonl, packet_records(decoded, dictionaries[decoded.vehicle]))
    stats = reader.stats
    return {
        "archive": {
            "segments": stats.segments,
            "records": stats.records,
            "damaged_records": stats.damaged_records,
            "damaged_bytes": stats.damaged_bytes,
            "bad_segments": stats.bad_segments,
        },
        "counters": counter_samples(pipeline.telemetry.snapshot()),
    }


def counter_samples(snapshot: TelemetrySnapshot) -> dict[str, float]:
    """Counters keyed as in the Prometheus text format, so that they compare with a scrape."""
    samples: dict[str, float] = {}
    for family in snapshot.families:
        if family.family.kind != "counter":
            continue
        for labels, value in family.samples:
            pairs = sorted(zip(family.family.labels, labels, strict=True))
            rendered = ",".join(f'{name}="{label}"' for name, label in pairs)
            samples[f"{family.family.name}{{{rendered}}}"] = value
    return samples


def packet_records(decoded: Decoded, dictionary: VehicleDictionary) -> Iterator[dict[str, Any]]:
    """decode's per-packet records (groundstation.core.records) with vehicle and envelope_seq."""
    buffers = decoded.result.buffer.tolist()
    for buffer, record in zip(
        buffers, records.packet_records(decoded.result, dictionary), strict=True
    ):
        yield {
            "vehicle": decoded.vehicle,
            "envelope_seq": decoded.envelopes[buffer].seq,
            **record,
        }
