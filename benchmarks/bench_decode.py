"""Decoder throughput beside NASA ccsdspy, a struct loop and a memory copy, in one run.

Streams (generated with groundstation.core.encoder.encode_packets): 1,000,000 HELI_NAV packets,
300,000 HELI_IMU packets, and a mixed Ingenuity flight (IMU 50/s, NAV 30/s, HK 1/s, an
event report every 10 s, interleaved by packet time). Methods, each the median of N runs:

- groundstation: PacketDecoder.decode, CRC verified, every field calibrated, sequence
  accounting (a fresh decoder per run);
- ccsdspy: FixedLength(...).load(io.BytesIO(buf)) with the same fields (HELI_IMU as 60
  PacketFields, its faster layout here); no CRC check, raw big-endian arrays; the mixed
  stream through ccsdspy.utils.split_by_apid, then one load per APID;
- struct loop: struct.unpack_from per packet into Python tuples; no CRC, no calibration;
- numpy.copy of the buffer: the memory-bandwidth limit.

Ratios taken in one run are what compare on a shared machine.
Run: `python benchmarks/bench_decode.py` (about a minute; --runs N, --scale X for sizes).
"""

from __future__ import annotations

import argparse
import io
import logging
import statistics
import struct
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from groundstation.core.definitions import PacketDef, VehicleDictionary

NAV_FIELDS = ["pos_x", "pos_y", "pos_z", "vel_x", "vel_y", "vel_z", "roll", "pitch", "yaw"]
IMU_AXES = ["ax", "ay", "az", "gx", "gy", "gz"]
FLIGHT_START = 946728000 + 672_500_000.0


@dataclass(frozen=True)
class Stream:
    """One benchmark input: its bytes (as the decoder gets them) and its packet count."""

    name: str
    buffers: list[bytes]
    packets: int

    @property
    def size(self) -> int:
        return sum(len(b) for b in self.buffers)


