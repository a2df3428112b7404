"""The harness itself: services start for real on loopback."""

from __future__ import annotations

import socket

import pytest

from tests.services import LOOPBACK, Mosquitto


@pytest.mark.integration
def test_mosquitto_fixture_listens_on_loopback(mosquitto: Mosquitto) -> None:
    """The broker fixture starts a real Mosquitto that accepts TCP on 127.0.0.1."""
    with socket.create_connection((LOOPBACK, mosquitto.port), timeout=2) as connection:
        assert connection.getpeername() == (LOOPBACK, mosquitto.port)
