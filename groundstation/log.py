"""Rate-limited warnings for bad input (ICD section 6: logged rate-limited, while the
metrics count everything), shared by ingest, which logs each invalid envelope as it
arrives, and by replay."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Final

from groundstation.core.envelope import Arrival, Invalid

logger = logging.getLogger(__name__)

WARNINGS_PER_INTERVAL: Final = 5
WARNING_INTERVAL_S: Final = 60.0


class RateLimitedWarnings:
    """At most `limit` warnings per key per interval; the rest are counted and summarised."""

    def __init__(
        self,
        log: logging.Logger,
        *,
        limit: int = WARNINGS_PER_INTERVAL,
        interval_s: float = WARNING_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = log
        self._limit = limit
        self._interval_s = interval_s
        self._clock = clock
        self._windows: dict[str, tuple[float, int]] = {}

    def warning(self, key: str, message: str, *args: object, extra: Mapping[str, object]) -> None:
        now = self._clock()
        start, count = self._windows.get(key, (now, 0))
        if now - start >= self._interval_s:
            if count > self._limit:
                self._log.warning(
                    "%d more %s warnings in the last %.0f s were not logged",
                    count - self._limit,
                    key,
                    now - start,
                    extra={"reason": key},
                )
            start, count = now, 0
        count += 1
        self._windows[key] = (start, count)
        if count <= self._limit:
            self._log.warning(message, *args, extra=dict(extra))


class InvalidEnvelopeLog:
    """The rate-limited warning for each invalid envelope (ICD section 6), with its context."""

    def __init__(self, warnings: RateLimitedWarnings | None = None) -> None:
        self._warnings = warnings or RateLimitedWarnings(logger)

    def __call__(self, arrival: Arrival) -> None:
        envelope = arrival.envelope
        if isinstance(envelope, Invalid):
            self._warnings.warning(
                envelope.reason,
                "invalid envelope on %s: %s %s",
                arrival.topic,
                envelope.reason,
                envelope.detail,
                extra={
                    "topic": arrival.topic,
                    "vehicle": envelope.vehicle,
                    "reason": envelope.reason,
                },
            )
