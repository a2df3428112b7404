"""`groundstation-sim`: the command line builds SimulationOptions, and nothing else.

Errors in the options are one line on stderr and exit status 2; a progress line goes to
stderr on runs longer than a couple of seconds. See docs/simulator.md.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from groundstation.simulators.delivery import Delivery
from groundstation.simulators.faults import FAULT_HELP, parse_faults
from groundstation.simulators.profiles import PROFILES
from groundstation.simulators.run import (
    DEFAULT_BROKER_URL,
    STRESS,
    Simulation,
    SimulationOptions,
    simulate,
)
from groundstation.simulators.stress import DEFAULT_MIX, parse_mix

from groundstation.cli.progress import progress_bar
from groundstation.config import parse_broker_url
from groundstation.errors import ConfigError, GroundstationError

EXIT_USAGE: Final = 2
EXIT_INTERRUPTED: Final = 130
ENV_PASSWORD: Final = "GROUNDSTATION_SIM_PASSWORD"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; every option explains itself in --help."""
    profiles = "\n".join(f"  {p.name}  {p.title}" for p in PROFILES.values())
    kinds = "\n".join(f"  {kind:<17} {text}" for kind, text in FAULT_HELP.items())
    parser = argparse.ArgumentParser(
        prog="groundstation-sim",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Simulate Ingenuity and Perseverance telemetry as the relay delivers it: CCSDS "
            "packets (ICD sections 3-4) in msgpack envelopes (section 2), published to MQTT "
            "or written to a directory, with a JSON report of what was sent."
        ),
        epilog=(
            f"profiles:\n{profiles}\n  {STRESS}  load generator (see the stress options)\n\n"
            f"fault kinds (--faults KIND=RATE,...; RATE is a probability 0..1):\n{kinds}\n\n"
            "examples:\n"
            "  groundstation-sim flight3 --speed 10\n"
            "  groundstation-sim flight3 --output out/ --store-and-forward --light-time 900\n"
            "  groundstation-sim flight4 --output out/ --faults flip_bits=0.01 --seed 7\n"
            "  groundstation-sim stress --rate 200000 --duration 60 --packets-per-envelope 500"
        ),
    )
    parser.add_argument(
        "profile",
        metavar="PROFILE",
        choices=[*PROFILES, STRESS],
        help=f"what to fly: {', '.join(PROFILES)}, or {STRESS}",
    )
    where = parser.add_argument_group("output (one of)")
    target = where.add_mutually_exclusive_group()
    target.add_argument(
        "--broker",
        metavar="URL",
        help=f"publish to this MQTT broker at QoS 1 on mars/tm/<vehicle>: mqtt://[user@]host"
        f"[:port] or mqtts://... for TLS (default {DEFAULT_BROKER_URL})",
    )
    target.add_argument(
        "--output",
        metavar="DIR",
        type=Path,
        help="write DIR/ingenuity.bin and DIR/perseverance.bin (packets of the valid "
        "envelopes, for `groundstation decode`), DIR/envelopes.msgpack (every envelope as "
        "published) and DIR/report.json instead of publishing",
    )
    mqtt = parser.add_argument_group("MQTT")
    mqtt.add_argument("--username", help="broker user name (overrides the URL's)")
    mqtt.add_argument(
        "--password",
        help=f"broker password (overrides the URL's); better: the {ENV_PASSWORD} "
        "environment variable, which is read when this option is absent",
    )
    mqtt.add_argument("--ca-file", type=Path, help="CA bundle that signed the broker (mqtts://)")
    mqtt.add_argument("--cert-file", type=Path, help="client certificate for TLS (mqtts://)")
    mqtt.add_argument("--key-file", type=Path, help="private key of --cert-file (mqtts://)")
    mqtt.add_argument(
        "--reconnect-timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="give up when the broker stays unreachable this long, 0 = never (default 60)",
    )
    timing = parser.add_argument_group("delivery")
    timing.add_argument(
        "--speed",
        type=float,
        default=1.0,
        metavar="X",
        help="live mode: X simulated seconds per wall-clock second (default 1 = real time; "
        "0 = no pacing). Directory output is never paced",
    )
    timing.add_argument(
        "--store-and-forward",
        action="store_true",
        help="deliver the whole flight in one burst after landing, as a rover relay pass "
        "does, instead of live",
    )
    timing.add_argument(
        "--light-time",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="one-way light time: each envelope's Earth-received time (ert) is this much "
        "later than its packets were sent by the relay (default 0)",
    )
    timing.add_argument(
        "--packets-per-envelope",
        type=int,
        default=64,
        metavar="N",
        help="packets per envelope (default 64); live envelopes also leave at least once a second",
    )
    timing.add_argument(
        "--start-time",
        type=float,
        metavar="UTC_SECONDS",
        help="packet time of the start of the run, UTC seconds since 1970 (default: the "
        "wall clock when publishing; 2021-04-25T11:31Z for --output, so files are "
        "reproducible)",
    )
    timing.add_argument(
        "--repeat",
        type=int,
        default=1,
        metavar="N",
        help="fly the profile N times back to back, counters continuing (0 = until "
        "interrupted; default 1)",
    )
    injection = parser.add_argument_group("faults")
    injection.add_argument(
        "--faults",
        default="",
        metavar="KIND=RATE,...",
        help="inject faults (kinds listed below); the report says how many of each",
    )
    injection.add_argument(
        "--seed",
        type=int,
        default=0,
        metavar="N",
        help="random seed: the same seed and options give the same bytes (default 0)",
    )
    stress = parser.add_argument_group("stress mode (PROFILE stress)")
    stress.add_argument(
        "--rate",
        type=float,
        metavar="PACKETS_PER_S",
        help="packets per second over all APIDs (default: as fast as possible)",
    )
    stress.add_argument("--packets", type=int, metavar="N", help="stop after N packets")
    stress.add_argument(
        "--duration",
        type=float,
        metavar="SECONDS",
        help="stop after SECONDS (of packet time with --rate, of wall-clock time without)",
    )
    mix = ",".join(f"{k}={v:g}" for k, v in DEFAULT_MIX.items())
    stress.add_argument(
        "--mix",
        metavar="NAME=WEIGHT,...",
        help=f"packet mix by ICD packet name (default {mix}, the flight mix)",
    )
    report = parser.add_argument_group("report")
    report.add_argument(
        "--report",
        metavar="FILE",
        help="write the JSON report here ('-' = stdout; default DIR/report.json with "
        "--output, stdout when publishing)",
    )
    report.add_argument(
        "--quiet",
        action="store_true",
        help="no progress bar (there is none off a terminal)",
    )
    report.add_argument(
        "--log-level",
        default="WARNING",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log level on stderr (default WARNING)",
    )
    return parser


