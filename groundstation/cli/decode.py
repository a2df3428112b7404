"""`groundstation decode PATH --vehicle NAME`: decode a file of concatenated CCSDS packets.

The whole input is one buffer (as if one envelope): a malformed tail ends it. Output goes
to stdout: one JSON object per packet (`jsonl`, the default) or one summary object.
Errors (unknown vehicle, unreadable file) propagate to groundstation.cli, which prints
one line and exits 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TextIO

from groundstation.decoder import PacketDecoder
from groundstation.definitions import load_dictionary
from groundstation.records import packet_records, summary

FORMATS = ("jsonl", "summary")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `groundstation decode`."""
    parser.add_argument("path", metavar="PATH", help="file of concatenated packets; - for stdin")
    parser.add_argument(
        "--vehicle", required=True, help="packet dictionary to use (ingenuity, perseverance)"
    )
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="jsonl",
        help="jsonl: one object per packet (default); summary: counts and throughput",
    )


def main(args: argparse.Namespace) -> int:
    """Decode PATH and print the records; 0 on success, whatever the packets' verdicts."""
    dictionary = load_dictionary(args.vehicle)
    data = sys.stdin.buffer.read() if args.path == "-" else Path(args.path).read_bytes()
    decoder = PacketDecoder(dictionary)
    started = time.perf_counter()  # the clock lives here, not in the decoder
    result = decoder.decode([data])
    elapsed = time.perf_counter() - started
    if args.format == "summary":
        return _write(sys.stdout, [summary([result], decode_seconds=elapsed)])
    return _write(sys.stdout, packet_records(result, dictionary))


def _write(stream: TextIO, records: Iterable[dict[str, Any]]) -> int:
    """One compact JSON object per line; a reader that hangs up early (| head) is fine."""
    try:
        for record in records:
            stream.write(json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n")
        stream.flush()
    except BrokenPipeError:
        # Python's documented idiom: point stdout at devnull so the exit flush is quiet.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
    return 0
