"""Vectorised CCSDS space packet decoder: bytes in, verdicts and calibrated columns out.

Pure (no logging, clock, files or asyncio): everything found is returned as data. The
steps, in the order docs/interfaces.md fixes (ICD sections 3, 4 and 6):

1. split each buffer into packets. Buffers that hold one fixed-length APID (the usual
   case) are split with no per-packet loop: each first header gives the length, the
   buffers are viewed as (n, L), and all headers are checked against the first at once.
   Other buffers are walked header by header, each found by the one before's length, in
   a compiled loop (groundstation.core.compiled). A structural fault ends its buffer in
   one `malformed` entry (the tail);
2. verify every packet's CRC: packets of equal length form one (n, L) array, a zero-copy
   strided view when they lie back to back, and a compiled loop checks its rows. The CRC
   of a packet including its big-endian CRC field is zero exactly when the CRC matches
   (see groundstation.core.crc);
3. unknown APIDs; with the envelopes' `ert`, packets dated after it (`clock_error`); the
   entries of redelivered envelopes (`duplicate`); then sequence accounting per APID
   (groundstation.core.sequence) of the CRC-valid packets that remain, keyed by packet time;
4. calibrate each fixed-length APID through one structured-dtype view; keep the ok packets.

Calibration is eager by default. A lazy decoder (`calibrate="lazy"`) does steps 1-3 alike
but calibrates a `ApidColumns.fields` only when it is first read, and `ApidColumns.rows`
then calibrates only the rows selected: the daemon reads one row of most APIDs and the
newest second of IMU samples, so converting every sample would be wasted work.

For large inputs the CRC (step 2) runs on a helper thread while this thread reads the
headers and calibrates (step 4, optimistically, for all packets of each APID): the
compiled CRC and numpy release the GIL, so the two cores share the work. Results do not
depend on it.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from types import MappingProxyType
from typing import Any, Final, Literal, Protocol, TypeVar

import numpy as np
from numpy.lib.stride_tricks import as_strided
from numpy.typing import NDArray

from groundstation.core.ccsds import (
    APID_MASK,
    CRC_BYTES,
    HEADER_BYTES,
    HEADER_DTYPE,
    MAX_APID,
    MAX_PACKET_BYTES,
    PACKET_ID_FIXED,
    PACKET_ID_FIXED_MASK,
    PACKET_LENGTH_OFFSET,
    PRIMARY_HEADER_BYTES,
    SEQ_COUNT_MASK,
    SEQ_COUNT_MODULUS,
    SEQ_FLAGS_MASK,
    SEQ_FLAGS_UNSEGMENTED,
)
from groundstation.core.compiled import compiled
from groundstation.core.crc import crc16_rows
from groundstation.core.definitions import NUMERIC_TYPES, FieldDef, PacketDef, VehicleDictionary
from groundstation.core.encoder import packet_time
from groundstation.core.envelope import DEFAULT_MAX_CLOCK_SKEW_S
from groundstation.core.sequence import SequenceWindow

__all__ = [
    "CLOCK_ERROR",
    "CRC_ERROR",
    "DUPLICATE",
    "MALFORMED",
    "OK",
    "RESULTS",
    "UNKNOWN_APID",
    "ApidColumns",
    "Calibration",
    "DecodeResult",
    "PacketDecoder",
    "Split",
]

RESULTS: Final = (  # ICD sections 5 and 6
    "ok", "crc_error", "malformed", "unknown_apid", "duplicate", "clock_error",
)  # fmt: skip
OK: Final = 0
CRC_ERROR: Final = 1
MALFORMED: Final = 2
UNKNOWN_APID: Final = 3
DUPLICATE: Final = 4
CLOCK_ERROR: Final = 5


# The smallest packet that has both headers and a CRC; shorter ones are malformed whatever
# their APID (docs/decisions.md, Decoder).
MIN_PACKET_BYTES: Final = HEADER_BYTES + CRC_BYTES
_NO_APID: Final = -1
_NOTHING: Final = np.zeros(0, dtype=np.intp)

# The helper thread gains 15-30 % on the decoder benchmark's inputs of 2 MiB and more
# (eager, two idle cores); smaller batches stay on one thread, where its start-up and the
# GIL hand-overs would cost more than the CRC it takes over.
_THREADED_MIN_BYTES: Final = 1 << 21
# Header bytes 0-7 as one big-endian u64: packet id, sequence flags and data length must
# equal the first header's in a buffer of one APID; the count and SCLK may differ.
_SAME_PACKET_MASK: Final = np.uint64(0xFFFF << 48 | SEQ_FLAGS_MASK << 32 | 0xFFFF << 16)

_Background = TypeVar("_Background")
_Foreground = TypeVar("_Foreground")

Index = slice | NDArray[np.intp]
"""Entries of the per-packet arrays: `slice(None)` when a step covers all of them."""

Calibration = Literal["eager", "lazy"]
"""When a decoder calibrates: during `decode`, or when `ApidColumns.fields` is first read."""


class _FieldSource(Protocol):
    """The fields of some packets of one APID, calibrated already or run by run on demand."""

    @property
    def names(self) -> tuple[str, ...]: ...

    def fields_with(self, name: str) -> dict[str, NDArray[Any]]:
        """The named field, and the others that come at no extra cost with it."""
        ...

    def rows(self, index: NDArray[np.intp]) -> _FieldSource: ...


class _Fields(Mapping[str, NDArray[Any]]):
    """Read-only fields that ask their source for each one once, when first read.

    A lazy source converts the whole run (`_Run`) of the field read: one numpy call for all
    of HELI_NAV's f32 fields, say, rather than one per field.
    """

    def __init__(self, source: _FieldSource) -> None:
        self._source = source
        self._read: dict[str, NDArray[Any]] = {}

    def __getitem__(self, name: str) -> NDArray[Any]:
        values = self._read.get(name)
        if values is None:
            if name not in self._source.names:
                raise KeyError(name)
            self._read.update(self._source.fields_with(name))
            values = self._read[name]
        return values

    def __iter__(self) -> Iterator[str]:
        return iter(self._source.names)

    def __len__(self) -> int:
        return len(self._source.names)


@dataclass(frozen=True, kw_only=True)
class ApidColumns:
    """The ok packets of one known APID, in input order, calibrated (ICD section 4)."""

    apid: int
    name: str
    index: NDArray[np.intp]
    """Positions in the DecodeResult's per-packet arrays."""
    seq: NDArray[np.uint16]
    time: NDArray[np.float64]
    """Packet time, UTC seconds (ICD section 3); sample k of IMU is at time + k / 500."""
    source: _FieldSource
    """Where `fields` comes from: arrays already calibrated, or raw bodies (lazy decoder)."""

    @cached_property
    def fields(self) -> Mapping[str, NDArray[Any]]:
        """Scaled, f32 and f64 fields as float64, other integers as int64 (enums and flag bytes
        as raw numbers), text as an object array of str; shape (n, samples) when samples > 1.

        A lazy decoder's columns calibrate each field when it is first read."""
        return _Fields(self.source)

    def rows(self, index: NDArray[np.intp]) -> ApidColumns:
        """The given rows (positions within these columns) only: cheap to calibrate when lazy."""
        return ApidColumns(
            apid=self.apid,
            name=self.name,
            index=self.index[index],
            seq=self.seq[index],
            time=self.time[index],
            source=self.source.rows(index),
        )


