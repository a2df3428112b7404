"""keep_freed_memory: a batch-sized temporary freed and made again reuses warm pages."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

# Run in a fresh interpreter: the setting is process-wide and must not depend on what the
# test process allocated before. Prints the minor page faults of the last 20 rounds.
_ROUNDS = """
import resource, sys
import numpy as np
from groundstation.allocator import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
def batch_temporary():
    # A batch's temporaries (8 MiB batches): several alive at once, then all freed.
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


def faults(mode: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", _ROUNDS, mode], capture_output=True, text=True, check=True
    )
    return int(done.stdout)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_freed_temporaries_are_reused_without_page_faults() -> None:
    default, kept = faults("default"), faults("keep")
    # By default glibc gives the freed 32 MiB back to the kernel: every round faults its pages in
    # again (4 KiB or 2 MiB pages, depending on transparent huge pages).
    assert default >= 20 * 8
    assert kept < default / 8
