"""deploy/mosquitto on a real Mosquitto: accounts, ACL, TLS and the offline queue (docs/deploy.md).

The broker runs the production files of deploy/mosquitto, rewritten only for ports, paths
and the process user (`deployed_config`). Reusable: the security tests can take
`DeployedMosquitto`, `make_tls_files` and `Session` from here.
"""

from __future__ import annotations

import contextlib
import getpass
import queue
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

import aiomqtt
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from groundstation.config import ENV_PASSWORD, load_config
from groundstation.ingest.archive import ArchiveReader
from groundstation.service.daemon import running_daemon
from tests.daemon_support import envelope, hk_packet, processed, scrape
from tests.services import LOOPBACK, Mosquitto, find_binary, free_port, wait_for_port

DEPLOY_MOSQUITTO: Final = Path(__file__).resolve().parent.parent / "deploy" / "mosquitto"
ACK_TIMEOUT_S: Final = 10.0
NOT_AUTHORIZED: Final = 135  # MQTT 5 reason code 0x87, CONNACK and PUBACK
DEFAULT_MAX_QUEUED_MESSAGES: Final = 1000  # Mosquitto's default, which drops silently

PASSWORDS: Final = {
    "groundstation": "daemon-secret",
    "ingenuity": "heli-secret",
    "perseverance": "rover-secret",
    # Test-only account, appended to the ACL copy: the one writer outside mars/tm/, so
    # that the daemon's read restriction can be observed.
    "probe": "probe-secret",
}
PROBE_ACL: Final = "\n# test only\nuser probe\ntopic readwrite #\n"


def deployed_config(text: str, settings: Mapping[str, str | None]) -> str:
    """`text` with each named directive's value replaced (None drops the line).

    Every named directive must be in the file, so a renamed or removed directive in
    deploy/mosquitto fails the test instead of being silently kept.
    """
    seen: set[str] = set()
    lines: list[str] = []
    for line in text.splitlines():
        words = line.split(maxsplit=1)
        directive = words[0] if words and not words[0].startswith("#") else ""
        if directive in settings:
            seen.add(directive)
            value = settings[directive]
            if value is not None:
                lines.append(f"{directive} {value}")
        else:
            lines.append(line)
    missing = set(settings) - seen
    assert not missing, f"deploy/mosquitto no longer has {sorted(missing)}"
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class TlsFiles:
    """A throwaway CA and a server certificate for 127.0.0.1 it signed, plus an unrelated CA."""

    ca_cert: Path
    server_cert: Path
    server_key: Path
    wrong_ca_cert: Path


def _openssl(*args: str | Path) -> None:
    subprocess.run(
        [find_binary("openssl"), *map(str, args)], check=True, capture_output=True, timeout=30
    )


def make_tls_files(directory: Path) -> TlsFiles:
    """Generate the certificates with openssl (EC P-256, valid for one day)."""
    directory.mkdir(parents=True, exist_ok=True)
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    for ca in ("ca", "wrong-ca"):
        _openssl("req", "-x509", *ec, "-days", "1", "-subj", f"/CN=test {ca}",
                 "-keyout", directory / f"{ca}.key", "-out", directory / f"{ca}.crt")  # fmt: skip
    _openssl("req", "-new", *ec, "-subj", f"/CN={LOOPBACK}",
             "-keyout", directory / "server.key", "-out", directory / "server.csr")  # fmt: skip
    (directory / "san.ext").write_text(f"subjectAltName=IP:{LOOPBACK}\n")
    _openssl("x509", "-req", "-in", directory / "server.csr", "-days", "1",
             "-CA", directory / "ca.crt", "-CAkey", directory / "ca.key", "-CAcreateserial",
             "-extfile", directory / "san.ext", "-out", directory / "server.crt")  # fmt: skip
    return TlsFiles(
        ca_cert=directory / "ca.crt",
        server_cert=directory / "server.crt",
        server_key=directory / "server.key",
        wrong_ca_cert=directory / "wrong-ca.crt",
    )


