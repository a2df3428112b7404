"""Soak run: the daemon at the nominal flight rate, RSS and latency sampled.

Mosquitto, the daemon (a subprocess) and the simulator flying flight 3 live (speed 1,
repeated) all run on loopback. Every `--sample-s` the script reads the daemon's RSS, open
file descriptors and threads from /proc, and measures end-to-end latency with a probe: one
envelope from relay `soak-probe` holding one packet of APID 250 (not in the dictionary, so
it is counted `unknown_apid` and touches no sequence or value the simulator drives), timed
from publish until /metrics counts it. At the end it fits a trend to each series:

    python -m benchmarks.soak --duration-s 1800 --output soak.json   # the documented run

Exit status 0 when no series grows (see `analyse`), 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final

import aiomqtt
from groundstation.simulators.run import SimulationOptions, simulate

from groundstation.config import parse_broker_url
from groundstation.core.envelope import pack_envelope
from tests.icd_packets import hand_pack
from tests.reliability_support import (
    MIB,
    DaemonProcess,
    record_figures,
    total,
)
from tests.services import LOOPBACK, running_mosquitto

PROBE_APID: Final = 250  # not in protocols/perseverance.toml: counted unknown_apid only
PROBE_RELAY: Final = "soak-probe"
PROBE_TOPIC: Final = "mars/tm/perseverance"
PROBE_TIMEOUT_S: Final = 10.0
PROBE_POLL_S: Final = 0.005
WARMUP_FRACTION: Final = 0.1  # the first 10 % of samples: imports, caches, first flight
RSS_GROWTH_LIMIT_BYTES: Final = 8 * MIB  # over the measured (post-warm-up) run
LATENCY_GROWTH_FACTOR: Final = 2.0  # last third's median vs first third's
LATENCY_GROWTH_FLOOR_S: Final = 0.02  # below this a doubling is noise, not a trend


@dataclass(frozen=True, kw_only=True)
class SoakSample:
    """One look at the daemon during the soak."""

    elapsed_s: float
    rss_bytes: int
    peak_rss_bytes: int
    open_fds: int
    threads: int
    probe_latency_s: float
    envelopes_ok: float
    envelopes_lost: float
    packets_lost: float


@dataclass(frozen=True, kw_only=True)
class Trend:
    """What `analyse` concludes from the samples after warm-up."""

    samples: int
    rss_slope_mib_per_h: float
    rss_growth_mib: float  # slope x measured duration
    latency_p50_first_third_ms: float
    latency_p50_last_third_ms: float
    latency_max_ms: float
    open_fds_range: int
    threads_range: int
    growing: list[str]


def slope_per_s(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of ys over xs (0 when there are fewer than two points)."""
    if len(xs) < 2:
        return 0.0
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    if spread == 0:
        return 0.0
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / spread


