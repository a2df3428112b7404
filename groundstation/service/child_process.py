"""What every child process of the daemon does at start: leave stopping to the daemon.

The decoding child and the history writer run as long as the daemon; the daemon alone
decides when they stop (after it has drained), and they must not outlive it.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Final

PARENT_CHECK_INTERVAL_S: Final = 0.5  # a child exits this soon after its parent


def start_as_child() -> None:
    """First thing in a child: ignore SIGINT and SIGTERM (Ctrl-C reaches the whole process
    group, and systemd's default KillMode SIGTERMs the whole cgroup, but the parent stops
    its children itself), and exit once the parent is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    threading.Thread(
        target=_exit_with_parent, args=(os.getppid(),), name="parent-watch", daemon=True
    ).start()


def _exit_with_parent(parent: int) -> None:
    """A kill -9 of the parent leaves a spawned child waiting on pipes whose other end it
    holds itself, so it would never see EOF: poll instead."""
    while os.getppid() == parent:
        time.sleep(PARENT_CHECK_INTERVAL_S)
    os._exit(1)
