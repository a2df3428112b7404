"""`groundstation demo`: embedded broker + simulator flying flight 3 in a loop + the daemon.

Nothing else to install: the README's first command shows live metrics at
http://127.0.0.1:9108/metrics. Everything stays on loopback.

The demo is the one place the ground station uses the simulator, so the simulator is
imported inside `run_demo`: loading the command line (every subcommand's options) does not
load it.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import signal
import tempfile
from pathlib import Path

from groundstation.cli.run import add_history_argument, first_error, options_named
from groundstation.config import Config, Overrides, load_config
from groundstation.service.broker import quiet_broker_logs
from groundstation.service.daemon import Daemon

logger = logging.getLogger(__name__)

DEMO_PROFILE = "flight3"
SIMULATOR_CLIENT_ID = "groundstation-demo-simulator"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--speed",
        type=float,
        default=1.0,
        help="simulated seconds per wall-clock second (default 1: real time)",
    )
    parser.add_argument(
        "--mqtt-port", type=int, default=1883, help="embedded broker's port on 127.0.0.1"
    )
    parser.add_argument(
        "--metrics-addr", metavar="HOST:PORT", help="where /metrics is served (127.0.0.1:9108)"
    )
    parser.add_argument(
        "--archive-dir",
        type=Path,
        metavar="DIR",
        help="raw archive directory, kept (default: a temporary directory, removed on exit)",
    )
    add_history_argument(parser)


def main(args: argparse.Namespace) -> int:
    if args.archive_dir is not None:
        logger.info("demo: archive in %s (kept)", args.archive_dir)
        return _run(args, args.archive_dir)
    # Nothing left behind in the working directory: the archive goes when the demo does.
    with tempfile.TemporaryDirectory(prefix="groundstation-demo-") as temporary:
        logger.info(
            "demo: archive in %s (temporary, removed on exit; keep one with --archive-dir)",
            temporary,
        )
        return _run(args, Path(temporary))


def _run(args: argparse.Namespace, archive_dir: Path) -> int:
    config = load_config(
        None,
        env=os.environ,
        overrides=Overrides(
            metrics_addr=args.metrics_addr,
            archive_dir=archive_dir,
            history_url=args.history_url,
        ),
    )
    config = dataclasses.replace(
        config, broker=dataclasses.replace(config.broker, port=args.mqtt_port)
    )
    quiet_broker_logs()
    with options_named(metrics="--metrics-addr", MQTT="--mqtt-port"):
        asyncio.run(run_demo(config, speed=args.speed))
    return 0


async def run_demo(config: Config, *, speed: float) -> None:
    """Daemon (with its embedded broker) and simulator in one task group, until a signal."""
    from groundstation.simulators.run import (  # noqa: PLC0415 - only the demo needs it
        SimulationOptions,
        simulate,
    )

    daemon = Daemon(config)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, daemon.shutdown.set)
    simulator_broker = dataclasses.replace(config.broker, client_id=SIMULATOR_CLIENT_ID)
    options = SimulationOptions(
        profile=DEMO_PROFILE, broker=simulator_broker, speed=speed, repeat=0
    )
    try:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(daemon.run())
            await daemon.ready.wait()
            simulator = tasks.create_task(simulate(options))
            logger.info(
                "demo: flight 3 in a loop at %gx; metrics on http://%s:%d/metrics",
                speed,
                *(daemon.metrics_address or ("?", 0)),
            )
            await daemon.shutdown.wait()
            simulator.cancel()
    except BaseExceptionGroup as group:
        error = first_error(group)
        if error is None:
            raise
        raise error from group
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
