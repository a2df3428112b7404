"""The exception tree: bad telemetry is data, these are for programmer and setup errors."""

from __future__ import annotations

from pathlib import Path


class GroundstationError(Exception):
    """Root of every error the ground station raises on purpose."""


class ConfigError(GroundstationError):
    """The configuration (file, environment or command line) is invalid."""


class DefinitionError(GroundstationError):
    """A packet definition in protocols/ is invalid; the message names file, packet and field."""


class UnknownVehicleError(GroundstationError):
    """A vehicle name that has no packet dictionary."""


class ArchiveInUseError(GroundstationError):
    """Another daemon holds the archive directory: two writers would interleave segments."""


class ArchiveWriteError(GroundstationError):
    """Writing or syncing the archive failed (a full file system, an I/O error): nothing of
    the batch is in the archive, and it may be retried."""

    def __init__(self, path: Path, error: OSError) -> None:
        super().__init__(f"archive write to {path} failed: {error.strerror or error}")
        self.path = path
        self.errno = error.errno


class AddressInUseError(GroundstationError):
    """A listening socket (metrics HTTP, embedded broker) could not bind: the port is taken."""

    def __init__(self, *, service: str, host: str, port: int) -> None:
        super().__init__(f"{service} address {host}:{port} is already in use")
        self.service = service
        self.host = host
        self.port = port
