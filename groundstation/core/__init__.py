"""The pure core: CCSDS packets, packet dictionaries, decoding, encoding and accounting.

No asyncio, sockets or MQTT here (tests/test_layout.py checks it), so every rule of the
ICD can be tested with bytes in and values out. The only I/O is reading packet dictionary
files (the shipped ones are package data) when asked to load them.
"""
