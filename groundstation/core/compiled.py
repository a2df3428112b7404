"""Loops compiled to machine code (numba), for the decoder steps that are loops by nature.

A CRC register and a chain of packet headers each depend on the step before, so numpy can
only run them across many packets at once, in several passes over memory per byte. The
same loop compiled reads each packet once (see docs/decisions.md, "Compiled loops").

numba is imported, and the loops compiled, when one is first needed (`compile_all`, or a
first call): LLVM takes about 150 MB of memory (two thirds of it the library's pages),
which a process that never decodes, such as the daemon's ingest process, does not pay.
The machine code is cached beside the source, or in the user's cache directory (or
`NUMBA_CACHE_DIR`) where that is read-only, so only the first run on a machine compiles;
with no writable cache at all the loops are compiled in memory at each start.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar, cast

_Function = TypeVar("_Function", bound=Callable[..., Any])
_machine_code: list[Callable[[], object]] = []


def compiled(signature: str) -> Callable[[_Function], _Function]:
    """Compile the decorated function for `signature` (numba's types) when first needed.

    One explicit signature: every caller's arrays (writable or not, contiguous or strided
    views) convert to it, so there is one compilation, not one per kind of array. The
    compiled code holds no GIL: the decoder's helper thread runs the CRC beside calibration.
    """

    def compile_when_needed(function: _Function) -> _Function:
        @functools.cache
        def machine_code() -> Callable[..., Any]:
            import numba  # noqa: PLC0415 - loads LLVM: only in processes that decode

            try:
                compiled = numba.njit(signature, cache=True, nogil=True)(function)
            except RuntimeError:  # "cannot cache function ...": no writable cache directory
                compiled = numba.njit(signature, nogil=True)(function)
            return cast(Callable[..., Any], compiled)

        @functools.wraps(function)
        def call(*args: Any) -> Any:
            return machine_code()(*args)

        _machine_code.append(machine_code)
        return cast(_Function, call)

    return compile_when_needed


def compile_all() -> None:
    """Compile (or load from the cache) every loop now: a process that is about to decode
    calls this at start, so that its first batch is not late and an error shows at once."""
    for machine_code in _machine_code:
        machine_code()
