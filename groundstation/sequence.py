"""Sequence accounting of ICD section 6, shared by packets (per APID) and envelopes.

The rule, for a count ``c`` of a stream whose newest count is ``newest`` (all arithmetic
modulo ``modulus``; the window is the last ``window`` counts, newest included)::

    d = (c - newest) mod modulus
    no count seen yet          -> ok; newest = c (nothing before it is counted lost)
    d == 0                     -> duplicate
    1 <= d <= window           -> ok, ahead: newest = c; the d - 1 skipped counts are lost
    d > modulus - window       -> behind, within the window:
                                  seen already -> duplicate
                                  counted lost -> ok, and lost -= 1 (a late packet)
                                  otherwise    -> ok (it predates the first count seen)
    anything else              -> ok, a restart: the window starts afresh at c; nothing
                                  is lost (only possible when modulus > 2 * window, i.e.
                                  for envelope seq, e.g. after a relay reboot)

For packets, modulus 16384 and window 8192 make every d either ahead or behind. Each count
in the window has a state (unseen / lost / seen) in a ring indexed by ``count mod window``:
the window's counts fall in distinct slots, and a count entering the window (when newest
advances) overwrites the slot of the count that leaves it.
"""

from __future__ import annotations

from typing import Any, Final, Literal

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "PACKET_SEQ_MODULUS",
    "SEQ_WINDOW",
    "SequenceResult",
    "SequenceWindow",
]

SequenceResult = Literal["ok", "duplicate"]

PACKET_SEQ_MODULUS: Final = 1 << 14  # ICD section 3: 14-bit sequence count
SEQ_WINDOW: Final = 8192  # ICD section 6: the last 8192 sequence counts

# Slot states of the ring.
_UNSEEN: Final = 0  # not received, and never counted lost (before the first count seen)
_LOST: Final = 1  # skipped when newest advanced past it: counted lost
_SEEN: Final = 2  # received
_NO_STEPS: Final = np.zeros(0, dtype=np.int64)


class SequenceWindow:
    """One stream's newest count, lost total and window of recently seen counts."""

    def __init__(self, *, modulus: int, window: int = SEQ_WINDOW) -> None:
        if window < 1 or modulus < 2 * window or modulus % window:
            raise ValueError(f"window {window} must divide modulus {modulus}, at least twice")
        self.modulus: Final = modulus
        self.window: Final = window
        self.newest: int | None = None
        self.lost = 0
        """Counts skipped and not (yet) received late; grows and shrinks as packets arrive."""
        self.restarts = 0
        """Jumps beyond the window in both directions (only when modulus > 2 * window)."""
        self._state = np.zeros(window, dtype=np.uint8)

    def account(self, count: int) -> SequenceResult:
        """Classify one count and update the window: the rule in the module docstring."""
        if not 0 <= count < self.modulus:
            raise ValueError(f"count {count} is outside 0..{self.modulus - 1}")
        slot = count % self.window
        if self.newest is None:
            self.newest = count
            self._state[slot] = _SEEN
            return "ok"
        distance = (count - self.newest) % self.modulus
        if distance == 0:
            return "duplicate"
        if distance <= self.window:
            self._advance(self.newest, np.array([count], dtype=np.int64), distance - 1, _NO_STEPS)
            return "ok"
        if distance > self.modulus - self.window:
            state = self._state[slot]
            if state == _SEEN:
                return "duplicate"
            if state == _LOST:
                self.lost -= 1
            self._state[slot] = _SEEN
            return "ok"
        self.restarts += 1
        self._state[:] = _UNSEEN
        self._state[slot] = _SEEN
        self.newest = count
        return "ok"

    def account_many(self, counts: NDArray[Any]) -> NDArray[np.bool_]:
        """Classify counts in arrival order, exactly as `account` one by one; True = duplicate.

        Runs of counts that each advance on the one before (the normal case) are applied in
        one vectorised step; only the counts that break such a run go through `account`.
        """
        # int32 suffices for 14-bit packet counts and halves the memory traffic.
        values: NDArray[Any] = np.asarray(
            counts, dtype=np.int32 if self.modulus <= 1 << 30 else np.int64
        )
        duplicate = np.zeros(values.shape[0], dtype=np.bool_)
        if values.shape[0] == 0:
            return duplicate
        if values.min() < 0 or values.max() >= self.modulus:
            raise ValueError(f"counts must lie in 0..{self.modulus - 1}")
        # skipped[k]: counts between values[k] and values[k + 1], were the latter ahead.
        skipped = values[1:] - values[:-1]
        skipped -= 1
        if self.modulus & (self.modulus - 1) == 0:
            skipped &= self.modulus - 1  # modulo a power of two, much faster than %
        else:
            skipped %= self.modulus
        # Positions whose count is not ahead of its predecessor's: each run ends there.
        breaks = np.flatnonzero(skipped >= self.window) + 1
        start = 0
        while start < values.shape[0]:
            newest = self.newest
            distance = 0 if newest is None else (int(values[start]) - newest) % self.modulus
            if newest is None or not 1 <= distance <= self.window:
                duplicate[start] = self.account(int(values[start])) == "duplicate"
                start += 1
                continue
            next_break = int(np.searchsorted(breaks, start, side="right"))
            stop = int(breaks[next_break]) if next_break < breaks.shape[0] else values.shape[0]
            self._advance(newest, values[start:stop], distance - 1, skipped[start : stop - 1])
            start = stop
        return duplicate

    def _advance(
        self,
        newest: int,
        run: NDArray[Any],
        first_skipped: int,
        skipped: NDArray[Any],
    ) -> None:
        """Apply the `ahead` branch to a run of counts, each ahead of the one before.

        Equivalent to one `ahead` step per count: every skipped count is lost, every count
        passed over enters the window (its slot overwritten), the last one becomes newest.
        `first_skipped` counts lie between newest and run[0], skipped[k] between run[k] and
        run[k + 1].
        """
        total_skipped = first_skipped + int(skipped.sum())
        advance = total_skipped + run.shape[0]  # how far newest moves
        self.lost += total_skipped
        if advance >= self.window:
            self._state[:] = _LOST
            # Only the last `window` counts passed over stay in the window; each step is at
            # least 1, so they are among the last `window` counts of the run.
            tail = min(run.shape[0], self.window)
            behind_newest = np.zeros(tail, dtype=np.int64)
            steps_in = skipped[run.shape[0] - tail :] + 1  # steps into run[-tail + 1:]
            behind_newest[:-1] = np.cumsum(steps_in[::-1])[::-1]
            recent = run[run.shape[0] - tail :][behind_newest < self.window]
        else:
            if total_skipped:
                entering = np.arange(newest + 1, newest + advance + 1) % self.window
                self._state[entering] = _LOST
            recent = run
        self._state[recent % self.window] = _SEEN
        self.newest = int(run[-1])