@dataclass(kw_only=True)
class DeployedMosquitto(Mosquitto):
    """Mosquitto running deploy/mosquitto's mosquitto.conf, ACL and TLS listener example."""

    tls: TlsFiles
    tls_port: int = field(default_factory=free_port)
    passwords: Mapping[str, str] = field(default_factory=lambda: dict(PASSWORDS))
    extra_acl: str = PROBE_ACL

    @property
    def log_file(self) -> Path:
        return self.workdir / "mosquitto.log"

    def config_text(self) -> str:
        main = deployed_config(
            (DEPLOY_MOSQUITTO / "mosquitto.conf").read_text(),
            {
                "pid_file": None,
                "password_file": str(self.workdir / "passwd"),
                "acl_file": str(self.workdir / "acl"),
                "listener": f"{self.port} {LOOPBACK}",
                "persistence_location": f"{self.workdir}/",
                "log_dest": f"file {self.log_file}",
                "include_dir": None,
            },
        )
        tls_listener = deployed_config(
            (DEPLOY_MOSQUITTO / "conf.d" / "tls-listener.conf.example").read_text(),
            {
                "listener": f"{self.tls_port} {LOOPBACK}",
                "certfile": str(self.tls.server_cert),
                "keyfile": str(self.tls.server_key),
            },
        )
        # Mosquitto started as root drops to user "mosquitto", which could not read our
        # temporary files: stay the current user.
        return main + tls_listener + f"user {getpass.getuser()}\n"

    def start(self) -> None:
        """Write the password file and ACL copy, then start and wait for both listeners."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        password_file = self.workdir / "passwd"
        password_file.unlink(missing_ok=True)
        for username, password in self.passwords.items():
            create = ["-c"] if not password_file.exists() else []
            subprocess.run(
                [
                    find_binary("mosquitto_passwd"),
                    *create,
                    "-b",
                    str(password_file),
                    username,
                    password,
                ],
                check=True,
                capture_output=True,
                timeout=30,
            )
        acl = (DEPLOY_MOSQUITTO / "groundstation.acl").read_text()
        (self.workdir / "acl").write_text(acl + self.extra_acl)
        super().start()
        assert self.process is not None
        wait_for_port(self.tls_port, process=self.process, what="mosquitto (TLS listener)")


class _ReasonCode(Protocol):
    """paho 2's ReasonCode, as far as these tests read it."""

    value: int


def _paho_client(client_id: str) -> Any:
    """A paho 2 MQTT 5 client; typed Any because types-paho-mqtt still describes paho 1.x."""
    paho: Any = mqtt
    return paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)


class Session:
    """A paho MQTT 5 client whose CONNACK, SUBACK, PUBACKs and messages can be awaited."""

    def __init__(
        self,
        port: int,
        *,
        username: str | None,
        password: str | None = None,
        client_id: str = "",
        persistent: bool = False,
        ca_cert: Path | None = None,
    ) -> None:
        self.client = _paho_client(client_id)
        if username is not None:
            self.client.username_pw_set(username, password)
        if ca_cert is not None:
            self.client.tls_set(ca_certs=str(ca_cert))
        self.connack: Future[int] = Future()
        self.suback: Future[list[int]] = Future()
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self._pubacks: dict[int, Future[int]] = {}
        self._lock = threading.Lock()
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_publish = self._on_publish
        self.client.on_message = self._on_message
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]  # paho 2.2 leaves it untyped
        if persistent:
            properties.SessionExpiryInterval = 3600
        # TLS errors (wrong CA) raise here, from the handshake inside connect().
        self.client.connect(LOOPBACK, port, clean_start=not persistent, properties=properties)
        self.client.loop_start()

    def _on_connect(
        self, _client: object, _userdata: object, _flags: object, code: _ReasonCode, _p: object
    ) -> None:
        if not self.connack.done():
            self.connack.set_result(code.value)

    def _on_subscribe(
        self, _client: object, _userdata: object, _mid: int, codes: list[_ReasonCode], _p: object
    ) -> None:
        self.suback.set_result([code.value for code in codes])

    def _on_publish(
        self, _client: object, _userdata: object, mid: int, code: _ReasonCode, _p: object
    ) -> None:
        self._puback(mid).set_result(code.value)

    def _on_message(self, _client: object, _userdata: object, message: mqtt.MQTTMessage) -> None:
        self.messages.put((message.topic, bytes(message.payload)))

    def _puback(self, mid: int) -> Future[int]:
        with self._lock:
            return self._pubacks.setdefault(mid, Future())

    def connected(self) -> int:
        """The CONNACK reason code (0: accepted)."""
        return self.connack.result(ACK_TIMEOUT_S)

    def subscribe(self, *topic_filters: str) -> list[int]:
        """Subscribe at QoS 1 and return the SUBACK reason codes."""
        self.client.subscribe([(topic_filter, 1) for topic_filter in topic_filters])
        return self.suback.result(ACK_TIMEOUT_S)

    def publish(self, topic: str, payload: bytes) -> int:
        """Publish at QoS 1 and return the PUBACK reason code (135: not authorized)."""
        info = self.client.publish(topic, payload, qos=1)
        return self._puback(info.mid).result(ACK_TIMEOUT_S)

    def next_message(self) -> tuple[str, bytes]:
        return self.messages.get(timeout=ACK_TIMEOUT_S)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def deployed_mosquitto(tmp_path: Path) -> Iterator[DeployedMosquitto]:
    """A broker on the production config of deploy/mosquitto (free loopback ports)."""
    broker = DeployedMosquitto(workdir=tmp_path / "mosquitto", tls=make_tls_files(tmp_path / "tls"))
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@contextlib.contextmanager
def session(port: int, **options: Any) -> Iterator[Session]:
    """A connected Session, closed on exit."""
    client = Session(port, **options)
    try:
        yield client
    finally:
        client.close()


