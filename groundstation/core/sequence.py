"""Sequence accounting of ICD section 6, shared by packets (per APID) and envelopes.

Time says what is newer; the count only measures gaps. Vehicles restart their counters at
0 when they reboot while their clock runs on, so a count alone cannot tell a copy from a
new packet. For a packet of count ``c`` and time ``t`` in a stream whose *newest* (the
packet of the newest time accounted so far) has count ``n`` and time ``T`` (counts modulo
``modulus``; the window is the last ``window`` counts, ``n`` included)::

    no packet accounted yet          -> ok; it becomes newest (nothing before it is lost)
    t > T, d = (c - n) mod modulus,
       1 <= d <= window, and not
       (c == 0 and d > 1)            -> ok, ahead: it becomes newest; d - 1 counts are lost
    t > T otherwise                  -> ok, a restart: it becomes newest, the window starts
                                        afresh from it, nothing is lost for the jump
    t <= T, c within the window:
       seen with time t              -> duplicate
       counted lost                  -> ok, late: lost -= 1, now seen with time t
       not seen yet                  -> ok, late (it predates the window): now seen
       seen with another time        -> ok, late: now seen with both times
    t <= T, c outside the window     -> ok, late; nothing changes

After a session takeover (another client with our client id held the MQTT session for a
while, and received what was sent meanwhile), `excuse_next_gap` makes the next ``ahead``
step count the counts it skips between newest and itself as ``taken_over`` instead of
lost; a late packet at such a count takes one back from ``taken_over``.

A packet newer than newest cannot be a copy of anything accounted, so only packets that
are not newer are looked up. Each count in the window has a slot in a ring indexed by
``count mod window`` holding the time of the packet seen at that count, ``-inf`` when it
was counted lost, ``+inf`` when counted taken over, NaN when none of these: the window's
counts fall in distinct slots, and a count entering the window (when newest advances)
overwrites the slot of the count that leaves it. Times are finite (packet time from a
32-bit SCLK, or a checked ``ert``), so the markers never equal one. A count seen with a
second time (a late packet from before a reboot, say) keeps the other times in a small
dict beside the ring, empty in a stream without reboots.
"""

from __future__ import annotations

from typing import Any, Final, Literal

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "SEQ_WINDOW",
    "SequenceResult",
    "SequenceWindow",
]

SequenceResult = Literal["ok", "duplicate"]

SEQ_WINDOW: Final = 8192  # ICD section 6: the last 8192 sequence counts

# Slot markers of the ring (a slot otherwise holds the time of the packet seen).
_UNSEEN: Final = np.nan  # not received, and never counted lost (before the window started)
_LOST: Final = -np.inf  # skipped when newest advanced past it: counted lost
_TAKEN: Final = np.inf  # skipped across a session takeover: counted taken over
_NO_STEPS: Final = np.zeros(0, dtype=np.int64)


