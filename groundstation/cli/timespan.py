"""`--from` and `--to`: a span of UTC time, as the report and backfill commands take it."""

from __future__ import annotations

import argparse
import datetime as dt

TIME_FORMS = "UTC ISO 8601 (2021-04-25T11:31:00Z; no zone means UTC) or Unix seconds"


def add_time_span(parser: argparse.ArgumentParser, *, after: str, before: str) -> None:
    """`--from` (into `time_from`) and `--to` (into `time_to`); `after` and `before` say
    what each keeps, e.g. "flights taking off at or after TIME"."""
    parser.add_argument(
        "--from",
        dest="time_from",
        type=parse_time,
        metavar="TIME",
        help=f"only {after}: {TIME_FORMS}",
    )
    parser.add_argument(
        "--to",
        dest="time_to",
        type=parse_time,
        metavar="TIME",
        help=f"only {before} (same forms as --from)",
    )


def parse_time(text: str) -> float:
    """UTC seconds from Unix seconds or ISO 8601 (a time without a zone is UTC)."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither UTC ISO 8601 nor Unix seconds"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.timestamp()
