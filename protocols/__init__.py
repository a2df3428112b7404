"""Packet dictionaries (TOML data), one file per vehicle, loaded by
groundstation.core.definitions."""
