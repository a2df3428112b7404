"""Security defaults of the daemon (docs/reliability.md, item 8): nothing listens beyond loopback.

The broker side (anonymous and wrong password refused, the daemon's ACL, TLS with the
right and the wrong CA) is tested against deploy/mosquitto in tests/test_deploy_mosquitto.py;
this file adds what the daemon itself opens: the metrics endpoint and the embedded broker.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path

import pytest

from groundstation.config import load_config
from tests.reliability_support import (
    DaemonProcess,
    process_tree,
    record_figures,
    running_daemon,
)
from tests.services import free_port

TCP_LISTEN = "0A"  # state column of /proc/net/tcp (include/net/tcp_states.h)


def listening_addresses(pid: int) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket the process or a child listens on, from /proc."""
    inodes = set()
    for member in process_tree(pid):
        for entry in os.listdir(f"/proc/{member}/fd"):
            try:
                target = os.readlink(f"/proc/{member}/fd/{entry}")
            except OSError:
                continue  # closed between listdir and readlink
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    found: set[tuple[str, int]] = set()
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        for line in lines:
            columns = line.split()
            local, state, inode = columns[1], columns[3], columns[9]
            if state == TCP_LISTEN and inode in inodes:
                found.add(_address(local, family))
    return found


def _address(local: str, family: int) -> tuple[str, int]:
    """Decode /proc/net/tcp's `HEXADDR:HEXPORT` (address in host byte order words)."""
    hex_address, hex_port = local.split(":")
    raw = bytes.fromhex(hex_address)
    # The kernel prints each 32-bit word in host (little-endian here) order.
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return socket.inet_ntop(family, words), int(hex_port, 16)


def test_metrics_default_is_loopback() -> None:
    """With no file and no flag, /metrics is served on 127.0.0.1 (STYLE habit 2)."""
    config = load_config(None, env={})
    assert config.metrics.host == "127.0.0.1"
    assert config.broker.embedded
    assert config.broker.host == "127.0.0.1"


@pytest.mark.integration
def test_daemon_listens_on_loopback_only_by_default(tmp_path: Path) -> None:
    """The daemon with the embedded broker and default metrics host: loopback sockets only.

    1. Start `groundstation run` with a config file that sets only the two ports (no broker
       host: the embedded amqtt broker; no metrics host: the default).
    2. Read its listening sockets from /proc: the metrics port and the broker port are
       there, and every listening address is a loopback address.
    """
    broker_port, metrics_port = free_port(), free_port()
    daemon = DaemonProcess(
        workdir=tmp_path / "daemon",
        broker_port=broker_port,
        metrics_port=metrics_port,
        config_toml=f"[broker]\nport = {broker_port}\n\n[metrics]\nport = {metrics_port}\n",
        broker_flag=False,
        metrics_flag=False,
    )
    with running_daemon(daemon):
        listening = listening_addresses(daemon.pid)
    record_figures(
        "security",
        "listening_sockets",
        {"addresses": ", ".join(f"{host}:{port}" for host, port in sorted(listening))},
    )
    assert {port for _, port in listening} >= {broker_port, metrics_port}
    for host, port in listening:
        assert ipaddress.ip_address(host).is_loopback, f"listening on {host}:{port}"
