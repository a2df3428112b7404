"""ICD section 7's samples as OpenMetrics text, for `promtool tsdb create-blocks-from openmetrics`.

Pure: a `SampleBatch` in, lines out. OpenMetrics wants every sample of a metric family
together and each series' samples in increasing time, so the families are written one
after the other, their series sorted by labels, each series sorted by time; a second
sample at a timestamp already written for its series is left out (Prometheus keeps the
first sample of a timestamp too). Every history family is a gauge (ICD section 7).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

from groundstation.consumers.history.samples import SampleBatch, SeriesKey

__all__ = ["EOF_LINE", "openmetrics_lines"]

EOF_LINE = "# EOF\n"


def openmetrics_lines(
    batch: SampleBatch, *, from_ms: int | None = None, to_ms: int | None = None
) -> Iterator[str]:
    """The batch's samples with timestamps in [from_ms, to_ms], then `# EOF`."""
    families: dict[str, list[SeriesKey]] = {}
    for key in batch.series:
        name = dict(key)["__name__"]
        families.setdefault(name, []).append(key)
    for name in sorted(families):
        written_type = False
        for key in sorted(families[name]):
            labels = _labels(key)
            previous: int | None = None
            for ms, value in sorted(batch.series[key], key=lambda sample: sample[0]):
                if ms == previous:
                    continue
                if (from_ms is not None and ms < from_ms) or (to_ms is not None and ms > to_ms):
                    continue
                if not written_type:
                    yield f"# TYPE {name} gauge\n"
                    written_type = True
                previous = ms
                yield f"{name}{labels} {_value(value)} {ms // 1000}.{ms % 1000:03d}\n"
    yield EOF_LINE


def _labels(key: SeriesKey) -> str:
    pairs = [f'{label}="{_escape(value)}"' for label, value in key if label != "__name__"]
    return "{" + ",".join(pairs) + "}" if pairs else ""


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))