def main(argv: Sequence[str] | None = None) -> int:
    """Build the streams, time every method on each, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=5, help="timed runs per method (median)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the stream sizes")
    options = parser.parse_args(argv)
    if __package__ in (None, ""):  # run as a script from a checkout
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import ccsdspy  # configures its logger on import; quieten it afterwards

    from groundstation.core.definitions import load_dictionary

    logging.getLogger(ccsdspy.__name__).setLevel(logging.ERROR)  # it warns on count wraps
    ingenuity = load_dictionary("ingenuity")
    nav = _fixed_stream(ingenuity.packets[101], int(1_000_000 * options.scale), rate_hz=30)
    imu = _fixed_stream(ingenuity.packets[102], int(300_000 * options.scale), rate_hz=50)
    streams = [
        Stream("HELI_NAV", [nav], len(nav) // 54),
        Stream("HELI_IMU", [imu], len(imu) // 134),
        _flight_stream(ingenuity, seconds=int(2000 * options.scale)),
        Stream("HELI_IMU 10k, one buffer", [imu[: 10_000 * 134]], 10_000),
        Stream(
            "HELI_IMU 10k, 20 buffers",
            [imu[i * 500 * 134 : (i + 1) * 500 * 134] for i in range(20)],
            10_000,
        ),
    ]
    print(f"numpy {np.__version__}, median of {options.runs} runs, packets/s and MB/s")
    print(f"{'stream':30} {'method':24} {'packets/s':>12} {'MB/s':>8} {'vs ccsdspy':>10}")
    for stream in streams:
        methods = _methods(stream, ingenuity)
        reference = None
        for label, run in methods.items():
            seconds = _median_seconds(run, options.runs)
            rate = stream.packets / seconds
            if label == "ccsdspy":
                reference = rate
            ratio = f"{rate / reference:9.2f}x" if reference else ""
            megabytes = stream.size / seconds / 1e6
            print(f"{stream.name:30} {label:24} {rate:12,.0f} {megabytes:8,.0f} {ratio:>10}")
    return 0


def _methods(stream: Stream, ingenuity: VehicleDictionary) -> dict[str, Callable[[], object]]:
    """The timed callables for one stream; ccsdspy first so the ratios have a reference."""
    from groundstation.core.decoder import PacketDecoder

    def ours() -> object:
        result = PacketDecoder(ingenuity).decode(stream.buffers)
        assert result.counts().keys() <= {(a, "ok") for a in ingenuity.packets}
        return result

    joined = b"".join(stream.buffers)
    methods: dict[str, Callable[[], object]] = {}
    if not stream.name.startswith("HELI_IMU 10k"):
        methods["ccsdspy"] = _ccsdspy(stream, ingenuity, joined)
    methods["groundstation (CRC on)"] = ours
    if not stream.name.startswith("HELI_IMU 10k"):
        methods["struct loop (no CRC)"] = lambda: _struct_loop(joined, ingenuity)
        methods["numpy.copy"] = lambda: np.copy(np.frombuffer(joined, dtype=np.uint8))
    return methods


def _median_seconds(run: Callable[[], object], runs: int) -> float:
    """Median wall time of `runs` calls, after one untimed warm-up call."""
    run()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _fixed_stream(packet: PacketDef, count: int, *, rate_hz: float) -> bytes:
    """count packets of a fixed-length APID with plausible values, consecutive counts."""
    from groundstation.core.encoder import encode_packets

    rng = np.random.default_rng(packet.apid)
    shape = (count, packet.samples) if packet.samples > 1 else (count,)
    columns: dict[str, object] = {}
    for field in packet.numeric_fields:
        if field.type.startswith("f"):
            columns[field.name] = rng.normal(0.0, 10.0, shape)
        elif field.scale is not None:
            columns[field.name] = rng.integers(0, 30_000, shape) * field.scale
        else:
            columns[field.name] = rng.integers(0, 4, shape)
    return encode_packets(
        packet,
        seq=np.arange(count) % 16384,
        time=FLIGHT_START + np.arange(count) / rate_hz,
        columns=columns,
    )


def _flight_stream(ingenuity: VehicleDictionary, *, seconds: int) -> Stream:
    """A flight's mix of APIDs, interleaved by packet time in one buffer."""
    from groundstation.core.encoder import encode_packet

    packets: list[tuple[float, bytes]] = []
    for apid, rate in ((100, 1), (101, 30), (102, 50)):
        definition = ingenuity.packets[apid]
        data = _fixed_stream(definition, seconds * rate, rate_hz=rate)
        length = definition.max_length
        for number in range(seconds * rate):
            packets.append((number / rate, data[number * length : (number + 1) * length]))
    for number in range(seconds // 10):
        event = {"severity": "INFO", "event_id": number, "message": f"waypoint {number} reached"}
        encoded = encode_packet(
            ingenuity.packets[103], seq=number, time=FLIGHT_START + number * 10, values=event
        )
        packets.append((number * 10 + 0.001, encoded))
    packets.sort(key=lambda item: item[0])
    return Stream("mixed flight (HK/NAV/IMU/EVR)", [b"".join(p for _, p in packets)], len(packets))


def _ccsdspy(stream: Stream, ingenuity: VehicleDictionary, joined: bytes) -> Callable[[], object]:
    """ccsdspy's loader for the stream, with the same fields as the dictionary."""
    from ccsdspy.utils import split_by_apid

    definitions = {apid: _ccsdspy_definition(p) for apid, p in ingenuity.packets.items()}
    if stream.name in ("HELI_NAV", "HELI_IMU"):
        definition = definitions[101 if stream.name == "HELI_NAV" else 102]
        return lambda: definition.load(io.BytesIO(joined))

    def mixed() -> object:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ccsdspy warns about count wraps per APID
            parts = split_by_apid(io.BytesIO(joined))
            return {apid: definitions[apid].load(part) for apid, part in parts.items()}

    return mixed


def _ccsdspy_definition(packet: PacketDef) -> Any:
    """FixedLength (or VariableLength for text) listing the dictionary's fields."""
    import ccsdspy
    from ccsdspy import PacketArray, PacketField

    kinds = {"u": "uint", "i": "int", "f": "float"}
    fields: list[Any] = [
        PacketField(name="sclk_coarse", data_type="uint", bit_length=32),
        PacketField(name="sclk_fine", data_type="uint", bit_length=16),
    ]
    for sample in range(packet.samples):
        for field in packet.numeric_fields:
            name = f"{field.name}_{sample}" if packet.samples > 1 else field.name
            fields.append(
                PacketField(
                    name=name, data_type=kinds[field.type[0]], bit_length=int(field.type[1:])
                )
            )
    if packet.text_field is not None:
        fields.append(
            PacketArray(name="message", data_type="uint", bit_length=8, array_shape="expand")
        )
        fields.append(PacketField(name="crc", data_type="uint", bit_length=16))
        return ccsdspy.VariableLength(fields)
    fields.append(PacketField(name="crc", data_type="uint", bit_length=16))
    return ccsdspy.FixedLength(fields)


def _struct_loop(data: bytes, ingenuity: VehicleDictionary) -> list[tuple[Any, ...]]:
    """One struct.unpack_from per packet, dispatching on the APID; no CRC, no calibration."""
    formats = {
        apid: struct.Struct(
            ">HHHIH"
            + "".join(
                {"u8": "B", "i8": "b", "u16": "H", "i16": "h", "u32": "I", "f32": "f"}[f.type]
                for f in p.numeric_fields
            )
            * p.samples
        )
        for apid, p in ingenuity.packets.items()
    }
    header = struct.Struct(">HHH")
    decoded = []
    offset, end = 0, len(data)
    while offset < end:
        packet_id, _, data_length = header.unpack_from(data, offset)
        decoded.append(formats[packet_id & 0x7FF].unpack_from(data, offset))
        offset += data_length + 7
    return decoded


if __name__ == "__main__":
    sys.exit(main())