@dataclass(frozen=True, kw_only=True)
class DecodeResult:
    """One entry per packet (or malformed tail), in input order.

    Arrays are not copied needlessly: a constant column may be a read-only broadcast view,
    and the fields of one ApidColumns may share a base array. Copy before modifying. A lazy
    decoder's columns hold the decoded bytes until their fields have been read.
    """

    buffer: NDArray[np.intp]
    offset: NDArray[np.int64]
    length: NDArray[np.int64]
    apid: NDArray[np.int32]
    seq: NDArray[np.int32]
    time: NDArray[np.float64]
    result: NDArray[np.uint8]
    columns: Mapping[int, ApidColumns]
    lost: Mapping[int, int]
    """Net packets lost per known APID by this call; late packets make it smaller."""
    restarts: Mapping[int, int]
    """Counter restarts recognised per known APID by this call (ICD section 6, rule 3)."""
    taken_over: Mapping[int, int]
    """Net packets per known APID skipped across a session takeover (`excuse_gaps`): sent
    to another client with our client id, not lost."""

    def counts(self) -> dict[tuple[int, str], int]:
        """Packets per (apid, result name), the shape of gs_packets_total (ICD section 5)."""
        if self.apid.shape[0] and self.apid.min() == self.apid.max():  # one APID throughout
            apid = int(self.apid[0])
            by_result = np.bincount(self.result, minlength=len(RESULTS))
            return {(apid, RESULTS[r]): int(by_result[r]) for r in np.flatnonzero(by_result)}
        key = (self.apid.astype(np.int64) + 1) * len(RESULTS) + self.result
        tally = np.bincount(key, minlength=1)
        return {
            (int(k) // len(RESULTS) - 1, RESULTS[int(k) % len(RESULTS)]): int(tally[k])
            for k in np.flatnonzero(tally)
        }


@dataclass(frozen=True, kw_only=True)
class Split:
    """Entries of all buffers in input order (step 1), before CRC and classification.

    A pure function of the bytes and the dictionary's structure (`PacketDecoder.split`),
    so it may be found elsewhere, the daemon's parent process say, and handed to `decode`.
    """

    offset: NDArray[np.int64]  # in the joined data
    length: NDArray[np.int64]
    buffer: NDArray[np.intp]
    apid: NDArray[np.int32]
    tail: NDArray[np.intp]  # entries that are malformed tails


@dataclass(frozen=True, kw_only=True)
class _Chains:
    """The header chains of mixed buffers: their packets in input order, and where each
    buffer's chain stops (its malformed tail, if before the buffer's end)."""

    offset: NDArray[np.int64]
    length: NDArray[np.int64]
    apid: NDArray[np.int32]
    owner_rank: NDArray[np.int64]  # the packet's buffer, as a rank among the walked ones
    tail_start: NDArray[np.int64]  # one per walked buffer


@dataclass(frozen=True, kw_only=True)
class _Group:
    """Packets of one length: their entries and their bytes as (n, L) rows."""

    length: int
    index: Index
    rows: NDArray[np.uint8]


@dataclass(frozen=True, kw_only=True)
class _FixedApid:
    """Every packet of one fixed-length APID, before its CRC verdict is known."""

    positions: NDArray[np.intp]
    source: _FieldSource


@dataclass(frozen=True, slots=True)
class _Calibrated:
    """Fields calibrated during decode (eager); a subset of rows slices only what is read."""

    fields: dict[str, NDArray[Any]]
    selected: NDArray[np.intp] | None = None  # rows of `fields`; None: all of them

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.fields)

    def fields_with(self, name: str) -> dict[str, NDArray[Any]]:
        values = self.fields[name]
        return {name: values if self.selected is None else values[self.selected]}

    def rows(self, index: NDArray[np.intp]) -> _Calibrated:
        return _Calibrated(self.fields, index if self.selected is None else self.selected[index])


