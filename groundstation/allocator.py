"""Keep freed memory in the process, so each batch's numpy temporaries reuse warm pages.

Decoding a batch (up to `ingest.batch_max_bytes`, 8 MiB) makes temporaries of about that
size: the header scan's masks, the gathered rows, the CRC's words. glibc gives large blocks
back to the kernel when they are freed (above its mmap threshold, or when the top of the
heap is over its trim threshold), so the next batch takes page faults and the kernel zeroes
fresh pages for it, over and over. Measured on the mixed stream (paired drains of 6,000
envelopes): page faults per drain 53 k -> 13 k in the parent and 72 k -> 6 k in the
decoding child; CPU per envelope down by ~15 us in the parent and ~25 us in the child
(docs/decisions.md, "Freed memory stays in the process").

The cost is that a process stays at its peak heap instead of shrinking after a burst;
that peak is bounded by the batch size (docs/decisions.md, "Bounds").
"""

from __future__ import annotations

import ctypes
import logging
from typing import Final

__all__ = ["keep_freed_memory"]

logger = logging.getLogger(__name__)

# mallopt(3) parameters, from glibc's malloc.h.
_M_TRIM_THRESHOLD: Final = -1
_M_MMAP_THRESHOLD: Final = -3

# Blocks up to this size come from the heap (glibc's documented maximum on 64-bit systems).
MMAP_THRESHOLD_BYTES: Final = 32 << 20
# The top of the heap is given back only when this much of it is free.
TRIM_THRESHOLD_BYTES: Final = 256 << 20


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed blocks for reuse; False where that is not possible (not glibc)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # another C library (musl, macOS): leave it as it is
        logger.debug("mallopt is not available: the allocator keeps its defaults")
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success; setting the mmap threshold also stops glibc adjusting it.
    return bool(
        mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
        and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    )
