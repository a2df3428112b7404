"""Atheris fuzz target for the envelope and packet path (docs/reliability.md, item 7).

The first input byte picks the path: even, the rest is an MQTT payload (envelope, then its
packets); odd, the rest is a `packets` buffer for vehicle `ingenuity` (bit 1 clear) or
`perseverance` (bit 1 set). Each input checks the ICD section 6 invariants: nothing raises,
every byte of a buffer is accounted for by exactly one entry, every entry has a verdict.

Run it (atheris is in the `fuzz` extra; CI runs `ingest_one` under hypothesis instead):

    python -m tests.fuzz.corpus /tmp/gs-seeds
    python -m tests.fuzz.fuzz_ingest /tmp/gs-corpus /tmp/gs-seeds \
        -max_total_time=3600 -rss_limit_mb=2048
"""

from __future__ import annotations

import sys
from functools import cache
from typing import Final, get_args

import numpy as np

from groundstation.core.decoder import RESULTS, DecodeResult, PacketDecoder
from groundstation.core.definitions import VehicleDictionary, load_dictionaries
from groundstation.core.envelope import Invalid, InvalidReason, unpack_envelope

MAX_PAYLOAD_BYTES: Final = 1 << 20
OK: Final = RESULTS.index("ok")


@cache
def dictionaries() -> dict[str, VehicleDictionary]:
    """The packet dictionaries, loaded once per fuzzing process."""
    return load_dictionaries()


def ingest_one(data: bytes) -> None:
    """Run one fuzz input through the path it selects and check the invariants."""
    if not data:
        return
    mode, body = data[0], data[1:]
    vehicles = dictionaries()
    if mode % 2 == 0:
        result = unpack_envelope(body, max_payload_bytes=MAX_PAYLOAD_BYTES, vehicles=vehicles)
        if isinstance(result, Invalid):
            if result.reason not in get_args(InvalidReason):
                raise AssertionError(f"unknown reason {result.reason!r}")
            return
        vehicle, buffer = result.vehicle, result.packets
    else:
        vehicle, buffer = ("ingenuity", "perseverance")[(mode >> 1) % 2], body
    if not buffer:
        return
    # A fresh decoder per input keeps the fuzzer deterministic (sequence state would not be).
    check_accounting(PacketDecoder(vehicles[vehicle]).decode([buffer]), [buffer])


def check_accounting(result: DecodeResult, buffers: list[bytes | memoryview]) -> None:
    """The invariants of docs/interfaces.md: entries tile each buffer, verdicts are known."""
    entries = len(result.result)
    for name in ("buffer", "offset", "length", "apid", "seq", "time"):
        if len(getattr(result, name)) != entries:
            raise AssertionError(f"{name} has {len(getattr(result, name))} entries, not {entries}")
    if entries and int(result.result.max()) >= len(RESULTS):
        raise AssertionError(f"verdict code {int(result.result.max())} is not in RESULTS")
    for index, buffer in enumerate(buffers):
        mine = result.buffer == index
        offsets, lengths = result.offset[mine], result.length[mine]
        if int(lengths.sum()) != len(buffer):
            raise AssertionError(f"buffer {index}: {int(lengths.sum())} of {len(buffer)} bytes")
        if (
            offsets[0] != 0
            or np.any(lengths <= 0)
            or np.any(offsets[1:] != (offsets + lengths)[:-1])
        ):
            raise AssertionError(f"buffer {index}: entries do not tile the buffer")
    if sum(result.counts().values()) != entries:
        raise AssertionError("counts() does not add up to the entries")
    in_columns = sum(len(columns.index) for columns in result.columns.values())
    if in_columns != int(np.count_nonzero(result.result == OK)):
        raise AssertionError("the ok packets and the per-APID columns disagree")


def main() -> None:
    """Fuzz with libFuzzer's arguments from the command line (see the module docstring)."""
    import atheris  # the `fuzz` extra; imported here so that CI never needs it

    dictionaries()
    atheris.instrument_all()
    atheris.Setup(sys.argv, ingest_one)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
