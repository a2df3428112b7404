"""Every dashboard and rule expression against a real Prometheus scraping a real daemon.

Debian's prometheus (docs/deploy.md), started here on a free loopback port with
deploy/prometheus/prometheus.yml rewritten for 1 s scrapes and rule evaluations, scrapes
the daemon while the simulator plays flight 3 back through a real Mosquitto running
deploy/mosquitto's files; then every PromQL expression of every dashboard and rule goes
through the HTTP API.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import re
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import pytest
import yaml
from groundstation.simulators.faults import FaultKind
from groundstation.simulators.run import SimulationOptions, simulate

from groundstation.config import Config, HistoryConfig, Overrides, load_config, parse_broker_url
from groundstation.service.daemon import Daemon, running_daemon
from tests.daemon_support import get, scrape
from tests.services import LOOPBACK, find_binary, free_port
from tests.test_deploy_mosquitto import (
    DEPLOY_MOSQUITTO,
    PASSWORDS,
    DeployedMosquitto,
    make_tls_files,
)
from tests.test_deploy_static import (
    PROMETHEUS,
    dashboard_exprs,
    is_history,
    load_yaml,
    rule_groups,
)

DEADLINE_S: Final = 45.0
POLL_S: Final = 0.25
# What Grafana would put in place of the dashboards' variables.
DASHBOARD_VARIABLES: Final = {
    "$stale_after_s": "600",
    "$__rate_interval": "1m",
    "$__range": "1h",
}
# Faults sprinkled over the flight so that every result label has data (CRC errors,
# invalid envelopes, malformed tails, duplicates, unknown APIDs, losses, late envelopes).
FAULTS: Final[dict[FaultKind, float]] = {
    "garbage": 0.03,
    "wrong_version": 0.01,
    "truncate": 0.02,
    "reorder": 0.02,
    "drop_packet": 0.002,
    "flip_bits": 0.002,
    "duplicate_packet": 0.002,
    "unknown_apid": 0.002,
}
# Alerts a faulty but otherwise healthy flight may raise: the injected faults, nothing from
# the vehicle's health (a health alert here means a threshold disagrees with the simulator).
FAULT_ALERTS: Final = frozenset(
    {"InvalidEnvelopes", "EnvelopesLost", "PacketLossHigh", "PacketCrcErrors"}
)
# Alerts on the test machine's own disk (the archive is in its temporary directory): they
# say how full that is, whatever the flight does.
HOST_ALERTS: Final = frozenset({"ArchiveFilesystemAlmostFull", "ArchiveFilesystemFillingUp"})
_SELECTOR: Final = re.compile(r"(?<![\w:$])(gs_\w+|[a-z_]+:[\w:]+|up(?=\{))(\{[^}]*\})?")


@dataclass
class PrometheusServer:
    """Debian's prometheus on a free loopback port, with a temporary TSDB."""

    workdir: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    extra_args: tuple[str, ...] = ()  # e.g. --web.enable-remote-write-receiver

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def log(self) -> Path:
        return self.workdir / "prometheus.log"

    def start(self, config: dict[str, Any]) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config_file = self.workdir / "prometheus.yml"
        config_file.write_text(yaml.safe_dump(config))
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    find_binary("prometheus"),
                    f"--config.file={config_file}",
                    f"--storage.tsdb.path={self.workdir / 'data'}",
                    f"--web.listen-address={LOOPBACK}:{self.port}",
                    "--log.level=warn",
                    *self.extra_args,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.wait_for(self._ready, "prometheus ready")

    def _ready(self) -> bool:
        with contextlib.suppress(OSError):
            return get(f"{self.url}/-/ready")[0] == 200
        return False

    def wait_for(self, condition: Callable[[], bool], what: str) -> None:
        """Poll `condition` until it holds; fail with the server log after DEADLINE_S."""
        deadline = time.monotonic() + DEADLINE_S
        while not condition():
            assert self.process is not None
            if self.process.poll() is not None:
                pytest.fail(f"prometheus exited with {self.process.returncode}:\n{self.output()}")
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting for {what}\n{self.output()}")
            time.sleep(POLL_S)

    def api(self, path: str, **params: str) -> dict[str, Any]:
        """GET /api/v1/<path>; the JSON answer, errors (HTTP 400/422) included."""
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                answer: dict[str, Any] = json.load(response)
        except urllib.error.HTTPError as error:
            answer = json.load(error)
        return answer

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector of `expr`; fails the test on a parse or evaluation error."""
        answer = self.api("query", query=expr)
        assert answer["status"] == "success", (expr, answer.get("error"))
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-5000:]


def live_config(*, daemon_port: int, prometheus_port: int) -> dict[str, Any]:
    """deploy/prometheus/prometheus.yml with 1 s scrapes and evaluations and test targets."""
    config: dict[str, Any] = load_yaml(PROMETHEUS / "prometheus.yml")
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(PROMETHEUS / name) for name in config["rule_files"]]
    targets = {
        "groundstation": f"{LOOPBACK}:{daemon_port}",
        "prometheus": f"{LOOPBACK}:{prometheus_port}",
    }
    for job in config["scrape_configs"]:
        job.update(scrape_interval="1s", scrape_timeout="1s")
        job["static_configs"] = [{"targets": [targets[job["job_name"]]]}]
    return config


def substituted(expr: str) -> str:
    for variable, value in DASHBOARD_VARIABLES.items():
        expr = expr.replace(variable, value)
    return expr


def expressions_that_need_data() -> dict[str, str]:
    """Label -> expression: every dashboard query, every recording rule, and every series
    selector inside the alert rules (the alerts themselves are quiet after a good flight)."""
    needed = {
        # A history query's samples lie at packet time, long before now: any data of the
        # last hours counts (the history row is drawn over the flight's own time).
        f"dashboard {file} / {title}: {expr}": (
            f"last_over_time(({expr})[6h:10s])" if is_history(expr) else substituted(expr)
        )
        for file, title, expr in dashboard_exprs()
    }
    for group in rule_groups():
        for rule in group["rules"]:
            if "record" in rule:
                needed[f"recording rule {rule['record']}"] = rule["expr"]
            else:
                for name, matchers in _SELECTOR.findall(rule["expr"]):
                    needed[f"alert {rule['alert']}: {name}{matchers}"] = name + matchers
    return needed


SIMULATOR_PASSWORD: Final = "simulator-secret"


def simulator_acl() -> str:
    """The ACL's commented-out test-bench block (docs/deploy.md step 6), switched on."""
    acl = (DEPLOY_MOSQUITTO / "groundstation.acl").read_text()
    block = "#user simulator\n#topic write mars/tm/+\n"
    assert block in acl
    return "\n" + block.replace("#", "")


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[DeployedMosquitto]:
    """Mosquitto on deploy/mosquitto's files with the test-bench simulator account."""
    mosquitto = DeployedMosquitto(
        workdir=tmp_path / "mosquitto",
        tls=make_tls_files(tmp_path / "tls"),
        passwords={**PASSWORDS, "simulator": SIMULATOR_PASSWORD},
        extra_acl=simulator_acl(),
    )
    mosquitto.start()
    try:
        yield mosquitto
    finally:
        mosquitto.stop()


