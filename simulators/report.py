"""The JSON report of a run: what was sent, what was injected, what the decoder must count.

Built envelope by envelope from `EnvelopeAccount`s as they are published, so a run that
stops early (Ctrl-C, a wall-clock stress limit) still reports exactly what left. The
schema is documented in docs/simulator.md.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from groundstation.simulators.delivery import (
    INJECTED_APID,
    RESULTS,
    UNKNOWN_LABEL,
    Delivery,
    topic_for,
)
from groundstation.simulators.faults import FAULT_KINDS

from groundstation.core.ccsds import SEQ_COUNT_MODULUS

SCHEMA: Final = "groundstation-sim-report/1"


@dataclass
class _Range:
    """Count, lowest and highest of a set of distinct unwrapped sequence counts."""

    count: int = 0
    low: int | None = None
    high: int | None = None

    def add(self, count: int, low: int, high: int) -> None:
        self.count += count
        self.low = low if self.low is None else min(self.low, low)
        self.high = high if self.high is None else max(self.high, high)

    @property
    def lost(self) -> int:
        """ICD section 6 net loss between the first and the newest count that arrived."""
        if self.low is None or self.high is None:
            return 0
        return self.high - self.low + 1 - self.count


@dataclass
class _VehicleTally:
    envelopes_published: int = 0
    envelopes_dropped: int = 0
    envelopes_valid: int = 0
    seqs: _Range = field(default_factory=_Range)
    faults: Counter[str] = field(default_factory=Counter)
    packets_sent: Counter[int] = field(default_factory=Counter)
    results: Counter[tuple[int, str]] = field(default_factory=Counter)
    intact: dict[tuple[int, int], _Range] = field(default_factory=dict)  # by (apid, boot)
    digest: Any = field(default_factory=hashlib.sha256)

    def lost(self, apid: int) -> int:
        """Net loss of an APID: within each boot (a reboot's jump loses nothing, ICD 6)."""
        return sum(r.lost for (a, _), r in self.intact.items() if a == apid)

    def restarts(self, apid: int) -> int:
        """Counter restarts the ground station recognises (ICD section 6, rule 3).

        Each boot after one with packets of the APID starts at count 0 (an anchor, always
        received): a restart, unless the newest count before was 16383, when 0 is just the
        next count.
        """
        highs = [r.high for (a, _), r in sorted(self.intact.items()) if a == apid]
        return sum(high is not None and high % SEQ_COUNT_MODULUS != SEQ_COUNT_MODULUS - 1
                   for high in highs[:-1])  # fmt: skip


@dataclass(frozen=True)
class SimulationReport:
    """The report as a JSON-ready document (see docs/simulator.md for the schema)."""

    document: Mapping[str, Any]

    def to_json(self) -> str:
        return json.dumps(self.document, indent=2, sort_keys=False) + "\n"

    def write(self, path: Path) -> None:
        """Write atomically, so a reader never sees half a report."""
        partial = path.with_name(path.name + ".partial")
        partial.write_text(self.to_json(), encoding="utf-8")
        partial.replace(path)


def payload_digest_update(digest: Any, payload: bytes) -> None:
    """Fold one payload into a per-topic digest: length-prefixed, in publish order."""
    digest.update(len(payload).to_bytes(4, "big"))
    digest.update(payload)


class ReportBuilder:
    """Accumulates accounts of published envelopes into the report."""

    def __init__(self, *, vehicles: tuple[str, ...], header: Mapping[str, Any]) -> None:
        self._header = dict(header)
        self._vehicles = {name: _VehicleTally() for name in vehicles}
        self._invalid_by_label: Counter[str] = Counter()
        self.envelopes = 0
        self.packets = 0
        self.last_ert: float | None = None

    def record(self, delivery: Delivery) -> None:
        """Count one envelope that was published (or deliberately dropped)."""
        account = delivery.account
        tally = self._vehicles[account.vehicle]
        self.envelopes += 1
        self.last_ert = delivery.ert
        if delivery.payload is None:
            tally.envelopes_dropped += 1
        else:
            tally.envelopes_published += 1
            payload_digest_update(tally.digest, delivery.payload)
        if account.valid:
            tally.envelopes_valid += 1
            tally.seqs.add(1, account.seq, account.seq)
        elif account.published:
            self._invalid_by_label[account.label] += 1
        tally.faults.update(account.faults)
        tally.packets_sent.update(account.packets_sent)
        self.packets += sum(account.packets_sent.values())
        tally.results.update(account.results)
        for key, (count, low, high) in account.intact.items():
            tally.intact.setdefault(key, _Range()).add(count, low, high)

    def build(self, **extra: Any) -> SimulationReport:
        """The report of everything recorded so far."""
        vehicles: dict[str, Any] = {}
        for name, tally in self._vehicles.items():
            apids = sorted(set(tally.packets_sent) | {apid for apid, _ in tally.results})
            vehicles[name] = {
                "topic": topic_for(name),
                "envelopes_published": tally.envelopes_published,
                "envelopes_dropped": tally.envelopes_dropped,
                "payload_sha256": tally.digest.hexdigest(),
                "packets_sent": {str(apid): tally.packets_sent[apid] for apid in apids},
                "faults": {kind: tally.faults[kind] for kind in FAULT_KINDS},
                "expected": {
                    "envelopes": {
                        "ok": tally.envelopes_valid,
                        "invalid": self._invalid_by_label[name],
                    },
                    "envelopes_lost": tally.seqs.lost,
                    "packets": {
                        str(apid): {result: tally.results[(apid, result)] for result in RESULTS}
                        for apid in apids
                    },
                    "packets_lost": {
                        str(apid): tally.lost(apid)
                        for apid in apids
                        if apid != INJECTED_APID  # not sequence-accounted (ICD section 6)
                    },
                    "sequence_restarts": {
                        str(apid): tally.restarts(apid) for apid in apids if apid != INJECTED_APID
                    },
                },
            }
        document = {
            "schema": SCHEMA,
            **self._header,
            **extra,
            "envelopes": self.envelopes,
            "packets": self.packets,
            "vehicles": vehicles,
            "expected_invalid_envelopes": {
                label: self._invalid_by_label[label] for label in (*self._vehicles, UNKNOWN_LABEL)
            },
        }
        return SimulationReport(document)
