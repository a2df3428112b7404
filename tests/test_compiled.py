"""The compiled loops: compiled for one signature when needed, with or without a cache."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import numpy as np

from groundstation.core.compiled import compiled


def test_a_loop_without_a_writable_cache_is_compiled_in_memory() -> None:
    """A function numba cannot cache (here: one with no source file, as when no cache
    directory is writable) still compiles, and computes what the Python function does."""
    namespace: dict[str, Any] = {}
    exec(  # a function with no file behind it, on purpose
        "def total(values):\n"
        "    sum = 0\n"
        "    for value in values:\n"
        "        sum += value\n"
        "    return sum\n",
        namespace,
    )
    python_total = namespace["total"]
    machine_total = compiled("int64(Array(int64, 1, 'A', readonly=True))")(python_total)
    values = np.arange(10, dtype=np.int64)
    assert machine_total(values) == python_total(values) == 45
    assert machine_total(values[::3]) == 0 + 3 + 6 + 9  # a strided view converts


def test_importing_the_decoder_does_not_load_llvm() -> None:
    """Processes that never decode (the daemon's ingest process, the CLI) do not pay for
    LLVM: numba is imported at the first compilation, not with the decoder."""
    probe = (
        "import sys, groundstation.core.decoder, groundstation.service.daemon\n"
        "print('numba' in sys.modules)\n"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert loaded == "False"
