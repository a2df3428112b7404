"""The fault kinds the simulator injects, their rates, and the `--faults` syntax.

Each kind is designed so that the decoder's result for it is exactly predictable (see
docs/decisions.md, `## Simulator`): envelope kinds are drawn per envelope, packet kinds per
packet, at most one fault per envelope and per packet, and never on the anchors (the
first envelope and first packet of each stream, and the last ones of a finite run), so
that sequence accounting always starts and ends on a packet that really arrived. A reboot
makes the first packet of each APID after it an anchor too (the restart is seen on count
0), and no envelope in the three before it is reordered (nothing from before the reboot
arrives after it).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final, Literal, get_args

from groundstation.errors import ConfigError

FaultKind = Literal[
    "drop_envelope",
    "garbage",
    "wrong_version",
    "truncate",
    "reorder",
    "drop_packet",
    "flip_bits",
    "duplicate_packet",
    "unknown_apid",
    "reboot",
]
FAULT_KINDS: Final[tuple[FaultKind, ...]] = get_args(FaultKind)
# Drawn in this order; an envelope or packet already faulted is not drawn again. A reboot
# is drawn first: the faults around it are then chosen so that its counts stay exact.
ENVELOPE_FAULTS: Final[tuple[FaultKind, ...]] = (
    "reboot",
    "drop_envelope",
    "garbage",
    "wrong_version",
    "truncate",
    "reorder",
)
PACKET_FAULTS: Final[tuple[FaultKind, ...]] = (
    "drop_packet",
    "flip_bits",
    "duplicate_packet",
    "unknown_apid",
)
# Envelopes whose packets never reach the decoder.
UNDELIVERED_FAULTS: Final[frozenset[FaultKind]] = frozenset(
    {"drop_envelope", "garbage", "wrong_version"}
)

FAULT_HELP: Final[Mapping[FaultKind, str]] = MappingProxyType(
    {
        "drop_envelope": "per envelope: never published (envelope seq gap, its packets lost)",
        "garbage": "per envelope: payload replaced by bytes that are not msgpack (invalid)",
        "wrong_version": "per envelope: envelope version other than 1 (invalid)",
        "truncate": "per envelope: buffer cut inside its last packet (one malformed tail)",
        "reorder": "per envelope: delivered 1 to 3 envelopes late (net loss 0)",
        "drop_packet": "per packet: left out of its envelope (lost)",
        "flip_bits": "per packet: 1 or 3 bits flipped after the header (crc_error and lost)",
        "duplicate_packet": "per packet: sent twice in a row (one duplicate)",
        "unknown_apid": "per packet: a CRC-valid packet of an APID not in the dictionary "
        "is inserted before it (unknown_apid)",
        "reboot": "per envelope: the vehicle reboots before it, every APID's count restarts "
        "at 0 while the clock runs on (one sequence restart per APID, nothing lost)",
    }
)


def parse_faults(text: str) -> Mapping[FaultKind, float]:
    """`KIND=RATE,...` as a mapping; rates are probabilities in [0, 1]."""
    rates: dict[FaultKind, float] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, sep, value = item.partition("=")
        kind = name.strip().replace("-", "_")
        if not sep:
            raise ConfigError(f"fault {item!r}: expected KIND=RATE")
        if kind not in FAULT_KINDS:
            raise ConfigError(f"unknown fault kind {name!r} (known: {', '.join(FAULT_KINDS)})")
        try:
            rate = float(value)
        except ValueError:
            raise ConfigError(f"fault {kind}: rate {value!r} is not a number") from None
        if not 0.0 <= rate <= 1.0:
            raise ConfigError(f"fault {kind}: rate {rate} is outside 0..1")
        if kind in rates:
            raise ConfigError(f"fault {kind} given twice")
        rates[kind] = rate
    return MappingProxyType(rates)
