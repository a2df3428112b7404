"""Directory output: the packets per vehicle and every envelope, for files-only workflows.

- `ingenuity.bin`, `perseverance.bin`: the packets of every valid envelope, concatenated in
  delivery order (what the daemon's decoder sees), for `groundstation decode`.
- `envelopes.msgpack`: a msgpack stream of one map per envelope as published,
  `{"t": send_at_s, "topic": str, "payload": bin}`; garbage payloads are kept as they
  were sent, which is why they are wrapped rather than concatenated.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Final

import msgpack
from groundstation.simulators.delivery import Delivery

ENVELOPES_FILE: Final = "envelopes.msgpack"
REPORT_FILE: Final = "report.json"
MAX_RECORD_BYTES: Final = 64 * 1024 * 1024  # bound for reading back: larger than any envelope


def packets_file(vehicle: str) -> str:
    """Name of a vehicle's concatenated-packets file."""
    return f"{vehicle}.bin"


@dataclass(frozen=True, kw_only=True)
class EnvelopeRecord:
    """One envelope read back from `envelopes.msgpack`."""

    send_at_s: float
    topic: str
    payload: bytes


class DirectorySink:
    """Writes deliveries to a directory; one owner of the open files (async with)."""

    def __init__(self, directory: Path, *, vehicles: tuple[str, ...]) -> None:
        self.directory = directory
        self.vehicles = vehicles
        self._envelopes: BinaryIO | None = None
        self._packets: dict[str, BinaryIO] = {}

    async def __aenter__(self) -> DirectorySink:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._envelopes = (self.directory / ENVELOPES_FILE).open("wb")
        for vehicle in self.vehicles:
            self._packets[vehicle] = (self.directory / packets_file(vehicle)).open("wb")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._envelopes is not None:
            self._envelopes.close()
        for stream in self._packets.values():
            stream.close()

    async def send(self, delivery: Delivery) -> None:
        """Append one envelope (and its decodable packets)."""
        assert self._envelopes is not None, "use DirectorySink in `async with`"
        if delivery.payload is None:
            return
        record = {"t": delivery.send_at_s, "topic": delivery.topic, "payload": delivery.payload}
        self._envelopes.write(msgpack.packb(record, use_bin_type=True))
        if delivery.packets:
            self._packets[delivery.account.vehicle].write(delivery.packets)

    async def drain(self) -> None:
        """Everything is written synchronously: nothing to wait for."""


def read_envelopes(path: Path) -> Iterator[EnvelopeRecord]:
    """The envelopes of an `envelopes.msgpack` file, in publish order."""
    with path.open("rb") as stream:
        unpacker = msgpack.Unpacker(
            stream, raw=False, max_buffer_size=MAX_RECORD_BYTES, strict_map_key=True
        )
        for record in unpacker:
            yield EnvelopeRecord(
                send_at_s=float(record["t"]), topic=str(record["topic"]), payload=record["payload"]
            )
