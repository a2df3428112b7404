"""`groundstation decode PATH --vehicle NAME`: decode a file of concatenated CCSDS packets.

The whole input is one buffer (as if one envelope): a malformed tail ends it. Output goes
to stdout: one JSON object per packet (`jsonl`, the default) or one summary object.
Errors (unknown vehicle, unreadable file) propagate to groundstation.cli, which prints
one line and exits 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from groundstation.cli.output import add_format_argument, quiet_broken_pipe, write_json, write_jsonl
from groundstation.core.decoder import MALFORMED, UNKNOWN_APID, DecodeResult, PacketDecoder
from groundstation.core.definitions import load_dictionaries, load_dictionary
from groundstation.core.records import packet_records, summary

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `groundstation decode`."""
    parser.add_argument("path", metavar="PATH", help="file of concatenated packets; - for stdin")
    parser.add_argument(
        "--vehicle", required=True, help="packet dictionary to use (ingenuity, perseverance)"
    )
    add_format_argument(parser, summary="counts and throughput, as one JSON object")


def main(args: argparse.Namespace) -> int:
    """Decode PATH and print the records; 0 on success, whatever the packets' verdicts."""
    dictionary = load_dictionary(args.vehicle)
    data = sys.stdin.buffer.read() if args.path == "-" else Path(args.path).read_bytes()
    decoder = PacketDecoder(dictionary)
    started = time.perf_counter()  # the clock lives here, not in the decoder
    result = decoder.decode([data])
    elapsed = time.perf_counter() - started
    warn_if_other_vehicle(result, args.vehicle)
    with quiet_broken_pipe(sys.stdout):
        if args.format == "summary":
            write_json(sys.stdout, summary([result], decode_seconds=elapsed))
        else:
            write_jsonl(sys.stdout, packet_records(result, dictionary))
    return 0


def warn_if_other_vehicle(result: DecodeResult, vehicle: str) -> None:
    """No packet is in the chosen dictionary: say whose APIDs they are (a wrong --vehicle)."""
    unknown = result.result == UNKNOWN_APID
    if not unknown.any() or (result.result[~unknown] != MALFORMED).any():
        return
    apids = set(result.apid[unknown].tolist())
    owners = [
        name
        for name, dictionary in load_dictionaries().items()
        if name != vehicle and apids & dictionary.packets.keys()
    ]
    logger.warning(
        "no packet matched the %s dictionary (APIDs %s)%s",
        vehicle,
        ", ".join(str(apid) for apid in sorted(apids)),
        f"; they are {' and '.join(owners)}'s: try --vehicle {owners[0]}" if owners else "",
    )
