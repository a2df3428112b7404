"""Packet simulator: flies the real flights through the ICD's packets and envelopes."""