@pytest.mark.integration
def test_anonymous_and_wrong_password_are_refused(deployed_mosquitto: DeployedMosquitto) -> None:
    """Step by step: connect without a username, then as the daemon with a wrong password,
    then with the right one; only the last CONNACK accepts."""
    port = deployed_mosquitto.port
    with session(port, username=None) as anonymous:
        assert anonymous.connected() == NOT_AUTHORIZED
    with session(port, username="groundstation", password="not-the-password") as wrong:
        assert wrong.connected() == NOT_AUTHORIZED
    with session(port, username="groundstation", password=PASSWORDS["groundstation"]) as right:
        assert right.connected() == 0


@pytest.mark.integration
def test_daemon_account_reads_telemetry_only(deployed_mosquitto: DeployedMosquitto) -> None:
    """Step by step: the daemon subscribes to everything (#); its own publish to
    mars/tm/ingenuity is refused (PUBACK 135); the probe account publishes outside mars/tm/
    and then a marker inside it; the daemon receives only the marker, in order."""
    port = deployed_mosquitto.port
    with (
        session(port, username="groundstation", password=PASSWORDS["groundstation"]) as daemon,
        session(port, username="probe", password=PASSWORDS["probe"]) as probe,
    ):
        assert daemon.connected() == 0
        assert probe.connected() == 0
        daemon.subscribe("#")
        assert daemon.publish("mars/tm/ingenuity", b"from the daemon") == NOT_AUTHORIZED
        assert probe.publish("other/topic", b"not telemetry") == 0
        assert probe.publish("mars/tm/ingenuity", b"marker") == 0
        assert daemon.next_message() == ("mars/tm/ingenuity", b"marker")
        assert daemon.messages.empty()


@pytest.mark.integration
def test_publisher_writes_only_its_own_vehicle_topic(
    deployed_mosquitto: DeployedMosquitto,
) -> None:
    """Step by step: the daemon subscribes to mars/tm/#; the ingenuity account publishes to
    perseverance's topic (refused), to a topic outside mars/tm/ (refused), then to its own
    (accepted); the daemon receives exactly the last one."""
    port = deployed_mosquitto.port
    with (
        session(port, username="groundstation", password=PASSWORDS["groundstation"]) as daemon,
        session(port, username="ingenuity", password=PASSWORDS["ingenuity"]) as heli,
    ):
        assert daemon.connected() == 0
        assert heli.connected() == 0
        assert daemon.subscribe("mars/tm/#") == [1]
        assert heli.publish("mars/tm/perseverance", b"spoofed rover") == NOT_AUTHORIZED
        assert heli.publish("mars/cmd/ingenuity", b"not telemetry") == NOT_AUTHORIZED
        assert heli.publish("mars/tm/ingenuity", b"own telemetry") == 0
        assert daemon.next_message() == ("mars/tm/ingenuity", b"own telemetry")
        assert daemon.messages.empty()