class SequenceWindow:
    """One stream's newest count and time, lost and restart totals, and recent counts."""

    def __init__(self, *, modulus: int, window: int = SEQ_WINDOW) -> None:
        if window < 1 or modulus < 2 * window or modulus % window:
            raise ValueError(f"window {window} must divide modulus {modulus}, at least twice")
        self.modulus: Final = modulus
        self.window: Final = window
        self.newest: int | None = None
        self.newest_time = -np.inf
        """Time of the newest packet accounted; -inf before the first."""
        self.lost = 0
        """Counts skipped and not (yet) received late; grows and shrinks as packets arrive."""
        self.restarts = 0
        """Newer packets whose count did not advance within the window (ICD 6, rule 3)."""
        self.taken_over = 0
        """Counts skipped across a session takeover (`excuse_next_gap`), not received late."""
        self._excused = False
        self._seen = np.full(window, _UNSEEN, dtype=np.float64)
        self._also_seen: dict[int, set[float]] = {}
        """Slot -> further times seen at the slot's count, beyond the one in the ring."""

    def excuse_next_gap(self) -> None:
        """The counts the next ahead step skips went to another client: not lost here."""
        self._excused = True

    def account(self, count: int, time: float) -> SequenceResult:
        """Classify one packet and update the window: the rule in the module docstring."""
        if not 0 <= count < self.modulus:
            raise ValueError(f"count {count} is outside 0..{self.modulus - 1}")
        slot = count % self.window
        newest = self.newest
        if newest is None or time > self.newest_time:
            distance = 0 if newest is None else (count - newest) % self.modulus
            if newest is not None and self._ahead(count, distance):
                self._advance(newest, np.array([count]), np.array([time]), distance - 1, _NO_STEPS)
                return "ok"
            if newest is not None:
                self.restarts += 1
            self._excused = False  # nothing is skipped: no gap to excuse
            self._seen[:] = _UNSEEN
            self._also_seen.clear()
            self._seen[slot] = time
            self.newest, self.newest_time = count, float(time)
            return "ok"
        if (newest - count) % self.modulus >= self.window:
            return "ok"  # late, and its count is not among the window's
        seen = float(self._seen[slot])
        if seen == time or time in self._also_seen.get(slot, ()):
            return "duplicate"
        if seen == _LOST:
            self.lost -= 1
            self._seen[slot] = time
        elif seen == _TAKEN:
            self.taken_over -= 1
            self._seen[slot] = time
        elif np.isnan(seen):
            self._seen[slot] = time
        else:
            self._also_seen.setdefault(slot, set()).add(float(time))
        return "ok"

    def _ahead(self, count: int, distance: int) -> bool:
        """Rule 2's count condition, for a packet newer than newest."""
        return 1 <= distance <= self.window and not (count == 0 and distance > 1)

    def account_many(self, counts: NDArray[Any], times: NDArray[np.float64]) -> NDArray[np.bool_]:
        """Classify packets in arrival order, exactly as `account` one by one; True = duplicate.

        Runs of packets that each advance on the one before (newer, count ahead within the
        window: the normal case) are applied in one vectorised step; only the packets that
        break such a run go through `account`.
        """
        # int32 suffices for 14-bit packet counts and halves the memory traffic.
        values: NDArray[Any] = np.asarray(
            counts, dtype=np.int32 if self.modulus <= 1 << 30 else np.int64
        )
        duplicate = np.zeros(values.shape[0], dtype=np.bool_)
        if values.shape[0] == 0:
            return duplicate
        if times.shape != values.shape:
            raise ValueError(f"{times.shape[0]} times for {values.shape[0]} counts")
        if values.min() < 0 or values.max() >= self.modulus:
            raise ValueError(f"counts must lie in 0..{self.modulus - 1}")
        # skipped[k]: counts between values[k] and values[k + 1], were the latter ahead.
        skipped = values[1:] - values[:-1]
        skipped -= 1
        if self.modulus & (self.modulus - 1) == 0:
            skipped &= self.modulus - 1  # modulo a power of two, much faster than %
        else:
            skipped %= self.modulus
        # Positions whose packet does not advance on its predecessor: each run ends there.
        stops = skipped >= self.window
        stops |= times[1:] <= times[:-1]
        zeros = np.flatnonzero(values[1:] == 0)  # a jump to 0 is a restart (rule 3)
        stops[zeros[skipped[zeros] > 0]] = True
        breaks = np.flatnonzero(stops) + 1
        start = 0
        while start < values.shape[0]:
            newest = self.newest
            count, time = int(values[start]), float(times[start])
            distance = 0 if newest is None else (count - newest) % self.modulus
            if newest is None or not (time > self.newest_time and self._ahead(count, distance)):
                duplicate[start] = self.account(count, time) == "duplicate"
                start += 1
                continue
            next_break = int(np.searchsorted(breaks, start, side="right"))
            stop = int(breaks[next_break]) if next_break < breaks.shape[0] else values.shape[0]
            self._advance(
                newest,
                values[start:stop],
                times[start:stop],
                distance - 1,
                skipped[start : stop - 1],
            )
            start = stop
        return duplicate

    def _advance(
        self,
        newest: int,
        run: NDArray[Any],
        run_times: NDArray[np.float64],
        first_skipped: int,
        skipped: NDArray[Any],
    ) -> None:
        """Apply the `ahead` branch to a run of packets, each advancing on the one before.

        Equivalent to one `ahead` step per packet: every skipped count is lost, every count
        passed over enters the window (its slot overwritten), the last one becomes newest.
        `first_skipped` counts lie between newest and run[0], skipped[k] between run[k] and
        run[k + 1].
        """
        total_skipped = first_skipped + int(skipped.sum())
        advance = total_skipped + run.shape[0]  # how far newest moves
        excused = first_skipped if self._excused else 0
        self._excused = False
        self.lost += total_skipped - excused
        self.taken_over += excused
        if self._also_seen:  # the counts passed over leave the window with their times
            self._also_seen = {
                slot: times
                for slot, times in self._also_seen.items()
                if advance < self.window and (slot - newest - 1) % self.window >= advance
            }
        if advance >= self.window:
            self._seen[:] = _LOST
            # Only the last `window` counts passed over stay in the window; each step is at
            # least 1, so they are among the last `window` counts of the run.
            tail = min(run.shape[0], self.window)
            behind_newest = np.zeros(tail, dtype=np.int64)
            steps_in = skipped[run.shape[0] - tail :] + 1  # steps into run[-tail + 1:]
            behind_newest[:-1] = np.cumsum(steps_in[::-1])[::-1]
            recent = behind_newest < self.window
            counts = run[run.shape[0] - tail :][recent]
            seen = run_times[run.shape[0] - tail :][recent]
        else:
            if total_skipped:
                entering = np.arange(newest + 1, newest + advance + 1) % self.window
                self._seen[entering] = _LOST
            counts, seen = run, run_times
        if excused:
            # The excused counts newest + 1 .. newest + excused, those still in the window.
            first = max(newest + 1, newest + advance - self.window + 1)
            last = newest + excused
            if first <= last:
                self._seen[np.arange(first, last + 1) % self.window] = _TAKEN
        self._seen[counts % self.window] = seen
        self.newest = int(run[-1])
        self.newest_time = float(run_times[-1])
