"""`groundstation run`: the daemon, configured from a TOML file, the environment and a few flags."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Iterator
from pathlib import Path

from groundstation.config import Config, Overrides, load_config
from groundstation.errors import AddressInUseError, ConfigError, GroundstationError
from groundstation.service.broker import quiet_broker_logs
from groundstation.service.daemon import Daemon

logger = logging.getLogger(__name__)


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """The configuration flags shared by `run` and `demo` (STYLE habit 1: CLI builds Config)."""
    parser.add_argument("--config", type=Path, metavar="FILE", help="TOML configuration file")
    parser.add_argument(
        "--broker",
        metavar="URL",
        help="mqtt://[user[:pass]@]host[:port] or mqtts://… (default: the embedded broker)",
    )
    parser.add_argument(
        "--metrics-addr", metavar="HOST:PORT", help="where /metrics is served (127.0.0.1:9108)"
    )
    parser.add_argument("--archive-dir", type=Path, metavar="DIR", help="raw archive directory")
    parser.add_argument("--client-id", metavar="ID", help="MQTT client id (persistent session)")
    add_history_argument(parser)


def add_history_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--history-url",
        metavar="URL",
        help="remote-write endpoint for the history at spacecraft time, e.g."
        " http://127.0.0.1:9090/api/v1/write (default: [history] url, or off)",
    )


def config_from_args(args: argparse.Namespace) -> Config:
    """The one place that reads the environment: secrets (GROUNDSTATION_MQTT_PASSWORD, …)."""
    return load_config(
        args.config,
        env=os.environ,
        overrides=Overrides(
            broker_url=args.broker,
            metrics_addr=args.metrics_addr,
            archive_dir=args.archive_dir,
            client_id=args.client_id,
            history_url=args.history_url,
        ),
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)


def main(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    if config.broker.embedded:
        quiet_broker_logs()
    with options_named(metrics="--metrics-addr", MQTT="[broker] port in --config, or --broker URL"):
        asyncio.run(run_daemon(config))
    return 0


@contextlib.contextmanager
def options_named(**option_of: str) -> Iterator[None]:
    """A port in use becomes one line naming the address and the option that changes it."""
    try:
        yield
    except AddressInUseError as error:
        hint = option_of.get(error.service)
        raise ConfigError(f"{error}; choose another with {hint}" if hint else str(error)) from None


async def run_daemon(config: Config) -> None:
    """Run until SIGTERM or SIGINT; the handlers only set the shutdown event."""
    daemon = Daemon(config)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, _request_shutdown, daemon, signum)
    try:
        await daemon.run()
    except BaseExceptionGroup as group:
        error = first_error(group)
        if error is None:
            raise
        raise error from group
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


def _request_shutdown(daemon: Daemon, signum: int) -> None:
    logger.info("received %s: shutting down", signal.Signals(signum).name)
    daemon.shutdown.set()


def first_error(group: BaseExceptionGroup[BaseException]) -> Exception | None:
    """The task group's first configuration or I/O error, for __main__'s one-line message."""
    for member in group.exceptions:
        error = first_error(member) if isinstance(member, BaseExceptionGroup) else member
        if isinstance(error, GroundstationError | OSError):
            return error
    return None
