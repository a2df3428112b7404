"""Hostile packet buffers (docs/reliability.md, item 7): every byte accounted for, no exception.

The packet-level corpus of tests/fuzz/corpus.py goes through PacketDecoder with a time and
memory measurement each (figures for docs/reliability.md); hypothesis then drives the
atheris target's own `ingest_one`, so the fuzz harness and its invariants run in CI
without atheris.
"""

from __future__ import annotations

import time
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from groundstation.core.decoder import RESULTS, PacketDecoder
from groundstation.core.definitions import load_dictionary
from tests.fuzz.corpus import HostileBuffer, hostile_buffers, write_seed_corpus
from tests.fuzz.fuzz_ingest import check_accounting, ingest_one
from tests.icd_packets import HELI_HK, HELI_NAV, hand_pack
from tests.reliability_support import MIB, record_figures

SAFETY_SECONDS = 1.0
SAFETY_BYTES = 64 * MIB
OK = RESULTS.index("ok")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize over the corpus at collection time (not at import time)."""
    if "hostile_buffer" in metafunc.fixturenames:
        cases = hostile_buffers()
        metafunc.parametrize("hostile_buffer", cases, ids=[case.name for case in cases])


def test_hostile_buffer_is_accounted_in_bounded_time_and_memory(
    hostile_buffer: HostileBuffer,
) -> None:
    """One corpus buffer: entries tile it, only the expected packets are ok; then a good one.

    1. Decode the buffer with a fresh decoder against the clock, then again with another
       under tracemalloc.
    2. Every byte belongs to exactly one entry; `ok` packets are only the intended ones.
    3. The same decoder then decodes a valid HELI_HK packet as `ok` (its state survived).
    """
    dictionary = load_dictionary("ingenuity")
    started = time.perf_counter()
    PacketDecoder(dictionary).decode([hostile_buffer.buffer])
    elapsed_s = time.perf_counter() - started  # timed apart: tracemalloc slows allocation
    decoder = PacketDecoder(dictionary)
    tracemalloc.start()
    try:
        result = decoder.decode([hostile_buffer.buffer])
        _, peak_bytes = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    check_accounting(result, [hostile_buffer.buffer])
    ok_packets = int((result.result == OK).sum())
    record_figures(
        "hostile_packets",
        hostile_buffer.name,
        {
            "buffer_bytes": len(hostile_buffer.buffer),
            "entries": len(result.result),
            "ok_packets": ok_packets,
            "elapsed_ms": round(elapsed_s * 1000, 3),
            "peak_alloc_bytes": peak_bytes,
        },
    )
    assert ok_packets == hostile_buffer.ok_packets, hostile_buffer.why
    assert elapsed_s < SAFETY_SECONDS
    assert peak_bytes < SAFETY_BYTES
    follow_up = decoder.decode([hand_pack(100, 9000, bytes(HELI_HK.size))])
    assert follow_up.counts() == {(100, "ok"): 1}


def test_seed_corpus_runs_through_the_fuzz_target(tmp_path: Path) -> None:
    """`python -m tests.fuzz.corpus DIR` writes seeds that the fuzz target takes, one by one."""
    written = write_seed_corpus(tmp_path / "seeds")
    seeds = sorted((tmp_path / "seeds").iterdir())
    assert len(seeds) == written
    for seed in seeds:
        ingest_one(seed.read_bytes())


# No deadline: a shared 2-core CI machine makes per-example times noisy; nothing here waits.
@settings(deadline=None)
@given(st.binary(max_size=2048))
def test_fuzz_target_accepts_any_bytes(data: bytes) -> None:
    """The atheris target's body, driven by hypothesis: its invariants hold for any input."""
    ingest_one(data)


valid_packets = st.sampled_from(
    [
        hand_pack(100, 1, bytes(HELI_HK.size)),
        hand_pack(101, 2, bytes(HELI_NAV.size)),
        hand_pack(103, 3, b"\x01\x00\x07hello"),
    ]
)


@settings(deadline=None)
@given(st.lists(valid_packets, min_size=1, max_size=6), st.data())
def test_mutated_packet_streams_are_fully_accounted(
    packets: list[bytes], data: st.DataObject
) -> None:
    """Valid packets concatenated, then bytes flipped or cut: every byte still accounted."""
    buffer = bytearray(b"".join(packets))
    for _ in range(data.draw(st.integers(0, 4))):
        position = data.draw(st.integers(0, len(buffer) - 1))
        if data.draw(st.booleans()):
            buffer[position] = data.draw(st.integers(0, 255))
        else:
            del buffer[position + 1 :]
    result = PacketDecoder(load_dictionary("ingenuity")).decode([bytes(buffer)])
    check_accounting(result, [bytes(buffer)])