@dataclass(frozen=True)
class _FixedPackets:
    """Fixed-length packets as (n, L) bytes (lazy): only the runs and rows read are converted."""

    layout: _Layout
    packets: NDArray[np.uint8]

    @property
    def names(self) -> tuple[str, ...]:
        return self.layout.names

    @cached_property
    def bodies(self) -> NDArray[np.void]:
        return self.layout.bodies(self.packets)

    def fields_with(self, name: str) -> dict[str, NDArray[Any]]:
        return self.layout.calibrate_run(self.bodies, self.layout.run_of[name])

    def rows(self, index: NDArray[np.intp]) -> _FixedPackets:
        # Rows of bytes, not of records: numpy copies those several times faster.
        return _FixedPackets(self.layout, self.packets[index])


@dataclass(frozen=True)
class _VariableRecords:
    """Where variable-length packets lie in the decoded data (lazy): read when asked."""

    layout: _Layout
    data: NDArray[np.uint8]
    raw: bytes | memoryview
    offset: NDArray[np.int64]
    length: NDArray[np.int64]

    @property
    def names(self) -> tuple[str, ...]:
        return self.layout.names

    @cached_property
    def records(self) -> NDArray[np.void]:
        return _records(self.layout, self.data, self.offset)

    def fields_with(self, name: str) -> dict[str, NDArray[Any]]:
        run = self.layout.run_of.get(name)
        if run is None:  # the text field
            return {name: _messages(self.layout, self.raw, self.offset, self.length)}
        return self.layout.calibrate_run(self.records, run)

    def rows(self, index: NDArray[np.intp]) -> _VariableRecords:
        return _VariableRecords(
            self.layout, self.data, self.raw, self.offset[index], self.length[index]
        )


@dataclass(frozen=True, kw_only=True)
class _Run:
    """Adjacent body fields of one raw type and one calibration kind, converted in one call."""

    name: str
    fields: tuple[FieldDef, ...]
    output: type[np.float64] | type[np.int64]
    scale: NDArray[np.float64] | None  # per field, for scaled integers


@dataclass(frozen=True, kw_only=True)
class _Layout:
    """A packet's body regrouped into runs: fewer, larger conversions than field by field.

    `view_dtype` has the byte layout of `packet_dtype` (of `record_dtype` for variable-length
    packets), with each run as one subarray field, so a run of nine f32 (HELI_NAV) or the
    whole 10 x 6 i16 body (HELI_IMU) converts in a single ufunc call.
    """

    packet: PacketDef
    view_dtype: np.dtype[np.void]
    runs: tuple[_Run, ...]
    names: tuple[str, ...]
    """Every field, in the order `calibrate` and `_variable_fields` return them."""
    run_of: Mapping[str, _Run]
    """The run of each numeric field."""

    @classmethod
    def compile(cls, packet: PacketDef) -> _Layout:
        """Group the numeric fields into runs and build the matching view dtype."""
        groups: list[list[FieldDef]] = []
        for field in sorted(packet.numeric_fields, key=lambda f: f.offset):
            if groups and _same_run(groups[-1][-1], field):
                groups[-1].append(field)
            else:
                groups.append([field])
        runs = tuple(
            _Run(
                name=f"run{number}",
                fields=tuple(group),
                output=np.float64 if _is_float(group[0]) else np.int64,
                scale=_run_scale(group, packet.samples),
            )
            for number, group in enumerate(groups)
        )
        record = np.dtype(
            {
                "names": [run.name for run in runs],
                "formats": [
                    (NUMERIC_TYPES[run.fields[0].type], (len(run.fields),)) for run in runs
                ],
                "offsets": [run.fields[0].offset for run in runs],
                "itemsize": packet.record_dtype.itemsize,
            }
        )
        run_of = {field.name: run for run in runs for field in run.fields}
        text = () if packet.text_field is None else (packet.text_field.name,)
        names = (*run_of, *text)
        if packet.packet_dtype is None:  # variable length: applied to gathered records
            return cls(packet=packet, view_dtype=record, runs=runs, names=names, run_of=run_of)
        # The packet_dtype layout, its body records seen through the runs.
        body = np.dtype((record, (packet.samples,))) if packet.samples > 1 else record
        body_offset = packet.packet_dtype.fields["body"][1]  # type: ignore[index]
        view = np.dtype(
            {"names": ["body"], "formats": [body], "offsets": [body_offset],
             "itemsize": packet.packet_dtype.itemsize}
        )  # fmt: skip
        return cls(packet=packet, view_dtype=view, runs=runs, names=names, run_of=run_of)

    def bodies(self, packets: NDArray[np.uint8]) -> NDArray[np.void]:
        """The bodies of fixed-length packets given as (n, L) bytes, seen through the runs."""
        return packets.view(self.view_dtype)[:, 0]["body"]

    def calibrate(self, body: NDArray[np.void]) -> dict[str, NDArray[Any]]:
        """Engineering values (ICD section 4) of every numeric field of the given bodies."""
        fields: dict[str, NDArray[Any]] = {}
        for run in self.runs:
            fields |= self.calibrate_run(body, run)
        return fields

    @staticmethod
    def calibrate_run(body: NDArray[np.void], run: _Run) -> dict[str, NDArray[Any]]:
        """Engineering values of the fields of one run, converted in one call."""
        raw = body[run.name]  # (n, fields) or (n, samples, fields), big-endian
        values: NDArray[Any]
        if run.scale is not None:
            values = np.multiply(raw, run.scale, dtype=np.float64)
        elif raw.dtype.kind == "f":
            # A signalling NaN in an f32 field is data, not an error: no FE_INVALID warning.
            # (Only floats can raise it; the context costs as much as a one-row conversion.)
            with np.errstate(invalid="ignore"):
                values = raw.astype(run.output)
        else:
            values = raw.astype(run.output)
        return {field.name: values[..., column] for column, field in enumerate(run.fields)}


