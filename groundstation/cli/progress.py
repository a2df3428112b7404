"""Progress bars for long commands: on a terminal only, so pipes and logs stay clean."""

from __future__ import annotations

import sys
from typing import Any

from tqdm import tqdm


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
        dynamic_ncols=True,
    )
