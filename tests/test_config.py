"""Configuration: one frozen tree from defaults, TOML, environment secrets and CLI overrides."""

from __future__ import annotations

import dataclasses
import ssl
from pathlib import Path

import pytest

from groundstation.config import (
    DEFAULT_METRICS_PORT,
    ENV_PASSWORD,
    ENV_USERNAME,
    LOOPBACK,
    BrokerConfig,
    Config,
    Overrides,
    load_config,
    make_tls_context,
    parse_address,
    parse_broker_url,
)
from groundstation.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "groundstation.toml"
    path.write_text(text)
    return path


def test_defaults_use_the_embedded_broker_and_loopback_metrics() -> None:
    config = load_config(None, env={})
    assert config.broker.embedded
    assert config.broker.host == LOOPBACK
    assert config.broker.mqtt_version == "3.1.1"  # amqtt speaks nothing newer
    assert config.broker.topic_filter == "mars/tm/+"
    assert (config.metrics.host, config.metrics.port) == (LOOPBACK, DEFAULT_METRICS_PORT)
    assert config.archive.fsync == "always"
    assert config.ingest.max_clock_skew_s == 60.0  # ICD section 6


def test_config_is_frozen() -> None:
    config = load_config(None, env={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.broker = BrokerConfig()  # type: ignore[misc]


def test_toml_file_sets_every_section(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [broker]
        host = "mqtt.example.org"
        tls = true
        ca_file = "ca.pem"
        username = "ground"
        client_id = "gs-1"
        receive_maximum = 50
        reconnect_max_s = 5

        [archive]
        directory = "/var/lib/groundstation/archive"
        segment_max_bytes = 1048576
        fsync = "interval"
        fsync_interval_s = 0.5

        [metrics]
        host = "0.0.0.0"
        port = 9200

        [ingest]
        shutdown_timeout_s = 3
        max_clock_skew_s = 5
        """,
    )
    config = load_config(path, env={})
    assert not config.broker.embedded
    assert config.broker.host == "mqtt.example.org"
    assert config.broker.port == 8883  # TLS without a port: the mqtts default
    assert config.broker.ca_file == tmp_path / "ca.pem"  # relative to the file
    assert config.broker.username == "ground"
    assert config.broker.client_id == "gs-1"
    assert config.broker.receive_maximum == 50
    assert config.broker.reconnect_max_s == 5.0
    assert config.broker.mqtt_version == "5"
    assert config.archive.directory == Path("/var/lib/groundstation/archive")
    assert config.archive.segment_max_bytes == 1048576
    assert config.archive.fsync == "interval"
    assert config.archive.fsync_interval_s == 0.5
    assert (config.metrics.host, config.metrics.port) == ("0.0.0.0", 9200)
    assert config.ingest.shutdown_timeout_s == 3.0
    assert config.ingest.max_clock_skew_s == 5.0


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[broker]\nhots = 'x'\n", "broker.hots"),
        ("[archive]\nfsync_interval = 1\n", "archive.fsync_interval"),
        ("[metric]\nport = 1\n", "metric"),
        ("[ingest]\nqueue_size = 1\n", "ingest.queue_size"),
        ("[ingest]\nmax_clock_skew = 60\n", "ingest.max_clock_skew"),
    ],
)
def test_unknown_key_is_an_error_naming_it(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError, match=f"unknown configuration key {key}$"):
        load_config(write(tmp_path, text), env={})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[broker]\nport = '1883'\n", "broker.port: expected an integer, got str"),
        ("[broker]\nport = true\n", "broker.port: expected an integer, got a boolean"),
        ("[broker]\nport = 70000\n", r"broker.port: 70000 is out of range \(1..65535\)"),
        ("[broker]\ntls = 1\n", "broker.tls: expected true or false"),
        ("[archive]\nfsync = 'sometimes'\n", "archive.fsync: 'sometimes' is not one of"),
        ("[ingest]\nshutdown_timeout_s = 0\n", "ingest.shutdown_timeout_s: 0 must be > 0"),
        ("[ingest]\nmax_clock_skew_s = -1\n", "ingest.max_clock_skew_s: -1 must be > 0"),
        ("broker = 3\n", "broker: expected a table"),
        ("[broker\n", "groundstation.toml"),
        ("[broker]\nhost = 'h'\nreconnect_min_s = 9\nreconnect_max_s = 2\n", "reconnect_max_s"),
    ],
)
def test_bad_values_are_errors_naming_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text), env={})


def test_password_in_the_file_is_refused_with_the_variable_to_use(tmp_path: Path) -> None:
    path = write(tmp_path, "[broker]\nhost = 'h'\npassword = 'hunter2'\n")
    with pytest.raises(ConfigError, match=ENV_PASSWORD):
        load_config(path, env={})


def test_secrets_come_from_the_environment(tmp_path: Path) -> None:
    path = write(tmp_path, "[broker]\nhost = 'h'\nusername = 'from-file'\n")
    config = load_config(path, env={ENV_PASSWORD: "s3cret"})
    assert config.broker.username == "from-file"
    assert config.broker.password == "s3cret"
    assert "s3cret" not in repr(config)
    config = load_config(path, env={ENV_USERNAME: "from-env"})
    assert config.broker.username == "from-env"
    assert config.broker.password is None


def test_cli_overrides_win_over_the_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "[broker]\nhost = 'file-host'\nclient_id = 'file-id'\n[metrics]\nport = 1\n",
    )
    overrides = Overrides(
        broker_url="mqtts://other:8884",
        metrics_addr="127.0.0.1:0",
        archive_dir=Path("here"),
        client_id="cli-id",
    )
    config = load_config(path, env={}, overrides=overrides)
    assert (config.broker.host, config.broker.port, config.broker.tls) == ("other", 8884, True)
    assert config.broker.client_id == "cli-id"
    assert (config.metrics.host, config.metrics.port) == (LOOPBACK, 0)
    assert config.archive.directory == Path("here")


def test_broker_override_turns_off_the_embedded_broker() -> None:
    config = load_config(None, env={}, overrides=Overrides(broker_url="mqtt://127.0.0.1:1999"))
    assert not config.broker.embedded
    assert config.broker.port == 1999
    assert config.broker.mqtt_version == "5"


def test_mqtt5_with_the_embedded_broker_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"only 3\.1\.1"):
        load_config(write(tmp_path, "[broker]\nmqtt_version = '5'\n"), env={})


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mqtt://broker", BrokerConfig(host="broker", port=1883)),
        ("mqtts://broker", BrokerConfig(host="broker", port=8883, tls=True)),
        ("mqtt://127.0.0.1:1999", BrokerConfig(host="127.0.0.1", port=1999)),
        ("mqtt://[::1]:1999", BrokerConfig(host="::1", port=1999)),
        (
            "mqtt://user%40x:p%3Ass@broker:1",
            BrokerConfig(host="broker", port=1, username="user@x", password="p:ss"),
        ),
        ("mqtt://user@broker", BrokerConfig(host="broker", username="user")),
    ],
)
def test_parse_broker_url(url: str, expected: BrokerConfig) -> None:
    assert parse_broker_url(url) == expected


@pytest.mark.parametrize(
    "url",
    ["http://broker", "broker:1883", "mqtt://", "mqtt://broker:99999", "mqtt://broker/topic"],
)
def test_bad_broker_urls_are_config_errors(url: str) -> None:
    with pytest.raises(ConfigError, match="broker URL"):
        parse_broker_url(url)


def test_broker_url_errors_do_not_echo_the_password() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_broker_url("http://user:hunter2@broker")
    assert "hunter2" not in str(caught.value)


def test_url_for_logs_has_no_password() -> None:
    config = parse_broker_url("mqtts://user:hunter2@broker")
    assert config.url == "mqtts://user@broker:8883"


@pytest.mark.parametrize(
    ("address", "expected"),
    [("127.0.0.1:9108", ("127.0.0.1", 9108)), ("[::1]:80", ("::1", 80)), ("h:0", ("h", 0))],
)
def test_parse_address(address: str, expected: tuple[str, int]) -> None:
    assert parse_address(address, what="--metrics-addr") == expected


@pytest.mark.parametrize("address", ["9108", ":9108", "host:", "host:port", "h:65536"])
def test_bad_addresses_are_config_errors(address: str) -> None:
    with pytest.raises(ConfigError, match="--metrics-addr"):
        parse_address(address, what="--metrics-addr")


def test_tls_context_only_with_tls() -> None:
    assert make_tls_context(BrokerConfig()) is None
    context = make_tls_context(BrokerConfig(tls=True))
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname


def test_tls_context_with_a_missing_ca_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing\.pem"):
        make_tls_context(BrokerConfig(tls=True, ca_file=tmp_path / "missing.pem"))


def test_example_config_in_deploy_loads() -> None:
    """deploy/groundstation.example.toml stays in step with the code."""
    config = load_config(REPO / "deploy" / "groundstation.example.toml", env={})
    assert isinstance(config, Config)
    assert not config.broker.embedded
    assert config.broker.mqtt_version == "5"
