"""`groundstation dictionary export-xtce|show --vehicle NAME`: the packet dictionary for others.

`export-xtce` writes XTCE 1.2 (ICD section 9) for mission control systems such as Yamcs;
`show` prints the dictionary as Markdown tables (the packet-dictionary part of the
interface document) or as JSON. Both read the same compiled `protocols/*.toml`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from groundstation.core.definitions import load_dictionary
from groundstation.core.dictionary_table import dictionary_json, dictionary_markdown
from groundstation.core.xtce import export_xtce

FORMATS = ("markdown", "json")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Actions of `groundstation dictionary` and their options."""
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    export = actions.add_parser(
        "export-xtce",
        help="the vehicle's packet dictionary as XTCE 1.2",
        description="Write the vehicle's packet dictionary as XTCE 1.2 (ICD section 9).",
    )
    _vehicle(export)
    export.add_argument("--out", metavar="FILE", help="write to FILE instead of stdout")
    show = actions.add_parser(
        "show",
        help="the vehicle's packet dictionary as tables",
        description="Print the vehicle's packet dictionary as Markdown tables or JSON.",
    )
    _vehicle(show)
    show.add_argument(
        "--format", choices=FORMATS, default="markdown", help="markdown (default) or json"
    )


def _vehicle(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--vehicle", required=True, help="packet dictionary to use (ingenuity, perseverance)"
    )


def main(args: argparse.Namespace) -> int:
    """Print or write the dictionary; errors propagate to groundstation.cli (exit 2)."""
    dictionary = load_dictionary(args.vehicle)
    if args.action == "export-xtce":
        text = export_xtce(dictionary)
        if args.out is None:
            sys.stdout.write(text)
        else:
            Path(args.out).write_text(text, encoding="utf-8")
        return 0
    if args.format == "json":
        sys.stdout.write(json.dumps(dictionary_json(dictionary), indent=2) + "\n")
    else:
        sys.stdout.write(dictionary_markdown(dictionary))
    return 0