def _run_scale(group: list[FieldDef], samples: int) -> NDArray[np.float64] | None:
    """Per-field scales of a run of scaled integers, as (fields,) or (samples, fields).

    Tiled over the samples: a scale that broadcast along the samples axis would stop numpy
    merging samples x fields into one inner loop (HELI_IMU: 60 values, not 10 loops of 6).
    """
    if group[0].scale is None:
        return None
    scale = np.array([f.scale for f in group], dtype=np.float64)
    return np.tile(scale, (samples, 1)) if samples > 1 else scale


def _is_float(field: FieldDef) -> bool:
    """Scaled and floating-point fields decode as float64, other integers as int64."""
    return field.scale is not None or field.type.startswith("f")


def _same_run(previous: FieldDef, field: FieldDef) -> bool:
    return (
        previous.offset + previous.size == field.offset
        and previous.type == field.type
        and (previous.scale is None) == (field.scale is None)
    )


class PacketDecoder:
    """One vehicle's compiled dictionary plus its sequence-accounting state.

    `calibrate="lazy"` defers calibration to the first read of each `ApidColumns.fields`
    (see the module docstring); the verdicts and per-packet arrays do not depend on it.
    """

    def __init__(
        self,
        dictionary: VehicleDictionary,
        *,
        calibrate: Calibration = "eager",
        max_clock_skew_s: float = DEFAULT_MAX_CLOCK_SKEW_S,
    ) -> None:
        self.dictionary: Final = dictionary
        self.calibration: Final = calibrate
        self.max_clock_skew_s: Final = max_clock_skew_s
        size = MAX_APID + 1
        # Structure checks by APID (ICD section 6): unknown APIDs accept any length that
        # holds both headers and a CRC.
        self._known = np.zeros(size, dtype=np.bool_)
        self._min_length = np.full(size, MIN_PACKET_BYTES, dtype=np.int64)
        self._max_length = np.full(size, MAX_PACKET_BYTES, dtype=np.int64)
        self._fixed_length = np.zeros(size, dtype=np.int64)  # 0: not a fixed-length APID
        for apid, packet in dictionary.packets.items():
            self._known[apid] = True
            self._min_length[apid] = packet.min_length
            self._max_length[apid] = packet.max_length
            if packet.fixed_length:
                self._fixed_length[apid] = packet.max_length
        self._layouts = {apid: _Layout.compile(p) for apid, p in dictionary.packets.items()}
        self._windows = {
            apid: SequenceWindow(modulus=SEQ_COUNT_MODULUS) for apid in dictionary.packets
        }

    def split(self, data: NDArray[np.uint8], sizes: NDArray[np.int64]) -> Split:
        """Step 1 alone: the entries of buffers of `sizes` bytes, joined as `data`.

        Needs no decoder state: its result, handed to `decode` with the same buffers, is
        what `decode` would have found itself.
        """
        ends = np.cumsum(sizes)
        if ends.shape[0] and int(ends[-1]) != data.shape[0]:
            raise ValueError(f"buffer sizes add up to {int(ends[-1])}, not {data.shape[0]}")
        return self._split(data, ends - sizes, ends)

    def _window_totals(self) -> dict[int, tuple[int, int, int]]:
        return {
            apid: (window.lost, window.restarts, window.taken_over)
            for apid, window in self._windows.items()
        }

    def _window_changes(
        self, before: Mapping[int, tuple[int, int, int]]
    ) -> tuple[dict[int, int], dict[int, int], dict[int, int]]:
        """Per APID since `before`: lost and restarts (every known APID), taken over (those
        that changed)."""
        lost: dict[int, int] = {}
        restarts: dict[int, int] = {}
        taken_over: dict[int, int] = {}
        for apid, (lost_before, restarts_before, taken_before) in before.items():
            window = self._windows[apid]
            lost[apid] = window.lost - lost_before
            restarts[apid] = window.restarts - restarts_before
            if window.taken_over != taken_before:
                taken_over[apid] = window.taken_over - taken_before
        return lost, restarts, taken_over

    def excuse_gaps(self) -> None:
        """A session takeover happened before the next envelope: what each APID's next
        packet skips went to another client with our client id (ICD section 6 accounting,
        counted `taken_over` instead of lost)."""
        for window in self._windows.values():
            window.excuse_next_gap()

    def decode(
        self,
        buffers: Sequence[bytes | memoryview],
        *,
        split: Split | None = None,
        joined: memoryview | None = None,
        ert: NDArray[np.float64] | None = None,
        redelivered: NDArray[np.bool_] | None = None,
    ) -> DecodeResult:
        """Decode buffers (one per envelope) in order; packets never span buffers.

        `split`, if given, is `self.split` of these buffers, found beforehand. `joined`, if
        given, is the buffers already back to back in one memory, which the caller keeps
        unchanged while it reads the result (lazy fields read it after decode returns).
        `ert[i]`, if given, is the Earth-received time of buffer i: a CRC-valid packet of a
        known APID dated more than `max_clock_skew_s` after it is `clock_error`, and left
        out of sequence accounting (ICD section 6). `redelivered[i]` marks a buffer whose
        envelope was a copy of one seen: all its entries are `duplicate`, none accounted.
        """
        views = [memoryview(b).cast("B") for b in buffers]
        sizes = np.fromiter((v.nbytes for v in views), dtype=np.int64, count=len(views))
        raw = self._one_memory(buffers, views, sizes, joined)
        data = np.frombuffer(raw, dtype=np.uint8)
        ends = np.cumsum(sizes)
        starts = ends - sizes
        if split is None:
            split = self._split(data, starts, ends)
        elif split.offset.shape[0] and int(split.offset[-1] + split.length[-1]) > data.shape[0]:
            raise ValueError("the split given does not belong to these buffers")
        count = split.offset.shape[0]
        groups = [
            _Group(length=length, index=index, rows=_rows(data, split.offset[index], length))
            for length, index in _length_groups(split)
        ]

        # Steps 2 and 4: the CRC beside header reading and optimistic calibration.
        seq = np.empty(count, dtype=np.int32)
        time = np.empty(count, dtype=np.float64)
        seq[split.tail] = -1
        time[split.tail] = np.nan

        def read_and_calibrate() -> dict[int, _FixedApid]:
            for group in groups:
                header = group.rows[:, :HEADER_BYTES].view(HEADER_DTYPE)[:, 0]
                seq[group.index] = header["sequence"] & SEQ_COUNT_MASK
                time[group.index] = packet_time(header["coarse"], header["fine"])
            return self._fixed_apids(groups, split.apid)

        residues, fixed = _beside(
            lambda: [crc16_rows(group.rows) for group in groups],
            read_and_calibrate,
            # Lazy, there is no calibration for the CRC to run beside.
            threaded=self.calibration == "eager" and data.shape[0] >= _THREADED_MIN_BYTES,
        )
        result = np.zeros(count, dtype=np.uint8)  # OK
        result[split.tail] = MALFORMED
        crc_ok = np.zeros(count, dtype=np.bool_)
        for group, residue in zip(groups, residues, strict=True):
            good = residue == 0
            crc_ok[group.index] = good
            if not good.all():
                result[_positions(group.index, count)[~good]] = CRC_ERROR

        # Step 3: unknown APIDs, impossible times, redelivered envelopes, then sequence
        # accounting of the rest.
        accounted, present = self._set_aside(
            split, time, crc_ok, result, buffers=len(views), ert=ert, redelivered=redelivered
        )
        columns: dict[int, ApidColumns] = {}
        before = self._window_totals()
        for apid, packet in self.dictionary.packets.items():
            ok = self._account(
                apid,
                present=present.get(apid, 0),
                accounted=accounted,
                packet_apid=split.apid,
                seq=seq,
                time=time,
                result=result,
            )
            if _size(ok, count) == 0:
                continue
            source: _FieldSource
            if apid not in fixed:
                index = _positions(ok, count)
                source = self._variable_source(apid, data, raw, split.offset[ok], split.length[ok])
            elif _size(ok, count) == fixed[apid].positions.shape[0]:
                index, source = fixed[apid].positions, fixed[apid].source
            else:
                index, source = _drop_rejected(fixed[apid], result)
            columns[apid] = ApidColumns(
                apid=apid,
                name=packet.name,
                index=index,
                seq=seq[ok].astype(np.uint16),
                time=time[ok],
                source=source,
            )

        lost, restarts, taken_over = self._window_changes(before)
        return DecodeResult(
            buffer=split.buffer,
            offset=split.offset if len(views) == 1 else split.offset - starts[split.buffer],
            length=split.length,
            apid=split.apid,
            seq=seq,
            time=time,
            result=result,
            columns=MappingProxyType(columns),
            lost=MappingProxyType(lost),
            restarts=MappingProxyType(restarts),
            taken_over=MappingProxyType(taken_over),
        )

    def _one_memory(
        self,
        buffers: Sequence[bytes | memoryview],
        views: list[memoryview],
        sizes: NDArray[np.int64],
        joined: memoryview | None,
    ) -> bytes | memoryview:
        """The buffers as one memory, so that every step works on a single array: `joined`,
        the only buffer, or one copy. Lazy fields read the data after decode returns: they
        must not see a caller's buffer reused."""
        if joined is not None:
            raw = joined.cast("B")
            if raw.nbytes != int(sizes.sum()):
                raise ValueError(f"joined holds {raw.nbytes} bytes, the buffers {sizes.sum()}")
            return raw
        if len(views) == 1 and (self.calibration == "eager" or isinstance(buffers[0], bytes)):
            return views[0]
        return b"".join(views)

    def _set_aside(
        self,
        split: Split,
        time: NDArray[np.float64],
        crc_ok: NDArray[np.bool_],
        result: NDArray[np.uint8],
        *,
        buffers: int,
        ert: NDArray[np.float64] | None,
        redelivered: NDArray[np.bool_] | None,
    ) -> tuple[NDArray[np.bool_], dict[int, int]]:
        """Step 3 before accounting: mark unknown APIDs, impossible times and redelivered
        envelopes; the entries left to account, and how many per APID."""
        accounted = crc_ok
        if ert is not None:
            if ert.shape[0] != buffers:
                raise ValueError(f"{ert.shape[0]} ert values for {buffers} buffers")
            not_after = ert + self.max_clock_skew_s
            too_late = time > (not_after[0] if buffers == 1 else not_after[split.buffer])
            if too_late.any():
                accounted = crc_ok & ~too_late
                result[accounted ^ crc_ok] = CLOCK_ERROR
        present = _present(split.apid, crc_ok)
        for apid in present.keys() - self.dictionary.packets.keys():
            result[crc_ok & (split.apid == apid)] = UNKNOWN_APID
        if redelivered is not None and redelivered.any():
            if redelivered.shape[0] != buffers:
                raise ValueError(f"{redelivered.shape[0]} redelivered flags, {buffers} buffers")
            copies = redelivered[split.buffer]
            result[copies] = DUPLICATE
            accounted = accounted & ~copies
        if accounted is not crc_ok:
            present = _present(split.apid, accounted)
        return accounted, present

    def _account(
        self,
        apid: int,
        *,
        present: int,
        accounted: NDArray[np.bool_],
        packet_apid: NDArray[np.int32],
        seq: NDArray[np.int32],
        time: NDArray[np.float64],
        result: NDArray[np.uint8],
    ) -> Index:
        """Step 3: sequence accounting of one APID's packets left to account; the ok ones."""
        count = result.shape[0]
        if present == count:  # the common case, one APID throughout: no index needed
            selected: Index = slice(None)
        else:
            selected = np.flatnonzero(accounted & (packet_apid == apid)) if present else _NOTHING
        duplicate = self._windows[apid].account_many(seq[selected], time[selected])
        if not duplicate.any():
            return selected
        positions = _positions(selected, count)
        result[positions[duplicate]] = DUPLICATE
        return positions[~duplicate]

    def _variable_source(
        self,
        apid: int,
        data: NDArray[np.uint8],
        raw: bytes | memoryview,
        offset: NDArray[np.int64],
        length: NDArray[np.int64],
    ) -> _FieldSource:
        """Step 4 for the ok packets of a variable-length APID."""
        layout = self._layouts[apid]
        if self.calibration == "lazy":
            return _VariableRecords(layout, data, raw, offset, length)
        return _Calibrated(_variable_fields(layout, data, raw, offset, length))

    def _fixed_apids(self, groups: list[_Group], apid: NDArray[np.int32]) -> dict[int, _FixedApid]:
        """Step 4 for fixed-length APIDs: one structured view of each APID's packets."""
        count = apid.shape[0]
        by_length = {group.length: group for group in groups}
        fixed: dict[int, _FixedApid] = {}
        for packet_apid, layout in self._layouts.items():
            group = by_length.get(layout.packet.max_length)
            if group is None or not layout.packet.fixed_length:
                continue
            mine = apid[group.index] == packet_apid
            positions = _positions(group.index, count)
            rows = group.rows
            if not mine.all():  # other APIDs share this length
                if not mine.any():
                    continue
                positions, rows = positions[mine], rows[mine]
            source: _FieldSource = (
                _FixedPackets(layout, rows)
                if self.calibration == "lazy"
                else _Calibrated(layout.calibrate(layout.bodies(rows)))
            )
            fixed[packet_apid] = _FixedApid(positions=positions, source=source)
        return fixed

    def _split(
        self,
        data: NDArray[np.uint8],
        starts: NDArray[np.int64],
        ends: NDArray[np.int64],
    ) -> Split:
        """Step 1: find every packet and malformed tail of every buffer (ICD sections 3, 6)."""
        sizes = ends - starts
        has_header = sizes >= PRIMARY_HEADER_BYTES
        first = np.zeros((sizes.shape[0], 3), dtype=np.int64)  # packet id, sequence, length
        if has_header.any():
            first[has_header] = _header_words(data, starts[has_header])
        length = first[:, 2] + PACKET_LENGTH_OFFSET
        first_apid = (first[:, 0] & APID_MASK).astype(np.int32)
        # Buffers whose first header is a known fixed-length APID that tiles the buffer.
        uniform = (
            has_header
            & ((first[:, 0] & PACKET_ID_FIXED_MASK) == PACKET_ID_FIXED)
            & ((first[:, 1] & SEQ_FLAGS_MASK) == SEQ_FLAGS_UNSEGMENTED)
            & (self._fixed_length[first_apid] == length)
            & (sizes % length == 0)
        )
        fast = np.flatnonzero(uniform)
        per_buffer = sizes[fast] // length[fast]
        total = int(per_buffer.sum())
        expected = (
            first[:, 0].astype(np.uint64) << np.uint64(48)
            | np.uint64(SEQ_FLAGS_UNSEGMENTED << 32)
            | first[:, 2].astype(np.uint64) << np.uint64(16)
        )
        if fast.shape[0] == 1 or (
            1 < fast.shape[0] == sizes.shape[0] and np.all(expected[fast] == expected[fast[0]])
        ):
            # All in one run (one buffer, or all buffers of one APID): one strided view.
            step = int(length[fast[0]])
            start = int(starts[fast[0]])
            offset = np.arange(start, start + total * step, step, dtype=np.int64)
            head = as_strided(data[start:], (total, 8), (step, 1)).view(">u8")[:, 0]
            agree = (head & _SAME_PACKET_MASK) == expected[fast[0]]
            # Constant columns as read-only broadcast views: no memory, no writes.
            owner = (
                np.broadcast_to(np.intp(fast[0]), (total,))
                if fast.shape[0] == 1
                else np.repeat(fast, per_buffer)
            )
            packet_length = np.broadcast_to(np.int64(step), (total,))
            packet_apid = np.broadcast_to(first_apid[fast[0]], (total,))
        else:
            owner = np.repeat(fast, per_buffer)
            packet_length = length[owner]
            rank = np.arange(total, dtype=np.int64) - np.repeat(
                np.cumsum(per_buffer) - per_buffer, per_buffer
            )
            offset = starts[owner] + rank * packet_length
            head = (
                _gather(data, offset, 8).view(">u8")[:, 0]
                if total
                else np.zeros(0, dtype=np.uint64)
            )
            agree = (head & _SAME_PACKET_MASK) == expected[owner]
            packet_apid = first_apid[owner]
        walk = ~uniform
        if not agree.all():
            # A header that disagrees with its buffer's first: walk that buffer instead.
            walk[owner[~agree]] = True
            keep = ~walk[owner]
            offset, packet_length, owner = offset[keep], packet_length[keep], owner[keep]
            packet_apid = packet_apid[keep]
        fast_split = Split(
            offset=offset,
            length=packet_length,
            buffer=owner,
            apid=packet_apid,
            tail=np.zeros(0, dtype=np.intp),
        )
        walk_buffers = np.flatnonzero(walk)
        if walk_buffers.shape[0] == 0:
            return fast_split
        return _merge(fast_split, self._walk(data, walk_buffers, starts, ends))

    def _follow_lengths(
        self, data: NDArray[np.uint8], starts: NDArray[np.int64], ends: NDArray[np.int64]
    ) -> _Chains:
        """Each buffer's chain of sound headers, each found by the previous one's length:
        counted first, then written into arrays of that size."""
        tail_start = np.empty(starts.shape[0], dtype=np.int64)
        bounds = (data, starts, ends, self._min_length, self._max_length)
        count = _follow_headers(*bounds, np.zeros((4, 0), dtype=np.int64), tail_start)
        packets = np.empty((4, count), dtype=np.int64)
        _follow_headers(*bounds, packets, tail_start)
        offset, length, apid, owner_rank = packets
        return _Chains(
            offset=offset,
            length=length,
            apid=apid.astype(np.int32),
            owner_rank=owner_rank,
            tail_start=tail_start,
        )

    def _walk(
        self,
        data: NDArray[np.uint8],
        buffers: NDArray[np.intp],
        starts: NDArray[np.int64],
        ends: NDArray[np.int64],
    ) -> Split:
        """Step 1 for mixed buffers: the header chains, and a malformed tail where one stops."""
        chains = self._follow_lengths(data, starts[buffers], ends[buffers])
        tail_start = chains.tail_start
        tail_end = ends[buffers]
        has_tail = tail_start < tail_end
        tail_start, tail_end = tail_start[has_tail], tail_end[has_tail]
        packets = Split(
            offset=chains.offset,
            length=chains.length,
            buffer=buffers[chains.owner_rank],
            apid=chains.apid,
            tail=np.zeros(0, dtype=np.intp),
        )
        tails = Split(
            offset=tail_start,
            length=tail_end - tail_start,
            buffer=buffers[has_tail],
            apid=_tail_apid(data, tail_start, tail_end),
            tail=np.arange(tail_start.shape[0], dtype=np.intp),
        )
        return _merge(packets, tails)