def daemon_config(
    broker: DeployedMosquitto, tmp_path: Path, *, history_url: str | None = None
) -> Config:
    """The daemon logs in as `groundstation` (password from the environment, as deployed);
    with `history_url`, its history writer writes there (docs/deploy.md, step 4)."""
    config = load_config(
        None,
        env={
            "GROUNDSTATION_MQTT_USERNAME": "groundstation",
            "GROUNDSTATION_MQTT_PASSWORD": PASSWORDS["groundstation"],
        },
        overrides=Overrides(
            broker_url=broker.url,
            metrics_addr=f"{LOOPBACK}:0",
            archive_dir=tmp_path / "archive",
            client_id="gs-prometheus-live",
        ),
    )
    if history_url is None:
        return config
    return dataclasses.replace(
        config, history=HistoryConfig(url=history_url, poll_interval_s=0.2, backoff_max_s=1.0)
    )


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[PrometheusServer]:
    # Started as docs/deploy.md step 4 says: with the history writer's receiver on.
    server = PrometheusServer(
        workdir=tmp_path / "prometheus", extra_args=("--web.enable-remote-write-receiver",)
    )
    try:
        yield server
    finally:
        server.stop()


async def fly_flight_3(broker: DeployedMosquitto) -> int:
    """Flight 3, store-and-forward, with faults; returns the envelopes published."""
    options = SimulationOptions(
        profile="flight3",
        broker=parse_broker_url(f"mqtt://simulator:{SIMULATOR_PASSWORD}@{LOOPBACK}:{broker.port}"),
        store_and_forward=True,
        light_time_s=600.0,
        faults=FAULTS,
        seed=4,
    )
    report = await simulate(options)
    vehicles: dict[str, Any] = report.document["vehicles"]
    invalid: dict[str, int] = report.document["expected_invalid_envelopes"]
    assert sum(invalid.values()) > 0, "the flight must carry invalid envelopes"
    return sum(int(vehicle["envelopes_published"]) for vehicle in vehicles.values())


