"""What `decode` and `replay` print: one format option, one JSON writer, quiet on a closed pipe."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Iterable, Iterator
from typing import Any, Final, TextIO

FORMATS: Final = ("jsonl", "summary")
DEFAULT_FORMAT: Final = "jsonl"


def add_format_argument(parser: argparse.ArgumentParser, *, summary: str) -> None:
    """--format, the same choices and default for every command that prints records."""
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default=DEFAULT_FORMAT,
        help=(
            "jsonl (default): one JSON object per packet: apid, name, seq, time, result,"
            f" fields; summary: {summary}"
        ),
    )


def write_jsonl(stream: TextIO, records: Iterable[dict[str, Any]]) -> None:
    """One compact JSON object per line (JSON has no NaN: records carry null instead)."""
    for record in records:
        stream.write(json.dumps(record, separators=(",", ":"), allow_nan=False))
        stream.write("\n")


def write_json(stream: TextIO, document: dict[str, Any]) -> None:
    """One indented JSON document, for people as much as for jq."""
    json.dump(document, stream, indent=2, sort_keys=True, allow_nan=False)
    stream.write("\n")


@contextlib.contextmanager
def quiet_broken_pipe(stream: TextIO = sys.stdout) -> Iterator[None]:
    """A reader that hangs up early (`| head`) ends the output silently, as Unix tools do."""
    try:
        yield
        stream.flush()
    except BrokenPipeError:
        # Python's documented idiom (library/signal.html, "Note on SIGPIPE"): point stdout
        # at devnull so the flush at exit does not raise again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