@compiled(
    "int64(Array(uint8, 1, 'C', readonly=True), Array(int64, 1, 'C', readonly=True),"
    " Array(int64, 1, 'C', readonly=True), Array(int64, 1, 'C', readonly=True),"
    " Array(int64, 1, 'C', readonly=True), Array(int64, 2, 'C'), Array(int64, 1, 'C'))"
)
def _follow_headers(  # noqa: PLR0917 - compiled code takes its arrays by position
    data: NDArray[np.uint8],
    starts: NDArray[np.int64],
    ends: NDArray[np.int64],
    min_length: NDArray[np.int64],
    max_length: NDArray[np.int64],
    packets: NDArray[np.int64],
    tail_start: NDArray[np.int64],
) -> int:
    """Follow each buffer's headers from its start while they are sound (ICD section 3:
    version 0, telemetry, secondary header, unsegmented, and a length its APID allows that
    ends inside the buffer); `tail_start[b]` is where buffer b's chain stops, its end when
    every byte is in a packet. Returns how many packets there are, and writes as many as
    `packets` (rows: offset, length, APID, buffer) has columns for."""
    found = 0
    capacity = packets.shape[1]
    for buffer in range(starts.shape[0]):
        at = starts[buffer]
        end = ends[buffer]
        while at + PRIMARY_HEADER_BYTES <= end:
            packet_id = np.int64(data[at]) << 8 | np.int64(data[at + 1])
            sequence_flags = np.int64(data[at + 2]) << 8 & SEQ_FLAGS_MASK
            if (packet_id & PACKET_ID_FIXED_MASK) != PACKET_ID_FIXED:
                break
            if sequence_flags != SEQ_FLAGS_UNSEGMENTED:
                break
            apid = packet_id & APID_MASK
            size = (np.int64(data[at + 4]) << 8 | np.int64(data[at + 5])) + PACKET_LENGTH_OFFSET
            if size < min_length[apid] or size > max_length[apid] or at + size > end:
                break
            if found < capacity:
                packets[0, found] = at
                packets[1, found] = size
                packets[2, found] = apid
                packets[3, found] = buffer
            found += 1
            at += size
        tail_start[buffer] = at
    return found