@pytest.mark.integration
def test_tls_listener_needs_the_right_ca(deployed_mosquitto: DeployedMosquitto) -> None:
    """Step by step: a publisher connects to the TLS listener trusting the CA that signed
    the server certificate (accepted, and its message arrives); a client trusting an
    unrelated CA fails the handshake."""
    tls = deployed_mosquitto.tls
    with (
        session(
            deployed_mosquitto.port,
            username="groundstation",
            password=PASSWORDS["groundstation"],
        ) as daemon,
        session(
            deployed_mosquitto.tls_port,
            username="perseverance",
            password=PASSWORDS["perseverance"],
            ca_cert=tls.ca_cert,
        ) as rover,
    ):
        assert daemon.connected() == 0
        assert rover.connected() == 0
        assert daemon.subscribe("mars/tm/+") == [1]
        assert rover.publish("mars/tm/perseverance", b"over TLS") == 0
        assert daemon.next_message() == ("mars/tm/perseverance", b"over TLS")
    # The client's side of the handshake, as paho does it (paho leaks the socket when the
    # handshake fails, which pytest reports as an unraisable ResourceWarning).
    wrong_ca = ssl.create_default_context(cafile=str(tls.wrong_ca_cert))
    with (
        socket.create_connection((LOOPBACK, deployed_mosquitto.tls_port), ACK_TIMEOUT_S) as raw,
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        wrong_ca.wrap_socket(raw, server_hostname=LOOPBACK).close()


@pytest.mark.integration
def test_offline_daemon_keeps_a_whole_playback_across_a_broker_restart(
    deployed_mosquitto: DeployedMosquitto,
) -> None:
    """Step by step: the daemon opens a persistent session on mars/tm/# and goes away; the
    ingenuity account publishes 3 x Mosquitto's default queue limit of 1 KiB messages (a
    stored-flight playback); the broker is stopped (saving its store) and restarted; the
    daemon comes back and receives every message, in order; nothing was logged as dropped."""
    port = deployed_mosquitto.port
    count = 3 * DEFAULT_MAX_QUEUED_MESSAGES
    daemon_login: dict[str, Any] = {
        "username": "groundstation",
        "password": PASSWORDS["groundstation"],
        "client_id": "groundstation",
        "persistent": True,
    }
    with session(port, **daemon_login) as daemon:
        assert daemon.connected() == 0
        assert daemon.subscribe("mars/tm/#") == [1]
    with session(port, username="ingenuity", password=PASSWORDS["ingenuity"]) as heli:
        assert heli.connected() == 0
        infos = [
            heli.client.publish("mars/tm/ingenuity", index.to_bytes(4, "big") * 256, qos=1)
            for index in range(count)
        ]
        for info in infos:
            info.wait_for_publish(ACK_TIMEOUT_S)
    deployed_mosquitto.stop()
    deployed_mosquitto.start()
    with session(port, **daemon_login) as daemon:
        assert daemon.connected() == 0
        received = [daemon.next_message() for _ in range(count)]
    assert [int.from_bytes(payload[:4], "big") for _, payload in received] == list(range(count))
    assert "dropped" not in deployed_mosquitto.log_file.read_text()


@pytest.mark.integration
@pytest.mark.asyncio
async def test_daemon_receives_a_burst_over_tls_with_its_account(
    deployed_mosquitto: DeployedMosquitto, tmp_path: Path
) -> None:
    """The daemon on the TLS listener, as deployed: every envelope archived and decoded.

    1. the daemon connects to the TLS listener as `groundstation` (password from the
       environment, the test CA as ca_file);
    2. the helicopter's account publishes 120 envelopes of 1 to 90 KiB on the plain
       listener, so the subscriber's 256 KiB reads hold several messages and split others;
    3. all 120 are decoded, in order, and archived byte for byte.
    """
    config_file = tmp_path / "groundstation.toml"
    config_file.write_text(
        "[broker]\n"
        f'host = "{LOOPBACK}"\nport = {deployed_mosquitto.tls_port}\ntls = true\n'
        f'ca_file = "{deployed_mosquitto.tls.ca_cert}"\nusername = "groundstation"\n'
        'client_id = "gs-tls"\n'
        f'[archive]\ndirectory = "{tmp_path / "archive"}"\n'
        f'[metrics]\nhost = "{LOOPBACK}"\nport = 0\n'
    )
    config = load_config(config_file, env={ENV_PASSWORD: PASSWORDS["groundstation"]})
    sizes = [1 + seq * 37 % 3000 for seq in range(120)]  # HK packets (30 B) per envelope
    payloads = [
        envelope(seq, packets=b"".join(hk_packet(seq * 3000 + k) for k in range(size)))
        for seq, size in enumerate(sizes)
    ]
    async with running_daemon(config) as daemon:
        assert daemon.subscriber is not None
        await daemon.subscriber.connected_event.wait()
        async with aiomqtt.Client(
            LOOPBACK,
            deployed_mosquitto.port,
            username="ingenuity",
            password=PASSWORDS["ingenuity"],
        ) as heli:
            for payload in payloads:
                await heli.publish("mars/tm/ingenuity", payload, qos=1)
        await processed(daemon, len(payloads))
        metrics = await scrape(daemon.metrics_address)
    assert metrics['gs_envelopes_total{result="ok",vehicle="ingenuity"}'] == len(payloads)
    assert metrics['gs_envelopes_lost_total{vehicle="ingenuity"}'] == 0
    records = list(ArchiveReader(config.archive.directory).records())
    assert [record.payload for record in records] == payloads
    assert max(len(p) for p in payloads) > 64 * 1024
