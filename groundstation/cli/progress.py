"""Progress bars for long commands: on a terminal only, so pipes and logs stay clean."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterable, Iterator
from typing import Any

from tqdm import tqdm

from groundstation.archive import ArchiveRecord, framed_size


def progress_bar(*, total: float | None, unit: str, description: str) -> tqdm[Any]:
    """A tqdm bar on stderr with rate and time left; disabled (a no-op) off a terminal."""
    return tqdm(
        total=total,
        unit=unit,
        unit_scale=unit == "B",
        unit_divisor=1024 if unit == "B" else 1000,
        desc=description,
        file=sys.stderr,
        disable=not sys.stderr.isatty(),
        # A terminal that reports no size (a bare pty) would hide the bar; shutil falls back
        # to 80 columns there.
        ncols=shutil.get_terminal_size().columns,
    )


def archive_progress(
    records: Iterable[ArchiveRecord], *, total_bytes: int, description: str
) -> Iterator[ArchiveRecord]:
    """The records, advancing a bar over the archive's bytes as each is read."""
    with progress_bar(total=total_bytes, unit="B", description=description) as bar:
        for record in records:
            bar.update(framed_size(record))
            yield record
        bar.update(max(0, total_bytes - bar.n))  # segment headers, damaged stretches
