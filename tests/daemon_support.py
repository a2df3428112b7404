"""Daemon test helpers: hand-packed envelopes, publishing, scraping, replay as a subprocess."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import aiomqtt
import msgpack
from prometheus_client.parser import text_string_to_metric_families

from groundstation.config import Config, Overrides, load_config
from groundstation.service.daemon import Daemon
from tests.icd_packets import HELI_HK, hand_pack
from tests.services import LOOPBACK, Mosquitto

REPO = Path(__file__).resolve().parent.parent
HK_PER_ENVELOPE = 3
HK_BATTERY_VOLTAGE_V = 7.5


def hk_packet(seq: int, *, coarse: int = 753_000_000) -> bytes:
    """HELI_HK in FLIGHT at 7.5 V, hand-packed from the ICD table (mV, cA, %, dBm, c°C).

    Dated `coarse + seq` SCLK seconds: before `envelope`'s ert (nothing arrives before it was
    sent, ICD section 6) for any seq the tests use."""
    body = HELI_HK.pack(3, 0, 7500, 100, 80, -60, 2000, 2500, 2537, 2537)
    return hand_pack(100, seq % 16384, body, coarse=coarse + seq)


def envelope(seq: int, *, vehicle: str = "ingenuity", packets: bytes | None = None) -> bytes:
    """An ICD section 2 envelope packed with msgpack directly (not our pack_envelope)."""
    if packets is None:
        packets = b"".join(hk_packet(seq * HK_PER_ENVELOPE + k) for k in range(HK_PER_ENVELOPE))
    document = {
        "v": 1,
        "relay": "perseverance",
        "vehicle": vehicle,
        "seq": seq,
        "ert": 1.7e9 + seq,
        "packets": packets,
    }
    payload: bytes = msgpack.packb(document, use_bin_type=True)
    return payload


def daemon_config(broker: Mosquitto, tmp_path: Path, *, client_id: str = "gs-test") -> Config:
    """A config for one test: its broker, its archive, any free metrics port."""
    return load_config(
        None,
        env={},
        overrides=Overrides(
            broker_url=broker.url,
            metrics_addr=f"{LOOPBACK}:0",
            archive_dir=tmp_path / "archive",
            client_id=client_id,
        ),
    )


async def publish(port: int, payloads: Iterable[bytes], *, topic: str = "mars/tm/ingenuity") -> int:
    """Publish at QoS 1 and wait for each PUBACK; returns how many were sent."""
    sent = 0
    async with aiomqtt.Client(LOOPBACK, port, identifier=f"publisher-{os.getpid()}") as client:
        for payload in payloads:
            await client.publish(topic, payload, qos=1)
            sent += 1
    return sent


async def processed(daemon: Daemon, envelopes: int) -> None:
    """Wait until the decoding consumer has decoded `envelopes` archived since start."""
    follower = daemon.follower
    async with follower.progress:
        await follower.progress.wait_for(lambda: follower.envelopes_decoded >= envelopes)


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as error:
        return int(error.code), error.read().decode()


def parse_metrics(text: str) -> dict[str, float]:
    """Samples keyed `name{label="value",…}` with sorted labels, as replay's summary keys them."""
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            rendered = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{rendered}}}"] = sample.value
    return samples


async def scrape(address: tuple[str, int] | None) -> dict[str, float]:
    assert address is not None
    status, text = await asyncio.to_thread(get, f"http://{address[0]}:{address[1]}/metrics")
    assert status == 200
    return parse_metrics(text)


def counters(samples: dict[str, float]) -> dict[str, float]:
    """The telemetry counters, which replay reproduces (gs_mqtt_* is about the live link,
    gs_archive_* about the start-up scan, replay reports the archive in its own section;
    gs_history_* about the history writer)."""
    return {
        key: value
        for key, value in samples.items()
        if key.startswith("gs_")
        and not key.startswith(("gs_mqtt_", "gs_archive_", "gs_history_"))
        and key.split("{")[0].endswith("_total")
    }


def replay_summary(archive: Path) -> dict[str, Any]:
    """`groundstation replay --format summary` as a subprocess, parsed."""
    completed = subprocess.run(
        [sys.executable, "-m", "groundstation", "replay", str(archive), "--format", "summary"],
        capture_output=True,
        check=False,
        cwd=REPO,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr.decode()
    summary: dict[str, Any] = json.loads(completed.stdout)
    return summary