def options_from_args(args: argparse.Namespace) -> SimulationOptions:
    """Validate the parsed arguments into SimulationOptions (ConfigError on bad input)."""
    broker = None
    if args.output is None:
        broker = parse_broker_url(args.broker or DEFAULT_BROKER_URL)
        password = args.password if args.password is not None else os.environ.get(ENV_PASSWORD)
        tls_files = {
            "ca_file": args.ca_file,
            "cert_file": args.cert_file,
            "key_file": args.key_file,
        }
        given = {k: v for k, v in tls_files.items() if v is not None}
        if given and not broker.tls:
            raise ConfigError("--ca-file, --cert-file and --key-file need an mqtts:// broker")
        broker = dataclasses.replace(
            broker,
            username=args.username if args.username is not None else broker.username,
            password=password if password is not None else broker.password,
            **given,
        )
    report_path = None if args.report in (None, "-") else Path(args.report)
    if args.profile != STRESS and any(
        v is not None for v in (args.rate, args.packets, args.duration, args.mix)
    ):
        raise ConfigError("--rate, --packets, --duration and --mix are for the stress profile")
    if not math.isfinite(args.reconnect_timeout) or args.reconnect_timeout < 0:
        raise ConfigError("--reconnect-timeout must be >= 0 seconds")
    return SimulationOptions(
        profile=args.profile,
        broker=broker,
        output_dir=args.output,
        report_path=report_path,
        speed=args.speed,
        light_time_s=args.light_time,
        store_and_forward=args.store_and_forward,
        faults=parse_faults(args.faults),
        seed=args.seed,
        start_time=args.start_time,
        repeat=args.repeat,
        packets_per_envelope=args.packets_per_envelope,
        rate_pps=args.rate,
        stress_packets=args.packets,
        stress_duration_s=args.duration,
        mix=parse_mix(args.mix) if args.mix else DEFAULT_MIX,
        reconnect_timeout_s=args.reconnect_timeout or None,
    )


class Progress:
    """A progress bar on stderr (groundstation.cli.progress): on a terminal only.

    Stress with --packets counts packets against N, stress with --duration seconds against
    the duration (packet time when paced by --rate, wall-clock time flat out); a flight
    profile counts packets, with their rate.
    """

    def __init__(self, options: SimulationOptions) -> None:
        self.started = time.monotonic()
        self.options = options
        stress = options.profile == STRESS
        self.by_packets = not stress or options.stress_packets is not None
        total: float | None = None
        if stress:
            total = options.stress_packets if self.by_packets else options.stress_duration_s
        self.bar = progress_bar(
            total=total,
            unit="packet" if self.by_packets else "s",
            description=f"groundstation-sim {options.profile}",
        )

    def __call__(self, simulation: Simulation, delivery: Delivery) -> None:
        if self.by_packets:
            done = float(simulation.report_builder.packets)
        elif self.options.rate_pps is not None:
            done = delivery.send_at_s
        else:
            done = time.monotonic() - self.started
        if self.bar.total is not None:
            done = min(done, self.bar.total)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        self.bar.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `groundstation-sim` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    progress: Progress | None = None
    try:
        options = options_from_args(args)
        progress = None if args.quiet else Progress(options)
        report = asyncio.run(simulate(options, on_sent=progress))
    except GroundstationError as error:
        print(f"groundstation-sim: {error}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as error:
        where = f"{error.filename}: " if error.filename else ""
        print(f"groundstation-sim: {where}{error.strerror or error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    finally:
        if progress is not None:
            progress.close()
    if (options.report_path is None and options.output_dir is None) or args.report == "-":
        sys.stdout.write(report.to_json())
    return 0
