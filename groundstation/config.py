"""The daemon's one configuration tree: parsed once at the edge, frozen, units in the names.

Sources, later ones winning: built-in defaults, a TOML file, environment variables (for
secrets only), and a few command-line overrides. Unknown keys and wrong types are a
`ConfigError` naming the key. Nothing downstream reads the environment or the file.
"""

from __future__ import annotations

import ssl
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Final, Literal, TypeVar, get_args
from urllib.parse import SplitResult, unquote, urlsplit

from groundstation.core.envelope import DEFAULT_MAX_CLOCK_SKEW_S
from groundstation.errors import ConfigError

LOOPBACK: Final = "127.0.0.1"
DEFAULT_MQTT_PORT: Final = 1883
DEFAULT_MQTTS_PORT: Final = 8883
DEFAULT_METRICS_PORT: Final = 9108
MAX_PORT: Final = 65535
MQTT_MAX_RECEIVE_MAXIMUM: Final = 65535  # MQTT 5 section 3.1.2.11.3: a two-byte integer
MQTT_MAX_SESSION_EXPIRY_S: Final = 2**32 - 1  # MQTT 5 section 3.1.2.11.2: never expires
MQTT_MAX_KEEPALIVE_S: Final = 65535

# Environment variables: secrets never live in the config file.
ENV_USERNAME: Final = "GROUNDSTATION_MQTT_USERNAME"
ENV_PASSWORD: Final = "GROUNDSTATION_MQTT_PASSWORD"
ENV_KEY_PASSWORD: Final = "GROUNDSTATION_MQTT_KEY_PASSWORD"
_SECRET_KEYS: Final = {"password": ENV_PASSWORD, "key_password": ENV_KEY_PASSWORD}

MqttVersion = Literal["3.1.1", "5"]
FsyncPolicy = Literal["always", "interval", "never"]

_T = TypeVar("_T")
_S = TypeVar("_S", bound=str)


@dataclass(frozen=True, kw_only=True)
class BrokerConfig:
    """Where the MQTT broker is and how to log in; shared by the daemon and the simulator."""

    host: str = LOOPBACK
    port: int = DEFAULT_MQTT_PORT
    embedded: bool = False  # True: the daemon runs amqtt itself on LOOPBACK:port
    tls: bool = False
    ca_file: Path | None = None  # None with tls: the system's trusted CAs
    cert_file: Path | None = None  # client certificate, for brokers that require one
    key_file: Path | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    key_password: str | None = field(default=None, repr=False)
    client_id: str = "groundstation"
    topic_filter: str = "mars/tm/+"
    mqtt_version: MqttVersion = "5"
    keepalive_s: int = 60
    session_expiry_s: int = 7 * 24 * 3600  # MQTT 5: how long the broker keeps our queue
    receive_maximum: int = 100  # MQTT 5: unacknowledged QoS 1 messages the broker may send
    connect_timeout_s: float = 10.0
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 30.0

    @property
    def url(self) -> str:
        """The broker as a URL for log lines: never carries the password."""
        scheme = "mqtts" if self.tls else "mqtt"
        host = f"[{self.host}]" if ":" in self.host else self.host
        user = f"{self.username}@" if self.username else ""
        return f"{scheme}://{user}{host}:{self.port}"


@dataclass(frozen=True, kw_only=True)
class ArchiveConfig:
    """The raw archive: append-only segment files, rotated by size."""

    directory: Path = Path("archive")
    segment_max_bytes: int = 64 * 1024 * 1024
    # always: fsync every written batch before its messages are acknowledged;
    # interval: at most every fsync_interval_s (a kill -9 loses nothing, a power cut may);
    # never: leave it to the kernel (and to rotation and close).
    fsync: FsyncPolicy = "always"
    fsync_interval_s: float = 1.0


@dataclass(frozen=True, kw_only=True)
class MetricsConfig:
    """Where /metrics and /healthz are served; loopback unless the operator says otherwise."""

    host: str = LOOPBACK
    port: int = DEFAULT_METRICS_PORT  # 0: any free port (tests)


