"""The embedded MQTT broker (amqtt), bound to loopback: the demo's and a bare `run`'s default.

It speaks MQTT 3.1.1 only, keeps sessions in memory and is about 3x slower than Mosquitto
on loopback; production uses Mosquitto (deploy/). Persistent sessions
still work while it runs, which is all a single-machine demo needs.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Final

from amqtt.broker import Broker
from amqtt.errors import BrokerError

from groundstation.config import LOOPBACK
from groundstation.errors import AddressInUseError

logger = logging.getLogger(__name__)


# amqtt (and the `transitions` state machine under it) log every session state change at
# INFO: one line per client event drowns ours. Kept at WARNING unless debugging.
CHATTY_LOGGERS: Final = ("amqtt", "transitions")


def quiet_broker_logs() -> None:
    """Called by the CLI (the one place that configures logging) before the broker starts."""
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        for name in CHATTY_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)


def broker_settings(*, port: int) -> dict[str, Any]:
    """amqtt 0.12's configuration: one TCP listener on loopback, anonymous, no $SYS chatter."""
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"{LOOPBACK}:{port}"}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }


def _drop_startup_traceback(record: logging.LogRecord) -> bool:
    return record.msg != "Broker startup failed"


@asynccontextmanager
async def embedded_broker(*, port: int) -> AsyncIterator[None]:
    """Run amqtt on LOOPBACK:port for the duration of the block."""
    broker = Broker(broker_settings(port=port))
    startup_log = logging.getLogger("amqtt.broker")
    # amqtt logs its own traceback before raising; the error below carries the same news.
    startup_log.addFilter(_drop_startup_traceback)
    try:
        await broker.start()
    except BrokerError as error:
        # amqtt wraps the listener's bind error: BrokerError from OSError.
        cause = error.__cause__
        if isinstance(cause, OSError) and cause.errno == errno.EADDRINUSE:
            raise AddressInUseError(service="MQTT", host=LOOPBACK, port=port) from error
        raise
    finally:
        startup_log.removeFilter(_drop_startup_traceback)
    logger.info("embedded MQTT broker (amqtt) listening on %s:%d", LOOPBACK, port)
    try:
        yield
    finally:
        await broker.shutdown()
        logger.info("embedded MQTT broker stopped")