def _drop_rejected(
    fixed: _FixedApid, result: NDArray[np.uint8]
) -> tuple[NDArray[np.intp], _FieldSource]:
    """A fixed-length APID's ok packets only: no CRC or clock errors, no duplicates."""
    keep = np.flatnonzero(result[fixed.positions] == OK)
    return fixed.positions[keep], fixed.source.rows(keep)


def _present(apid: NDArray[np.int32], crc_ok: NDArray[np.bool_]) -> dict[int, int]:
    """CRC-valid packets per APID (ICD section 6 accounts only for those)."""
    if crc_ok.all():
        if apid.shape[0] and apid.min() == apid.max():  # one APID throughout
            return {int(apid[0]): int(apid.shape[0])}
        valid = apid
    else:
        valid = apid[crc_ok]
    tally = np.bincount(valid, minlength=1)
    return {int(a): int(tally[a]) for a in np.flatnonzero(tally)}


def _tail_apid(
    data: NDArray[np.uint8], start: NDArray[np.int64], end: NDArray[np.int64]
) -> NDArray[np.int32]:
    """The APID a malformed tail starts with, if its first two bytes look like a packet id.

    Otherwise -1: too short to tell, or not version 0 / telemetry / secondary header.
    """
    apid = np.full(start.shape[0], _NO_APID, dtype=np.int32)
    two_bytes = end - start >= 2
    if two_bytes.any():
        at = start[two_bytes]
        packet_id = data[at].astype(np.int64) << 8 | data[at + 1]
        apid[two_bytes] = np.where(
            (packet_id & PACKET_ID_FIXED_MASK) == PACKET_ID_FIXED,
            packet_id & APID_MASK,
            _NO_APID,
        )
    return apid


