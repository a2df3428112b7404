"""The allocator setting the launchers give the daemon: freed temporaries reuse warm pages.

The systemd unit, `scripts/demo.sh` and the benchmark launchers set `GLIBC_TUNABLES` so that
glibc keeps batch-sized blocks for reuse instead of handing them back to the kernel.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.reliability_support import GLIBC_TUNABLES, REPO, service_environment

# Run in a fresh interpreter: the setting is read at process start. Prints the minor page
# faults of the last 20 rounds of a batch's temporaries (8 MiB batches).
_ROUNDS = """
import resource
import numpy as np
def batch_temporary():
    scratch = [np.empty(8 << 20, dtype=np.uint8) for _ in range(4)]
    for array in scratch:
        array.fill(1)  # touch every page
for _ in range(3):
    batch_temporary()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    batch_temporary()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(environment: dict[str, str]) -> int:
    done = subprocess.run(
        [sys.executable, "-c", _ROUNDS],
        capture_output=True,
        text=True,
        check=True,
        env=environment,
    )
    return int(done.stdout)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="GLIBC_TUNABLES is glibc's")
def test_the_setting_keeps_freed_temporaries_without_page_faults() -> None:
    plain = {key: value for key, value in os.environ.items() if key != "GLIBC_TUNABLES"}
    default, kept = faults(plain), faults(service_environment())
    # By default glibc gives the freed 32 MiB back to the kernel: every round faults its pages
    # in again (4 KiB or 2 MiB pages, depending on transparent huge pages).
    assert default >= 20 * 8
    assert kept < default / 8


def _setting_in(path: Path) -> str:
    match = re.search(r"GLIBC_TUNABLES=(\S+)", path.read_text(encoding="utf-8"))
    assert match, f"{path} sets no GLIBC_TUNABLES"
    return match.group(1)


@pytest.mark.parametrize("launcher", ["deploy/systemd/groundstation.service", "scripts/demo.sh"])
def test_every_launcher_sets_the_same_allocator_setting(launcher: str) -> None:
    assert _setting_in(REPO / launcher) == GLIBC_TUNABLES
