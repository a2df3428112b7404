"""`groundstation backfill`: the history writer's samples as OpenMetrics, for promtool.

Samples older than Prometheus's out-of-order window are refused by remote write and
counted `backfill` by the writer (docs/history.md); this command writes the same samples
(the same `Pipeline` and `HistorySamples` over the archive in arrival order) for
`promtool tsdb create-blocks-from openmetrics`. The procedure is in docs/deploy.md.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from groundstation.cli.progress import archive_progress
from groundstation.cli.timespan import add_time_span
from groundstation.config import load_config
from groundstation.consumers.history.openmetrics import openmetrics_lines
from groundstation.consumers.history.samples import HistorySamples, SampleBatch, milliseconds
from groundstation.consumers.history.writer import history_batch_bytes
from groundstation.consumers.pipeline import Pipeline, replay_archive
from groundstation.consumers.telemetry import Telemetry
from groundstation.core.definitions import load_dictionaries
from groundstation.errors import ConfigError
from groundstation.ingest.archive import ArchiveReader, list_segments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("archive_dir", type=Path, metavar="ARCHIVE_DIR")
    add_time_span(
        parser,
        after="samples at or after TIME (packet time)",
        before="samples at or before TIME",
    )
    parser.add_argument(
        "--out", type=Path, required=True, metavar="FILE", help="the OpenMetrics file to write"
    )
    parser.add_argument(
        "--config", type=Path, metavar="FILE", help="the daemon's TOML file (ingest limits)"
    )


def main(args: argparse.Namespace) -> int:
    if not args.archive_dir.is_dir():
        what = "not a directory" if args.archive_dir.exists() else "no such archive directory"
        raise ConfigError(f"{args.archive_dir}: {what}")
    segments = list_segments(args.archive_dir)
    if not segments:
        raise ConfigError(f"{args.archive_dir}: no archive segment (segment-*.gsa) found")
    if args.time_from is not None and args.time_to is not None and args.time_to < args.time_from:
        raise ConfigError("--to lies before --from")
    config = load_config(args.config, env=os.environ)
    batch = history_of(
        args.archive_dir,
        max_payload_bytes=config.ingest.max_payload_bytes,
        batch_size=config.ingest.batch_max_envelopes,
        batch_max_bytes=history_batch_bytes(config.ingest.batch_max_bytes),
        max_clock_skew_s=config.ingest.max_clock_skew_s,
        progress=sys.stderr.isatty(),
        total_bytes=sum(path.stat().st_size for path in segments),
    )
    lines = openmetrics_lines(
        batch,
        from_ms=None if args.time_from is None else milliseconds(args.time_from),
        to_ms=None if args.time_to is None else milliseconds(args.time_to),
    )
    written = 0
    with args.out.open("w", encoding="utf-8") as out:
        for line in lines:
            if not line.startswith("#"):
                written += 1
            out.write(line)
    print(f"wrote {written} samples to {args.out}", file=sys.stderr)
    return 0


def history_of(
    directory: Path,
    *,
    max_payload_bytes: int,
    batch_size: int,
    batch_max_bytes: int,
    max_clock_skew_s: float,
    progress: bool = False,
    total_bytes: int = 0,
) -> SampleBatch:
    """Every history sample of the archive, as the history writer derives them (in the
    same batches: `history_batch_bytes`)."""
    dictionaries = load_dictionaries()
    pipeline = Pipeline(
        dictionaries, telemetry=Telemetry(dictionaries), max_clock_skew_s=max_clock_skew_s
    )
    samples = HistorySamples(dictionaries)
    records = ArchiveReader(directory).records()
    if progress:
        records = archive_progress(
            records, total_bytes=total_bytes, description="backfill", enabled=True
        )
    batch = SampleBatch()
    for decoded in replay_archive(
        records,
        pipeline,
        max_payload_bytes=max_payload_bytes,
        batch_size=batch_size,
        batch_max_bytes=batch_max_bytes,
        max_clock_skew_s=max_clock_skew_s,
    ):
        batch.merge(samples.take(decoded))
    return batch
