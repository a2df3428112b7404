"""`groundstation replay ARCHIVE_DIR`: re-decode a raw archive in arrival order.

The archive goes through the same `Pipeline` as live ingest, in arrival order, so the
counts equal the live ones by construction (packets of a redelivered envelope come out as
`duplicate` twice over: live and replay both see the second copy).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from groundstation import records
from groundstation.archive import ArchiveReader
from groundstation.config import load_config
from groundstation.definitions import VehicleDictionary, load_dictionaries
from groundstation.errors import ConfigError
from groundstation.pipeline import Decoded, Pipeline, replay_archive
from groundstation.telemetry import Telemetry, TelemetrySnapshot


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("archive_dir", type=Path, metavar="ARCHIVE_DIR")
    parser.add_argument(
        "--format",
        choices=["jsonl", "summary"],
        default="summary",
        help="jsonl: one object per packet; summary: the counters, as JSON (default)",
    )
    parser.add_argument(
        "--config", type=Path, metavar="FILE", help="the daemon's TOML file (ingest limits)"
    )


def main(args: argparse.Namespace) -> int:
    if not args.archive_dir.is_dir():
        raise ConfigError(f"{args.archive_dir}: no such archive directory")
    config = load_config(args.config, env=os.environ)
    summary = replay(
        args.archive_dir,
        max_payload_bytes=config.ingest.max_payload_bytes,
        batch_size=config.ingest.batch_max_envelopes,
        jsonl=sys.stdout if args.format == "jsonl" else None,
    )
    if args.format == "summary":
        json.dump(summary, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
    return 0


def replay(
    directory: Path, *, max_payload_bytes: int, batch_size: int, jsonl: TextIO | None = None
) -> dict[str, Any]:
    """Decode the archive in arrival order; return the summary, write packets to `jsonl`."""
    dictionaries = load_dictionaries()
    pipeline = Pipeline(dictionaries, telemetry=Telemetry(dictionaries))
    reader = ArchiveReader(directory)
    for decoded in replay_archive(
        reader.records(), pipeline, max_payload_bytes=max_payload_bytes, batch_size=batch_size
    ):
        if jsonl is not None:
            for item in packet_records(decoded, dictionaries[decoded.vehicle]):
                jsonl.write(json.dumps(item, allow_nan=False))
                jsonl.write("\n")
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