def analyse(samples: Sequence[SoakSample]) -> Trend:
    """Fit trends after the warm-up: RSS slope, latency drift, descriptor and thread range."""
    measured = list(samples[int(len(samples) * WARMUP_FRACTION) :])
    if not measured:
        raise ValueError("no samples after the warm-up")
    times = [sample.elapsed_s for sample in measured]
    slope = slope_per_s(times, [float(sample.rss_bytes) for sample in measured])
    growth = slope * (times[-1] - times[0])
    third = max(1, len(measured) // 3)
    first = statistics.median(s.probe_latency_s for s in measured[:third])
    last = statistics.median(s.probe_latency_s for s in measured[-third:])
    fds = [sample.open_fds for sample in measured]
    threads = [sample.threads for sample in measured]
    growing = []
    if growth > RSS_GROWTH_LIMIT_BYTES:
        growing.append("rss")
    if last > max(first * LATENCY_GROWTH_FACTOR, first + LATENCY_GROWTH_FLOOR_S):
        growing.append("latency")
    # A steady daemon may open a descriptor for a scrape or a rotated segment at a sample,
    # but a leak grows without bound: compare the last third with the first.
    if min(fds[-third:]) > max(fds[:third]):
        growing.append("open_fds")
    if min(threads[-third:]) > max(threads[:third]):
        growing.append("threads")
    return Trend(
        samples=len(measured),
        rss_slope_mib_per_h=round(slope * 3600 / MIB, 3),
        rss_growth_mib=round(growth / MIB, 3),
        latency_p50_first_third_ms=round(first * 1000, 2),
        latency_p50_last_third_ms=round(last * 1000, 2),
        latency_max_ms=round(max(s.probe_latency_s for s in measured) * 1000, 2),
        open_fds_range=max(fds) - min(fds),
        threads_range=max(threads) - min(threads),
        growing=growing,
    )


async def probe_latency(client: aiomqtt.Client, daemon: DaemonProcess, seq: int) -> float:
    """Publish one probe envelope and time it until /metrics counts its packet."""

    def probes_counted() -> float:
        return total(
            daemon.scrape(), "gs_packets_total", vehicle="perseverance", apid=str(PROBE_APID)
        )

    before = await asyncio.to_thread(probes_counted)
    payload = pack_envelope(
        relay=PROBE_RELAY,
        vehicle="perseverance",
        seq=seq,
        ert=time.time(),
        packets=hand_pack(PROBE_APID, seq % 16384, b""),
    )
    started = time.monotonic()
    await client.publish(PROBE_TOPIC, payload, qos=1)
    while await asyncio.to_thread(probes_counted) <= before:
        if time.monotonic() - started > PROBE_TIMEOUT_S:
            return PROBE_TIMEOUT_S
        await asyncio.sleep(PROBE_POLL_S)
    return time.monotonic() - started


async def soak(
    workdir: Path, *, duration_s: float, sample_s: float, progress: bool
) -> list[SoakSample]:
    """Run broker, daemon and live simulator for `duration_s`; sample every `sample_s`."""
    samples: list[SoakSample] = []
    with running_mosquitto(workdir / "mosquitto") as broker:
        daemon = DaemonProcess(workdir=workdir / "daemon", broker_port=broker.port)
        await asyncio.to_thread(daemon.start)
        try:
            options = SimulationOptions(
                profile="flight3", broker=parse_broker_url(broker.url), repeat=0, speed=1.0
            )
            flying = asyncio.create_task(simulate(options))
            async with aiomqtt.Client(LOOPBACK, broker.port, identifier="soak-probe") as client:
                started = time.monotonic()
                seq = 0
                while (elapsed := time.monotonic() - started) < duration_s:
                    if flying.done():
                        flying.result()  # the simulator stopped: raise its error
                        raise RuntimeError("the simulator stopped before the soak ended")
                    latency = await probe_latency(client, daemon, seq)
                    seq += 1
                    process = daemon.sample()
                    metrics = await asyncio.to_thread(daemon.scrape)
                    samples.append(
                        SoakSample(
                            elapsed_s=round(elapsed, 3),
                            rss_bytes=process.rss_bytes,
                            peak_rss_bytes=process.peak_rss_bytes,
                            open_fds=process.open_fds,
                            threads=process.threads,
                            probe_latency_s=round(latency, 4),
                            envelopes_ok=total(metrics, "gs_envelopes_total", result="ok"),
                            envelopes_lost=total(metrics, "gs_envelopes_lost_total"),
                            packets_lost=total(metrics, "gs_packets_lost_total"),
                        )
                    )
                    if progress:
                        print(json.dumps(asdict(samples[-1])), flush=True)
                    await asyncio.sleep(
                        max(0.0, started + len(samples) * sample_s - time.monotonic())
                    )
            flying.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flying
        finally:
            await asyncio.to_thread(daemon.stop)
    return samples


def run_soak(
    *, duration_s: float, sample_s: float, output: Path | None = None, progress: bool = False
) -> tuple[Trend, list[SoakSample]]:
    """The whole soak: run, analyse, record figures (and write every sample to `output`)."""
    with tempfile.TemporaryDirectory(prefix="gs-soak-") as workdir:
        samples = asyncio.run(
            soak(Path(workdir), duration_s=duration_s, sample_s=sample_s, progress=progress)
        )
    trend = analyse(samples)
    last = samples[-1]
    figures: dict[str, int | float | str | bool | None] = {
        "duration_s": duration_s,
        "sample_s": sample_s,
        "envelopes_ok": last.envelopes_ok,
        "envelopes_lost": last.envelopes_lost,
        "packets_lost": last.packets_lost,
        "peak_rss_mib": round(last.peak_rss_bytes / MIB, 1),
        **{key: value for key, value in asdict(trend).items() if key != "growing"},
        "growing": ", ".join(trend.growing) or "nothing",
    }
    record_figures("soak", f"{duration_s:.0f}s", figures)
    if output is not None:
        output.write_text(
            json.dumps({"figures": figures, "samples": [asdict(s) for s in samples]}, indent=2)
            + "\n"
        )
    return trend, samples


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: see the module docstring."""
    parser = argparse.ArgumentParser(description="Soak the daemon at the nominal flight rate.")
    parser.add_argument("--duration-s", type=float, default=1800.0)
    parser.add_argument("--sample-s", type=float, default=10.0)
    parser.add_argument("--output", type=Path, help="write every sample and the figures here")
    parser.add_argument("--quiet", action="store_true", help="no sample lines while running")
    args = parser.parse_args(argv)
    trend, _ = run_soak(
        duration_s=args.duration_s,
        sample_s=args.sample_s,
        output=args.output,
        progress=not args.quiet,
    )
    print(json.dumps(asdict(trend), indent=2))
    return 1 if trend.growing else 0


if __name__ == "__main__":
    sys.exit(main())