def _merge(first: Split, second: Split) -> Split:
    """Two sets of entries, each in input order, as one in input order."""
    if second.offset.shape[0] == 0:
        return first
    if first.offset.shape[0] == 0:
        return second
    offset = np.concatenate([first.offset, second.offset])
    # Two sorted runs: the stable sort (timsort) merges them in linear time.
    order = np.argsort(offset, kind="stable")
    is_tail = np.zeros(offset.shape[0], dtype=np.bool_)
    is_tail[first.tail] = True
    is_tail[first.offset.shape[0] + second.tail] = True
    return Split(
        offset=offset[order],
        length=np.concatenate([first.length, second.length])[order],
        buffer=np.concatenate([first.buffer, second.buffer])[order],
        apid=np.concatenate([first.apid, second.apid])[order],
        tail=np.flatnonzero(is_tail[order]),
    )


def _beside(
    background: Callable[[], _Background],
    foreground: Callable[[], _Foreground],
    *,
    threaded: bool,
) -> tuple[_Background, _Foreground]:
    """Run two independent jobs, on a helper thread for the first when worth it."""
    if not threaded:
        return background(), foreground()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="crc") as pool:
        job = pool.submit(background)
        ahead = foreground()
        return job.result(), ahead


def _header_words(data: NDArray[np.uint8], offsets: NDArray[np.int64]) -> NDArray[np.uint16]:
    """The three big-endian 16-bit words of the primary headers at the given offsets, as
    (n, 3), in one gather; callers widen only the words they use."""
    if offsets.shape[0] == 0:
        return np.zeros((0, 3), dtype=">u2")
    words: NDArray[np.uint16] = _gather(data, offsets, PRIMARY_HEADER_BYTES).view(">u2")
    return words


