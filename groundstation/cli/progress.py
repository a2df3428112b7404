"""Progress bars for long commands: on a terminal only, so pipes and logs stay clean."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterable, Iterator
from typing import Any

from tqdm import tqdm

from groundstation.ingest.archive import ArchiveRecord, framed_size


def progress_bar(
    *, total: float | None, unit: str, description: str, enabled: bool | None = None
) -> tqdm[Any]:
    """A tqdm bar on stderr with rate and time left; by default a no-op off a terminal."""
    size = shutil.get_terminal_size()
    return tqdm(
        total=total,
        unit=unit,
        unit_scale=unit == "B",
        unit_divisor=1024 if unit == "B" else 1000,
        desc=description,
        file=sys.stderr,
        disable=not (sys.stderr.isatty() if enabled is None else enabled),
        # A terminal that reports no size (a bare pty) would hide the bar; shutil falls back
        # to 80 x 24 there.
        ncols=size.columns,
        nrows=size.lines,
    )


def archive_progress(
    records: Iterable[ArchiveRecord],
    *,
    total_bytes: int,
    description: str,
    enabled: bool | None = None,
) -> Iterator[ArchiveRecord]:
    """The records, advancing a bar over the archive's bytes as each is read."""
    with progress_bar(total=total_bytes, unit="B", description=description, enabled=enabled) as bar:
        for record in records:
            bar.update(framed_size(record))
            yield record
        bar.update(max(0, total_bytes - bar.n))  # segment headers, damaged stretches