@dataclass(frozen=True, kw_only=True)
class IngestConfig:
    """Limits of ingest and of the decoding consumer's reads: every buffer is bounded."""

    max_payload_bytes: int = 16 * 1024 * 1024  # ICD section 6: larger payloads are invalid
    batch_max_envelopes: int = 1024
    batch_max_bytes: int = 8 * 1024 * 1024  # decoder call size: per-call costs amortised
    shutdown_timeout_s: float = 10.0  # drain budget after SIGTERM; systemd's stop timeout is longer
    resume_scan_bytes: int = 64 * 1024 * 1024  # archive tail replayed at start to resume sequences
    # ICD section 6: how far ert may lie after the receive time, and packet time after ert.
    max_clock_skew_s: float = DEFAULT_MAX_CLOCK_SKEW_S


@dataclass(frozen=True, kw_only=True)
class HistoryConfig:
    """The history writer (ICD section 7): off while `url` is None."""

    url: str | None = None  # the receiver's remote-write endpoint, http:// or https://
    timeout_s: float = 10.0  # one POST
    batch_max_samples: int = 20_000  # samples per WriteRequest
    backoff_min_s: float = 0.5  # first retry after a connection error or a 5xx
    backoff_max_s: float = 30.0  # retries back off exponentially up to this, with jitter
    poll_interval_s: float = 1.0  # how often a caught-up writer looks for new archive records


@dataclass(frozen=True, kw_only=True)
class Config:
    """Everything the daemon needs, in one immutable tree."""

    broker: BrokerConfig = field(default_factory=BrokerConfig)
    archive: ArchiveConfig = field(default_factory=ArchiveConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    history: HistoryConfig = field(default_factory=HistoryConfig)


@dataclass(frozen=True, kw_only=True)
class Overrides:
    """The command line's few overrides; None leaves the file's (or default) value."""

    broker_url: str | None = None
    metrics_addr: str | None = None
    archive_dir: Path | None = None
    client_id: str | None = None
    history_url: str | None = None


def parse_broker_url(url: str) -> BrokerConfig:
    """`mqtt://[user[:pass]@]host[:port]` or `mqtts://…` (TLS) as a BrokerConfig."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        raise ConfigError(f"broker URL {_redact(url)!r}: {error}") from None
    if parts.scheme not in {"mqtt", "mqtts"}:
        raise ConfigError(f"broker URL {_redact(url)!r}: scheme must be mqtt:// or mqtts://")
    if not parts.hostname:
        raise ConfigError(f"broker URL {_redact(url)!r}: no host")
    if parts.path not in {"", "/"} or parts.query or parts.fragment:
        raise ConfigError(f"broker URL {_redact(url)!r}: only scheme, user, host and port")
    tls = parts.scheme == "mqtts"
    return BrokerConfig(
        host=parts.hostname,
        port=port if port is not None else (DEFAULT_MQTTS_PORT if tls else DEFAULT_MQTT_PORT),
        tls=tls,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
    )


def _redact(url: str) -> str:
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return SplitResult(parts.scheme, netloc, parts.path, parts.query, parts.fragment).geturl()


def parse_address(address: str, *, what: str) -> tuple[str, int]:
    """`HOST:PORT` or `[IPv6]:PORT` as (host, port)."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ConfigError(f"{what} {address!r}: expected HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    port = int(port_text)
    if port > MAX_PORT:
        raise ConfigError(f"{what} {address!r}: port out of range")
    return host, port


def make_tls_context(config: BrokerConfig) -> ssl.SSLContext | None:
    """The client TLS context for `config`, or None without TLS; checks the server's name."""
    if not config.tls:
        return None
    try:
        context = ssl.create_default_context(cafile=str(config.ca_file) if config.ca_file else None)
        if config.cert_file is not None:
            context.load_cert_chain(
                str(config.cert_file),
                str(config.key_file) if config.key_file else None,
                password=config.key_password,
            )
    except (ssl.SSLError, OSError) as error:
        files = ", ".join(
            str(name) for name in (config.ca_file, config.cert_file, config.key_file) if name
        )
        raise ConfigError(f"broker TLS files ({files or 'system CAs'}): {error}") from error
    return context


def load_config(
    path: Path | None,
    *,
    env: Mapping[str, str],
    overrides: Overrides | None = None,
) -> Config:
    """Defaults <- TOML file at `path` <- secrets from `env` <- command-line `overrides`."""
    document: dict[str, object] = {}
    base = Path()
    if path is not None:
        try:
            with path.open("rb") as file:
                document = tomllib.load(file)
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"{path}: {error}") from None
        base = path.parent
    config, mqtt_version = _from_document(document, base=base)
    config = _apply_environment(config, env)
    if overrides is not None:
        config = _apply_overrides(config, overrides)
    config = _with_mqtt_version(config, mqtt_version)
    _check(config)
    return config


