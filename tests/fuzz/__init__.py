"""Hostile-input corpus and the atheris fuzz target (docs/reliability.md, item 7)."""
