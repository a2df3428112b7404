"""The exception tree: bad telemetry is data, these are for programmer and setup errors."""

from __future__ import annotations


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