class _Table:
    """One TOML table, read key by key with type checks; leftovers are unknown keys."""

    def __init__(self, document: Mapping[str, object], name: str) -> None:
        value = document.get(name, {})
        if not isinstance(value, dict):
            raise ConfigError(f"{name}: expected a table [{name}]")
        self._values: dict[str, object] = dict(value)
        self.name = name

    def has(self, key: str) -> bool:
        return key in self._values

    def _take(self, key: str, kind: type[_T] | tuple[type[_T], ...], what: str) -> _T:
        value = self._values.pop(key)
        # TOML booleans are Python bools, which are also ints: keep them apart.
        if isinstance(value, bool) and kind is not bool:
            raise ConfigError(f"{self.name}.{key}: expected {what}, got a boolean")
        if not isinstance(value, kind):
            raise ConfigError(f"{self.name}.{key}: expected {what}, got {type(value).__name__}")
        return value

    def text(self, key: str, default: str) -> str:
        return self._take(key, str, "a string") if key in self._values else default

    def optional_text(self, key: str, default: str | None) -> str | None:
        return self._take(key, str, "a string") or None if key in self._values else default

    def flag(self, key: str, default: bool) -> bool:
        return self._take(key, bool, "true or false") if key in self._values else default

    def integer(self, key: str, default: int, *, minimum: int, maximum: int | None = None) -> int:
        if key not in self._values:
            return default
        value = self._take(key, int, "an integer")
        if value < minimum or (maximum is not None and value > maximum):
            bound = f"{minimum}..{maximum}" if maximum is not None else f">= {minimum}"
            raise ConfigError(f"{self.name}.{key}: {value} is out of range ({bound})")
        return value

    def seconds(self, key: str, default: float) -> float:
        if key not in self._values:
            return default
        value: float = self._take(key, (int, float), "a number of seconds")
        if not value > 0:
            raise ConfigError(f"{self.name}.{key}: {value} must be > 0")
        return float(value)

    def path(self, key: str, default: Path | None, *, base: Path) -> Path | None:
        if key not in self._values:
            return default
        value = self._take(key, str, "a path")
        if not value:
            raise ConfigError(f"{self.name}.{key}: empty path")
        return base / Path(value).expanduser()

    def choice(self, key: str, default: _S, choices: tuple[_S, ...]) -> _S:
        if key not in self._values:
            return default
        value = self._take(key, str, "a string")
        for choice in choices:
            if value == choice:
                return choice
        raise ConfigError(f"{self.name}.{key}: {value!r} is not one of {', '.join(choices)}")

    def done(self) -> None:
        """Every key has been read: anything left is a typo or an unsupported setting."""
        for key in self._values:
            if key in _SECRET_KEYS:
                raise ConfigError(
                    f"{self.name}.{key}: secrets are not read from the config file;"
                    f" set the environment variable {_SECRET_KEYS[key]}"
                )
            raise ConfigError(f"unknown configuration key {self.name}.{key}")


_SECTIONS: Final = ("broker", "archive", "metrics", "ingest", "history")