async def all_envelopes_counted(daemon: Daemon, published: int) -> dict[str, float]:
    """Scrape the daemon until gs_envelopes_total adds up to `published`; the last scrape."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        samples = await scrape(daemon.metrics_address)
        counted = sum(v for k, v in samples.items() if k.startswith("gs_envelopes_total{"))
        if counted == published:
            return samples
        assert time.monotonic() < deadline, f"{counted} of {published} envelopes counted"
        await asyncio.sleep(POLL_S)


def check_every_expression(prometheus: PrometheusServer, published: int) -> None:
    """The Prometheus half of the live test (blocking HTTP; run in a thread)."""
    prometheus.wait_for(
        lambda: (
            [float(s["value"][1]) for s in prometheus.query("sum(gs_envelopes_total)")]
            == [published]
        ),
        "Prometheus to scrape the final counts",
    )
    needed = expressions_that_need_data()
    for expr in needed.values():
        prometheus.query(expr)  # parses and evaluates: an error fails here, at once
    empty: list[str] = []

    def all_have_data() -> bool:
        empty[:] = [label for label, expr in needed.items() if not prometheus.query(expr)]
        return not empty

    with contextlib.suppress(pytest.fail.Exception):
        prometheus.wait_for(all_have_data, "data for every expression")
    assert empty == []

    def rules_evaluated() -> bool:
        groups = prometheus.api("rules")["data"]["groups"]
        return all(rule["health"] != "unknown" for g in groups for rule in g["rules"])

    prometheus.wait_for(rules_evaluated, "every rule evaluated")
    groups = prometheus.api("rules")["data"]["groups"]
    unhealthy = {
        rule["name"]: rule.get("lastError")
        for group in groups
        for rule in group["rules"]
        if rule["health"] != "ok"
    }
    assert unhealthy == {}

    prometheus.wait_for(
        lambda: bool(prometheus.query('ALERTS{alertname="InvalidEnvelopes"}')),
        "InvalidEnvelopes to fire",
    )
    raised = {sample["metric"]["alertname"] for sample in prometheus.query("ALERTS")}
    assert raised - HOST_ALERTS <= FAULT_ALERTS


@pytest.mark.integration
@pytest.mark.asyncio
async def test_every_dashboard_and_rule_expression_returns_data(
    broker: DeployedMosquitto, prometheus: PrometheusServer, tmp_path: Path
) -> None:
    """Step by step: start Mosquitto on deploy/mosquitto's files and the daemon logged in
    as `groundstation`, its history writer on; start Prometheus on the deploy config with
    the remote-write receiver,
    scraping it every second and evaluating the deploy rules every second; wait for the
    first scrape; the simulator plays flight 3 back with faults through Mosquitto; wait
    until Prometheus has scraped the daemon's final envelope count; then every dashboard
    query, every recording rule and every series an alert reads must return data (none may
    error), every rule must evaluate healthily, InvalidEnvelopes must fire, and no alert
    but those the injected faults explain may be pending or firing."""
    history_url = f"{prometheus.url}/api/v1/write"
    async with running_daemon(daemon_config(broker, tmp_path, history_url=history_url)) as daemon:
        assert daemon.metrics_address is not None
        config = live_config(daemon_port=daemon.metrics_address[1], prometheus_port=prometheus.port)
        await asyncio.to_thread(prometheus.start, config)
        await asyncio.to_thread(
            prometheus.wait_for,
            lambda: bool(prometheus.query('up{job="groundstation"} == 1')),
            "the first scrape",
        )
        published = await fly_flight_3(broker)
        await asyncio.to_thread(check_every_expression, prometheus, published)


@pytest.mark.integration
@pytest.mark.asyncio
async def test_promtool_check_metrics_is_clean_on_the_daemon_after_a_flight(
    broker: DeployedMosquitto, tmp_path: Path
) -> None:
    """Step by step: start Mosquitto on deploy/mosquitto's files and the daemon on it; fly
    flight 3 with faults through it (test-bench simulator account); wait
    until every envelope is counted; `promtool check metrics` on the daemon's /metrics
    output reports nothing."""
    async with running_daemon(daemon_config(broker, tmp_path)) as daemon:
        published = await fly_flight_3(broker)
        samples = await all_envelopes_counted(daemon, published)
        assert daemon.metrics_address is not None
        host, port = daemon.metrics_address
        status, text = await asyncio.to_thread(get, f"http://{host}:{port}/metrics")
    assert status == 200
    assert any(key.startswith("gs_battery_voltage_volts{") for key in samples)
    check = await asyncio.to_thread(
        subprocess.run,
        [find_binary("promtool"), "check", "metrics"],
        input=text.encode(),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert (check.returncode, check.stdout.decode() + check.stderr.decode()) == (0, "")