def _gather(data: NDArray[np.uint8], offsets: NDArray[np.int64], width: int) -> NDArray[np.uint8]:
    """The `width` bytes at each offset, as (n, width).

    One fancy index of a view with a `width`-byte item at every byte offset: numpy copies
    each item whole, 2-3x faster than indexing the rows of a sliding_window_view (measured
    on IMU, NAV and 6-byte header gathers). Offsets must leave `width` bytes in `data`.
    """
    if offsets.shape[0] == 0:
        return np.zeros((0, width), dtype=np.uint8)
    items = np.ndarray(
        (data.shape[0] - width + 1,), dtype=np.dtype((np.void, width)), buffer=data, strides=(1,)
    )
    gathered: NDArray[np.uint8] = items[offsets].view(np.uint8).reshape(-1, width)
    return gathered


def _length_groups(split: Split) -> list[tuple[int, Index]]:
    """Packets (not tails) grouped by length, each group in input order."""
    count = split.offset.shape[0]
    packets: Index = slice(None)
    if split.tail.shape[0]:
        is_packet = np.ones(count, dtype=np.bool_)
        is_packet[split.tail] = False
        packets = np.flatnonzero(is_packet)
    lengths = split.length[packets]
    if lengths.shape[0] == 0:
        return []
    if lengths.min() == lengths.max():
        return [(int(lengths[0]), packets)]
    # A stable radix sort (16-bit keys: the data length field) keeps input order per group.
    order = np.argsort((lengths - PACKET_LENGTH_OFFSET).astype(np.uint16), kind="stable")
    ordered = lengths[order]
    bounds = [0, *(np.flatnonzero(np.diff(ordered)) + 1).tolist(), ordered.shape[0]]
    positions = _positions(packets, count)[order]
    return [(int(ordered[low]), positions[low:high]) for low, high in itertools.pairwise(bounds)]


def _rows(data: NDArray[np.uint8], offsets: NDArray[np.int64], length: int) -> NDArray[np.uint8]:
    """Packets of one length as (n, L): a zero-copy view when they lie back to back."""
    first = int(offsets[0])
    # Offsets grow by at least `length` each, so equal span means no gap anywhere.
    if int(offsets[-1]) - first == (offsets.shape[0] - 1) * length:
        return as_strided(
            data[first:], shape=(offsets.shape[0], length), strides=(length, 1), writeable=False
        )
    return _gather(data, offsets, length)


def _variable_fields(
    layout: _Layout,
    data: NDArray[np.uint8],
    raw: bytes | memoryview,
    offsets: NDArray[np.int64],
    lengths: NDArray[np.int64],
) -> dict[str, NDArray[Any]]:
    """Fields of variable-length packets: the fixed part gathered, the text decoded one by one.

    Text is UTF-8 decoded with errors="replace": a bad byte becomes U+FFFD rather than losing
    the event (docs/decisions.md, Decoder).
    """
    fields = layout.calibrate(_records(layout, data, offsets))
    text = layout.packet.text_field
    if text is not None:
        fields[text.name] = _messages(layout, raw, offsets, lengths)
    return fields


def _records(
    layout: _Layout, data: NDArray[np.uint8], offsets: NDArray[np.int64]
) -> NDArray[np.void]:
    """The fixed parts of variable-length packets, gathered as records of the layout."""
    records = _gather(data, offsets + HEADER_BYTES, layout.view_dtype.itemsize)
    return records.view(layout.view_dtype)[:, 0]


def _messages(
    layout: _Layout,
    raw: bytes | memoryview,
    offsets: NDArray[np.int64],
    lengths: NDArray[np.int64],
) -> NDArray[np.object_]:
    """The text after the fixed part of each packet, as an object array of str."""
    text_start = HEADER_BYTES + layout.view_dtype.itemsize
    messages = [
        str(raw[offset + text_start : offset + length - CRC_BYTES], "utf-8", "replace")
        for offset, length in zip(offsets.tolist(), lengths.tolist(), strict=True)
    ]
    column = np.empty(len(messages), dtype=object)
    column[:] = messages
    return column


def _positions(index: Index, count: int) -> NDArray[np.intp]:
    """An Index as explicit positions."""
    return np.arange(count, dtype=np.intp) if isinstance(index, slice) else index


def _size(index: Index, count: int) -> int:
    return count if isinstance(index, slice) else int(index.shape[0])
