"""Shared fixtures and the strict harness: in CI, a skipped test is a failed test."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

import groundstation.core.decoder  # noqa: F401 - registers the decoder's compiled loops
from groundstation.core.compiled import compile_all
from tests.services import Mosquitto, running_mosquitto

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Turn skips into failures when CI=true, so a missing service cannot pass silently."""
    outcome = yield
    report: pytest.TestReport = outcome.get_result()  # type: ignore[attr-defined]
    if IN_CI and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped in CI (CI=true makes skips failures): {report.longrepr}"


def pytest_sessionstart(session: pytest.Session) -> None:
    """Compile the decoder's loops before any test: the first compilation on a machine
    takes seconds, which would otherwise fall into one test's hypothesis deadline."""
    compile_all()


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A real Mosquitto on a free loopback port, for one test."""
    with running_mosquitto(tmp_path / "mosquitto") as broker:
        yield broker
