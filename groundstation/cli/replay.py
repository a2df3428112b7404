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

from tqdm import tqdm

from groundstation import records
from groundstation.archive import ArchiveReader, ArchiveRecord, frame_record, list_segments
from groundstation.cli.output import add_format_argument, quiet_broken_pipe, write_json, write_jsonl
from groundstation.cli.progress import progress_bar
from groundstation.config import load_config
from groundstation.definitions import VehicleDictionary, load_dictionaries
from groundstation.errors import ConfigError
from groundstation.pipeline import (
    Decoded,
    InvalidEnvelopeLog,
    Pipeline,
    archived_arrivals,
    batched,
)
from groundstation.telemetry import Telemetry, TelemetrySnapshot


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


def main(args: argparse.Namespace) -> int:
    segments = archive_segments(args.archive_dir)
    config = load_config(args.config, env=os.environ)
    with quiet_broken_pipe(sys.stdout):
        summary = replay(
            args.archive_dir,
            max_payload_bytes=config.ingest.max_payload_bytes,
            batch_size=config.ingest.batch_max_envelopes,
            jsonl=sys.stdout if args.format == "jsonl" else None,
            progress_total_bytes=sum(path.stat().st_size for path in segments),
        )
        if args.format == "summary":
            write_json(sys.stdout, summary)
    return 0


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
    jsonl: TextIO | None = None,
    progress_total_bytes: int | None = None,
) -> dict[str, Any]:
    """Decode the archive in arrival order; return the summary, write packets to `jsonl`."""
    dictionaries = load_dictionaries()
    pipeline = Pipeline(dictionaries, telemetry=Telemetry(dictionaries))
    reader = ArchiveReader(directory)
    with progress_bar(total=progress_total_bytes, unit="B", description="replay") as bar:
        arrivals = archived_arrivals(
            _counted(reader.records(), bar),
            max_payload_bytes=max_payload_bytes,
            vehicles=dictionaries,
        )
        log_invalid = InvalidEnvelopeLog()
        for batch in batched(arrivals, batch_size):
            for arrival in batch:
                log_invalid(arrival)
            for decoded in pipeline.process(batch):
                if jsonl is not None:
                    write_jsonl(jsonl, packet_records(decoded, dictionaries[decoded.vehicle]))
        if progress_total_bytes is not None:
            bar.update(max(0, progress_total_bytes - bar.n))  # segment headers, skipped bytes
    stats = reader.stats
    return {
        "archive": {
            "segments": stats.segments,
            "records": stats.records,
            "torn_records": stats.torn_records,
            "skipped_bytes": stats.skipped_bytes,
            "bad_segments": stats.bad_segments,
        },
        "counters": counter_samples(pipeline.telemetry.snapshot()),
    }


def _counted(records: Iterable[ArchiveRecord], bar: tqdm[Any]) -> Iterator[ArchiveRecord]:
    """The records, advancing the bar by each one's archived size."""
    for record in records:
        framing, payload = frame_record(record)
        bar.update(len(framing) + len(payload))
        yield record


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
    """decode's per-packet records (groundstation.records) with vehicle and envelope_seq."""
    buffers = decoded.result.buffer.tolist()
    for buffer, record in zip(
        buffers, records.packet_records(decoded.result, dictionary), strict=True
    ):
        yield {
            "vehicle": decoded.vehicle,
            "envelope_seq": decoded.envelopes[buffer].seq,
            **record,
        }
