"""The history writer: an archive consumer that sends ICD section 7's samples by remote write.

It reads the archive in arrival order from its own durable position, decodes with the same
`Pipeline` as live ingest and replay (so duplicates and counts are the same), derives the
samples (`HistorySamples`) and POSTs them in `WriteRequest`s of at most
`batch_max_samples`. It runs in a thread of its own: ingest never waits for it, and a
receiver that is down only makes `gs_history_lag_seconds` grow (docs/history.md).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import math
import multiprocessing
import random
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal, TypeAlias

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from groundstation import __version__
from groundstation.config import HistoryConfig
from groundstation.consumers.history.remote_write import (
    CONTENT_ENCODING,
    CONTENT_TYPE,
    PROTOCOL_VERSION,
    Series,
    compress,
    encode_write_request,
)
from groundstation.consumers.history.samples import HistorySamples, SampleBatch, SeriesKey
from groundstation.consumers.pipeline import Pipeline, archived_batches
from groundstation.consumers.telemetry import Telemetry
from groundstation.core.definitions import VehicleDictionary
from groundstation.core.envelope import DEFAULT_MAX_CLOCK_SKEW_S, Arrival
from groundstation.ingest.archive import (
    ArchiveReader,
    ArchiveRecord,
    list_segments,
    write_atomically,
)

if TYPE_CHECKING:
    from multiprocessing.context import BaseContext
    from multiprocessing.sharedctypes import SynchronizedArray

__all__ = [
    "POSITION_FILE",
    "HistoryCollector",
    "HistoryStatus",
    "HistoryWriter",
    "Position",
    "Verdict",
    "load_position",
    "save_position",
]

logger = logging.getLogger(__name__)

POSITION_FILE: Final = "history-position.json"
USER_AGENT: Final = f"groundstation-history/{__version__}"
# Prometheus refuses a sample outside its window with one of these, and rolls back the
# whole request (2.42: "too old sample" as a 500, "out of bounds" as a 400).
_WINDOW_ERRORS: Final = ("too old sample", "out of bounds", "out of order sample")
_DUPLICATE_ERROR: Final = "duplicate sample for timestamp"
Result = Literal["ok", "rejected", "backfill"]
Answer = Literal["ok", "rejected", "window", "duplicate"]
Sample = tuple[int, SeriesKey, float]  # ms timestamp, series, value


@dataclass(frozen=True, slots=True)
class Position:
    """The next record to read: `records` records of `segment` are done (all before it too)."""

    segment: str
    records: int


def load_position(directory: Path) -> Position | None:
    path = directory / POSITION_FILE
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        return Position(segment=str(document["segment"]), records=int(document["records"]))
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as error:
        # Starting over re-sends samples the receiver already holds: harmless, unchanged.
        logger.warning("history position unreadable (%s); starting from the beginning", error)
        return None


def save_position(directory: Path, position: Position) -> None:
    data = json.dumps({"segment": position.segment, "records": position.records}).encode()
    write_atomically(directory / POSITION_FILE, data)


@dataclass(frozen=True, slots=True)
class Verdict:
    """The receiver's answer to one POST."""

    status: int | None  # None: no answer (connection refused, reset, timed out)
    body: str

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def outside_window(self) -> bool:
        """Some sample lies outside the receiver's window: the request was rolled back."""
        text = self.body.lower()
        return self.status is not None and any(error in text for error in _WINDOW_ERRORS)

    @property
    def duplicate(self) -> bool:
        """A sample with another value at a timestamp already stored: that sample only is bad."""
        return self.status is not None and _DUPLICATE_ERROR in self.body.lower()

    @property
    def retry(self) -> bool:
        return self.status is None or (self.status >= 500 and not self.outside_window)


