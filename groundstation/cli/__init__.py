"""Command line: `groundstation COMMAND`; the only place errors become exit codes."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from typing import Protocol

from groundstation import __version__
from groundstation.errors import GroundstationError

EXIT_USAGE = 2

# Each subcommand lives in its own module: groundstation.cli.<name>.
SUBCOMMANDS: dict[str, str] = {
    "decode": "decode a file of concatenated CCSDS packets",
    "run": "run the ground station daemon (MQTT -> archive -> decoder -> metrics)",
    "replay": "re-decode a raw archive in arrival order",
    "demo": "embedded broker + simulator + daemon: live metrics on a fresh machine",
    "dictionary": "the packet dictionary as XTCE 1.2 or as tables",
    "report": "post-flight report: a figure per flight and summary.json, from a raw archive",
    "backfill": "an archive's history samples as OpenMetrics, for promtool's block import",
}


class Subcommand(Protocol):
    """What each groundstation.cli.<name> module provides."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    def main(self, args: argparse.Namespace) -> int: ...


def _load(name: str) -> Subcommand:
    module: Subcommand = importlib.import_module(f"groundstation.cli.{name}")
    return module


def build_parser() -> argparse.ArgumentParser:
    """The whole argument parser; subcommand modules add their own options."""
    parser = argparse.ArgumentParser(
        prog="groundstation",
        description="Mars relay telemetry ground station (see README.md and docs/icd.md).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _add_log_level(parser, default="INFO")
    # Accepted after the subcommand too; SUPPRESS keeps the top-level value unless given.
    common = argparse.ArgumentParser(add_help=False)
    _add_log_level(common, default=argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, summary in SUBCOMMANDS.items():
        sub = commands.add_parser(name, help=summary, description=summary, parents=[common])
        _load(name).add_arguments(sub)
    return parser


def _add_log_level(parser: argparse.ArgumentParser, *, default: str) -> None:
    parser.add_argument(
        "--log-level",
        default=default,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log level (default INFO); logs go to stderr",
    )


def configure_logging(level: str) -> None:
    """The one log formatter: one line per event, context as key=value pairs."""
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `groundstation` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    try:
        return _load(args.command).main(args)
    except GroundstationError as error:
        print(f"groundstation {args.command}: {error}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as error:
        where = f"{error.filename}: " if error.filename else ""
        print(f"groundstation {args.command}: {where}{error.strerror or error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