def _from_document(
    document: Mapping[str, object], *, base: Path
) -> tuple[Config, MqttVersion | None]:
    for key in document:
        if key not in _SECTIONS:
            raise ConfigError(f"unknown configuration key {key}")
    defaults = Config()
    broker, mqtt_version = _broker_from(_Table(document, "broker"), defaults.broker, base=base)
    archive = _archive_from(_Table(document, "archive"), defaults.archive, base=base)
    metrics = _metrics_from(_Table(document, "metrics"), defaults.metrics)
    ingest = _ingest_from(_Table(document, "ingest"), defaults.ingest)
    history = _history_from(_Table(document, "history"), defaults.history)
    config = Config(broker=broker, archive=archive, metrics=metrics, ingest=ingest, history=history)
    return config, mqtt_version


def _broker_from(
    table: _Table, default: BrokerConfig, *, base: Path
) -> tuple[BrokerConfig, MqttVersion | None]:
    # No host anywhere means "use the embedded broker"; --broker may still
    # name one, see _apply_overrides.
    embedded = not table.has("host")
    tls = table.flag("tls", default.tls)
    versions: tuple[MqttVersion, ...] = get_args(MqttVersion)
    mqtt_version = (
        table.choice("mqtt_version", "5", versions) if table.has("mqtt_version") else None
    )
    config = BrokerConfig(
        host=table.text("host", default.host),
        port=table.integer(
            "port", DEFAULT_MQTTS_PORT if tls else default.port, minimum=1, maximum=MAX_PORT
        ),
        embedded=embedded,
        tls=tls,
        ca_file=table.path("ca_file", default.ca_file, base=base),
        cert_file=table.path("cert_file", default.cert_file, base=base),
        key_file=table.path("key_file", default.key_file, base=base),
        username=table.optional_text("username", default.username),
        client_id=table.text("client_id", default.client_id),
        topic_filter=table.text("topic_filter", default.topic_filter),
        keepalive_s=table.integer(
            "keepalive_s", default.keepalive_s, minimum=1, maximum=MQTT_MAX_KEEPALIVE_S
        ),
        session_expiry_s=table.integer(
            "session_expiry_s",
            default.session_expiry_s,
            minimum=1,
            maximum=MQTT_MAX_SESSION_EXPIRY_S,
        ),
        receive_maximum=table.integer(
            "receive_maximum",
            default.receive_maximum,
            minimum=1,
            maximum=MQTT_MAX_RECEIVE_MAXIMUM,
        ),
        connect_timeout_s=table.seconds("connect_timeout_s", default.connect_timeout_s),
        reconnect_min_s=table.seconds("reconnect_min_s", default.reconnect_min_s),
        reconnect_max_s=table.seconds("reconnect_max_s", default.reconnect_max_s),
    )
    table.done()
    return config, mqtt_version


def _archive_from(table: _Table, default: ArchiveConfig, *, base: Path) -> ArchiveConfig:
    config = ArchiveConfig(
        directory=table.path("directory", default.directory, base=base) or default.directory,
        segment_max_bytes=table.integer(
            "segment_max_bytes", default.segment_max_bytes, minimum=64 * 1024
        ),
        fsync=table.choice("fsync", default.fsync, get_args(FsyncPolicy)),
        fsync_interval_s=table.seconds("fsync_interval_s", default.fsync_interval_s),
    )
    table.done()
    return config


def _metrics_from(table: _Table, default: MetricsConfig) -> MetricsConfig:
    config = MetricsConfig(
        host=table.text("host", default.host),
        port=table.integer("port", default.port, minimum=0, maximum=MAX_PORT),
    )
    table.done()
    return config


def _ingest_from(table: _Table, default: IngestConfig) -> IngestConfig:
    config = IngestConfig(
        max_payload_bytes=table.integer(
            "max_payload_bytes", default.max_payload_bytes, minimum=1024
        ),
        batch_max_envelopes=table.integer(
            "batch_max_envelopes", default.batch_max_envelopes, minimum=1
        ),
        batch_max_bytes=table.integer("batch_max_bytes", default.batch_max_bytes, minimum=1024),
        shutdown_timeout_s=table.seconds("shutdown_timeout_s", default.shutdown_timeout_s),
        resume_scan_bytes=table.integer("resume_scan_bytes", default.resume_scan_bytes, minimum=0),
        max_clock_skew_s=table.seconds("max_clock_skew_s", default.max_clock_skew_s),
    )
    table.done()
    return config


