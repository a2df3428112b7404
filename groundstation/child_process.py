"""What every child process of the daemon does at start: leave stopping to the daemon.

The decoding child and the history writer run as long as the daemon; the daemon alone
decides when they stop (after it has drained), and they must not outlive it.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Final

PARENT_CHECK_INTERVAL_S: Final = 0.5  # a child exits this soon after its parent


def leave_stopping_to_the_parent() -> None:
    """Ignore SIGINT and SIGTERM: Ctrl-C reaches the whole process group, and systemd's
    default KillMode SIGTERMs the whole cgroup, but the parent stops its children itself."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def exit_with_parent(parent: int) -> None:
    """Run in a daemon thread: exit once `parent` is gone (kill -9 leaves a spawned child
    waiting on pipes whose other end it holds itself, so it would never see EOF)."""
    while os.getppid() == parent:
        time.sleep(PARENT_CHECK_INTERVAL_S)
    os._exit(1)