def post(url: str, body: bytes, *, timeout_s: float) -> Verdict:
    """One remote-write POST with the headers the 1.0 spec requires."""
    request = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={
            "Content-Encoding": CONTENT_ENCODING,
            "Content-Type": CONTENT_TYPE,
            "X-Prometheus-Remote-Write-Version": PROTOCOL_VERSION,
            "User-Agent": USER_AGENT,
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return Verdict(status=response.status, body="")
    except urllib.error.HTTPError as error:
        with contextlib.closing(error):
            text = error.read(4096).decode("utf-8", errors="replace")
        return Verdict(status=error.code, body=text)
    except (OSError, http.client.HTTPException) as error:  # URLError is an OSError
        return Verdict(status=None, body=str(error))


# The writer's batches (and backfill's, which must derive the same samples: flight
# distance follows HK and NAV in packet-time order within a batch). Decoded, with their
# samples, they are what the writer holds: a megabyte of payloads keeps that near 100 MB
# (8 MiB took it to 300-360 MB on 65 KiB IMU envelopes).
HISTORY_BATCH_MAX_BYTES: Final = 1 << 20


def history_batch_bytes(ingest_batch_max_bytes: int) -> int:
    """The payload bytes of a history batch under `ingest.batch_max_bytes`."""
    return min(ingest_batch_max_bytes, HISTORY_BATCH_MAX_BYTES)


SharedStatus: TypeAlias = "SynchronizedArray[float]"
"""HistoryStatus's numbers, shared with the daemon when the writer runs in its own process."""


class HistoryStatus:
    """Counters and gauges of the writer, read by the collector from another thread or
    process: a few doubles in shared memory, updated under its lock."""

    FIELDS: Final = 6
    _OK, _REJECTED, _BACKFILL, _UP, _NEWEST_ARCHIVED, _NEWEST_WRITTEN = range(FIELDS)
    _RESULTS: Final[dict[Result, int]] = {"ok": _OK, "rejected": _REJECTED, "backfill": _BACKFILL}

    def __init__(self, shared: SharedStatus | None = None) -> None:
        self._shared = shared if shared is not None else self.new_shared()

    @classmethod
    def new_shared(cls, context: BaseContext | None = None) -> SharedStatus:
        """The numbers, zero but for `up` and the newest written receive time: NaN until
        the writer has looked at the archive (then the position's record, or with no
        position the first record: lag is counted from where the writer stands)."""
        shared = (context or multiprocessing.get_context("spawn")).Array("d", cls.FIELDS)
        shared[cls._NEWEST_WRITTEN] = math.nan
        # Up until a write fails: a station with nothing to write (or a writer starting)
        # must not look like a receiver that is down.
        shared[cls._UP] = 1.0
        return shared

    @property
    def samples(self) -> dict[Result, int]:
        with self._shared.get_lock():
            return {result: int(self._shared[at]) for result, at in self._RESULTS.items()}

    @property
    def up(self) -> bool:
        return bool(self._shared[self._UP])

    @up.setter
    def up(self, value: bool) -> None:
        self._shared[self._UP] = float(value)

    def count(self, result: Result, samples: int) -> None:
        with self._shared.get_lock():
            self._shared[self._RESULTS[result]] += samples

    def note(self, received_at: float, *, written: bool) -> None:
        """A record's receive time: read (archived), or with its samples answered (written).

        Newest archived: the archive's last record when the writer started, then every
        record it reads."""
        with self._shared.get_lock():
            shared = self._shared
            shared[self._NEWEST_ARCHIVED] = max(shared[self._NEWEST_ARCHIVED], received_at)
            newest_written = shared[self._NEWEST_WRITTEN]
            if math.isnan(newest_written):
                shared[self._NEWEST_WRITTEN] = received_at
            elif written:
                shared[self._NEWEST_WRITTEN] = max(newest_written, received_at)

    def lag_seconds(self, *, newest_received: float = 0.0) -> float:
        """`newest_received`: the receive time of the newest envelope the daemon archived,
        which the writer has not read yet while it works through older records or waits
        for its receiver. 0 until the writer has looked at the archive."""
        with self._shared.get_lock():
            newest_written = self._shared[self._NEWEST_WRITTEN]
            if math.isnan(newest_written):
                return 0.0
            newest = max(self._shared[self._NEWEST_ARCHIVED], newest_received)
            return max(0.0, newest - newest_written)


class HistoryCollector(Collector):
    """gs_history_samples_total, gs_history_lag_seconds, gs_history_up (ICD section 5)."""

    def __init__(
        self, status: HistoryStatus, *, newest_received: Callable[[], float] = lambda: 0.0
    ) -> None:
        self._status = status
        self._newest_received = newest_received

    def collect(self) -> Iterator[Metric]:
        samples = CounterMetricFamily(
            "gs_history_samples_total", "History samples written, by result.", labels=("result",)
        )
        for result, count in sorted(self._status.samples.items()):
            samples.add_metric((result,), float(count))
        yield samples
        yield GaugeMetricFamily(
            "gs_history_lag_seconds",
            "Receive time of the newest archived envelope minus that of the newest written.",
            value=self._status.lag_seconds(newest_received=self._newest_received()),
        )
        yield GaugeMetricFamily(
            "gs_history_up",
            "0 while the last write to the history receiver failed, else 1.",
            value=float(self._status.up),
        )


class HistoryWriter:
    """Archive -> decode -> samples -> remote write, from a durable position; one thread."""

    def __init__(
        self,
        config: HistoryConfig,
        *,
        archive_dir: Path,
        dictionaries: Mapping[str, VehicleDictionary],
        max_payload_bytes: int,
        batch_max_envelopes: int,
        batch_max_bytes: int,
        max_clock_skew_s: float = DEFAULT_MAX_CLOCK_SKEW_S,
        send: Callable[[bytes], Verdict] | None = None,
        sleep: Callable[[float], bool] | None = None,
        status: HistoryStatus | None = None,
    ) -> None:
        if config.url is None:
            raise ValueError("the history writer needs history.url")
        url = config.url
        self.config = config
        self.archive_dir = archive_dir
        self.status = status if status is not None else HistoryStatus()
        self._dictionaries = dictionaries
        self._max_payload_bytes = max_payload_bytes
        self._batch_envelopes = batch_max_envelopes
        self._batch_bytes = history_batch_bytes(batch_max_bytes)
        self._send = send or (lambda body: post(url, body, timeout_s=config.timeout_s))
        self.stop = threading.Event()
        self._sleep = sleep or self.stop.wait  # True: stop was asked for
        self._random = random.Random()
        # Judged as the live path judges (ingest.max_clock_skew_s), so the counts agree.
        self._max_clock_skew_s = max_clock_skew_s
        self._pipeline = Pipeline(
            dictionaries, telemetry=Telemetry(dictionaries), max_clock_skew_s=max_clock_skew_s
        )
        self._samples = HistorySamples(dictionaries)
        self._position: Position | None = None
        self._rebuilt = False
        self._position_unsaved = False  # the last save failed (a full file system)

    def run(self) -> None:
        """Until `stop` is set: catch up, then follow the archive every poll interval."""
        while not self.stop.is_set():
            if not self.catch_up():
                self.stop.wait(self.config.poll_interval_s)

    def catch_up(self) -> bool:
        """Write everything archived after the position; False when there was nothing."""
        if not self._rebuilt:
            self._rebuild()
        did_work = False
        for name, records in self._unread():
            for batch in self._batches(record for _, record in records):
                if self.stop.is_set():
                    return did_work
                did_work = True
                samples = SampleBatch()
                for decoded in self._pipeline.process(batch):
                    samples.merge(self._samples.take(decoded))
                if not self._write(samples):
                    return did_work  # stopped while retrying: the position stays behind
                done = (
                    self._position.records
                    if self._position and self._position.segment == name
                    else 0
                )
                self._position = Position(name, done + len(batch))
                self._save_position()
                self._note_received(max(a.received_at for a in batch), written=True)
        return did_work

    def _save_position(self) -> None:
        """Save the position; on a full file system go on with it in memory (a restart then
        re-sends from the older saved one: the same samples, which change nothing)."""
        assert self._position is not None
        try:
            save_position(self.archive_dir, self._position)
        except OSError as error:
            if not self._position_unsaved:
                logger.warning(
                    "history position not saved in %s (%s); going on, a restart re-sends"
                    " from the last saved one",
                    self.archive_dir,
                    error.strerror or error,
                    extra={"path": str(self.archive_dir / POSITION_FILE)},
                )
            self._position_unsaved = True
        else:
            self._position_unsaved = False

    def _rebuild(self) -> None:
        """Decode the archive up to the saved position, sending nothing: the derived values'
        state (flight, held positions, the open vibration second) is then as if never stopped."""
        self._rebuilt = True
        saved = load_position(self.archive_dir)
        self._note_backlog(saved)
        if saved is None:
            return
        reader = ArchiveReader(self.archive_dir)
        for path in list_segments(self.archive_dir):
            if path.name > saved.segment:
                break
            records = reader.segment_records(path)
            if path.name == saved.segment:
                records = (r for _, r in zip(range(saved.records), records, strict=False))
            for batch in self._batches(records):
                for decoded in self._pipeline.process(batch):
                    self._samples.take(decoded)
                self._note_received(max(a.received_at for a in batch), written=True)
        self._position = saved

    def _batches(self, records: Iterable[ArchiveRecord]) -> Iterator[list[Arrival]]:
        return archived_batches(
            records,
            max_payload_bytes=self._max_payload_bytes,
            vehicles=self._dictionaries,
            batch_size=self._batch_envelopes,
            batch_max_bytes=self._batch_bytes,
            max_clock_skew_s=self._max_clock_skew_s,
        )

    def _note_received(self, received_at: float, *, written: bool) -> None:
        self.status.note(received_at, written=written)

    def _note_backlog(self, saved: Position | None) -> None:
        """Before anything else at start: the receive times of the archive's newest record
        and of the position's record, so that gs_history_lag_seconds is the backlog from
        the first scrape on (the live path has received nothing yet after a restart)."""
        reader = ArchiveReader(self.archive_dir)
        segments = list_segments(self.archive_dir)
        newest = None
        for path in reversed(segments):
            newest = max((r.received_at for r in reader.segment_records(path)), default=None)
            if newest is not None:
                break
        if newest is None:
            return  # an empty archive: the lag starts with the first record read
        written = None
        if saved is not None and any(path.name == saved.segment for path in segments):
            done = zip(
                range(saved.records),
                reader.segment_records(self.archive_dir / saved.segment),
                strict=False,
            )
            written = max((r.received_at for _, r in done), default=None)
        if written is None:  # nothing written yet (or its segment is gone): from the first
            first = next(reader.records(), None)
            written = first.received_at if first is not None else newest
        self._note_received(written, written=True)
        self._note_received(newest, written=False)

    def _unread(self) -> Iterator[tuple[str, Iterator[tuple[int, ArchiveRecord]]]]:
        """Per segment from the position on: its name and its records not yet done."""
        reader = ArchiveReader(self.archive_dir)
        for path in list_segments(self.archive_dir):
            position = self._position
            if position is not None and path.name < position.segment:
                continue
            skip = position.records if position is not None and path.name == position.segment else 0
            records = self._seen(enumerate(reader.segment_records(path)), skip)
            yield path.name, records

    def _seen(
        self, records: Iterator[tuple[int, ArchiveRecord]], skip: int
    ) -> Iterator[tuple[int, ArchiveRecord]]:
        for index, record in records:
            if index >= skip:
                self._note_received(record.received_at, written=False)
                yield index, record

    def _write(self, samples: SampleBatch) -> bool:
        """Send all samples in requests of at most batch_max_samples; False if stopped."""
        # One sample per series and millisecond: a second one (two packets within the same
        # ms) would make the receiver refuse the whole request as a duplicate timestamp.
        unique: dict[tuple[SeriesKey, int], float] = {}
        for key, points in samples.series.items():
            for time_ms, value in points:
                unique.setdefault((key, time_ms), value)
        dropped = len(samples) - len(unique)
        if dropped:
            self.status.count("rejected", dropped)
        flat = sorted(
            ((time_ms, key, value) for (key, time_ms), value in unique.items()),
            key=lambda sample: sample[0],
        )
        limit = self.config.batch_max_samples
        for start in range(0, len(flat), limit):
            if self._deliver(flat[start : start + limit]) is None:
                return False
        return True

    def _deliver(self, flat: list[Sample]) -> int | None:
        """Send samples (in time order); returns how many were left for backfill, None if stopped.

        A request refused for samples outside the receiver's window was rolled back whole:
        its newer half is sent again, then the older half, unless the newer half already
        held samples too old (then the older, older still, are left for backfill without
        asking). O(log n) requests find where the window starts.
        """
        answer = self._send_with_retries(flat)
        if answer is None:
            return None
        if answer == "duplicate":
            # Not a time bound: each half may hold such a sample; the single one is rejected.
            if len(flat) == 1:
                self.status.count("rejected", 1)
                return 0
            half = len(flat) // 2
            first = self._deliver(flat[:half])
            second = None if first is None else self._deliver(flat[half:])
            return None if first is None or second is None else first + second
        if answer != "window":
            return 0
        if len(flat) == 1:
            self.status.count("backfill", 1)
            return 1
        half = len(flat) // 2
        older, newer = flat[:half], flat[half:]
        left = self._deliver(newer)
        if left is None:
            return None
        if left:
            self.status.count("backfill", len(older))
            return left + len(older)
        return self._deliver(older)

    def _send_with_retries(self, flat: list[Sample]) -> Answer | None:
        grouped: dict[SeriesKey, list[tuple[int, float]]] = {}
        for time_ms, key, value in flat:
            grouped.setdefault(key, []).append((time_ms, value))
        body = compress(encode_write_request(Series(dict(k), p) for k, p in grouped.items()))
        delay = self.config.backoff_min_s
        while True:
            verdict = self._send(body)
            if verdict.ok:
                self.status.up = True
                self.status.count("ok", len(flat))
                return "ok"
            if verdict.outside_window:
                self.status.up = True
                return "window"
            if verdict.duplicate:
                self.status.up = True
                return "duplicate"
            if not verdict.retry:
                self.status.up = True
                self.status.count("rejected", len(flat))
                logger.warning(
                    "history receiver refused %d samples: %s %s",
                    len(flat),
                    verdict.status,
                    verdict.body[:200],
                )
                return "rejected"
            self.status.up = False
            logger.warning(
                "history receiver unavailable (%s %s); retrying in %.1f s",
                verdict.status,
                verdict.body[:200],
                delay,
            )
            # Equal jitter: half the delay fixed, half random, so writers do not retry in step.
            if self.stop.is_set() or self._sleep(delay / 2 + self._random.uniform(0, delay / 2)):
                return None
            delay = min(delay * 2, self.config.backoff_max_s)