def _history_from(table: _Table, default: HistoryConfig) -> HistoryConfig:
    config = HistoryConfig(
        url=table.optional_text("url", default.url),
        timeout_s=table.seconds("timeout_s", default.timeout_s),
        batch_max_samples=table.integer("batch_max_samples", default.batch_max_samples, minimum=1),
        backoff_min_s=table.seconds("backoff_min_s", default.backoff_min_s),
        backoff_max_s=table.seconds("backoff_max_s", default.backoff_max_s),
        poll_interval_s=table.seconds("poll_interval_s", default.poll_interval_s),
    )
    table.done()
    return config


def _apply_environment(config: Config, env: Mapping[str, str]) -> Config:
    broker = config.broker
    return replace(
        config,
        broker=replace(
            broker,
            username=env.get(ENV_USERNAME) or broker.username,
            password=env.get(ENV_PASSWORD) or None,
            key_password=env.get(ENV_KEY_PASSWORD) or None,
        ),
    )


def _apply_overrides(config: Config, overrides: Overrides) -> Config:
    broker = config.broker
    if overrides.broker_url is not None:
        from_url = parse_broker_url(overrides.broker_url)
        broker = replace(
            broker,
            host=from_url.host,
            port=from_url.port,
            embedded=False,
            tls=from_url.tls,
            username=from_url.username or broker.username,
            password=from_url.password or broker.password,
        )
    if overrides.client_id is not None:
        broker = replace(broker, client_id=overrides.client_id)
    metrics = config.metrics
    if overrides.metrics_addr is not None:
        host, port = parse_address(overrides.metrics_addr, what="--metrics-addr")
        metrics = MetricsConfig(host=host, port=port)
    archive = config.archive
    if overrides.archive_dir is not None:
        archive = replace(archive, directory=overrides.archive_dir)
    history = config.history
    if overrides.history_url is not None:
        history = replace(history, url=overrides.history_url or None)
    return replace(config, broker=broker, metrics=metrics, archive=archive, history=history)


def _with_mqtt_version(config: Config, requested: MqttVersion | None) -> Config:
    """MQTT 5 unless asked otherwise; the embedded amqtt broker speaks only 3.1.1."""
    broker = config.broker
    if broker.embedded:
        if requested == "5":
            raise ConfigError(
                "broker.mqtt_version: the embedded broker (amqtt) speaks only 3.1.1;"
                " set broker.host to use MQTT 5"
            )
        return replace(config, broker=replace(broker, host=LOOPBACK, mqtt_version="3.1.1"))
    return replace(config, broker=replace(broker, mqtt_version=requested or "5"))


def _check(config: Config) -> None:
    broker = config.broker
    if not broker.client_id:
        raise ConfigError("broker.client_id: empty; a persistent session needs a fixed id")
    if not broker.topic_filter:
        raise ConfigError("broker.topic_filter: empty")
    if not broker.host:
        raise ConfigError("broker.host: empty")
    if broker.reconnect_max_s < broker.reconnect_min_s:
        raise ConfigError("broker.reconnect_max_s: smaller than broker.reconnect_min_s")
    if broker.key_file is not None and broker.cert_file is None:
        raise ConfigError("broker.key_file: given without broker.cert_file")
    if broker.embedded and broker.tls:
        raise ConfigError("broker.tls: the embedded broker is plain MQTT on loopback; set host")
    if not config.metrics.host:
        raise ConfigError("metrics.host: empty")
    history = config.history
    if history.url is not None and urlsplit(history.url).scheme not in {"http", "https"}:
        raise ConfigError(f"history.url {_redact(history.url)!r}: scheme must be http or https")
    if history.backoff_max_s < history.backoff_min_s:
        raise ConfigError("history.backoff_max_s: smaller than history.backoff_min_s")
