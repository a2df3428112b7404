"""deploy/ read without servers: names the ICD allows, alert tests, staleness, unit files.

promtool itself (check config, check rules, test rules) runs in scripts/check-deploy.sh;
every expression is run against a real Prometheus in tests/test_prometheus_live.py.
"""

from __future__ import annotations

import configparser
import json
import re
import shutil
import subprocess
import tomllib
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import pytest
import yaml

from groundstation.config import IngestConfig
from groundstation.consumers.history.samples import HISTORY_FAMILIES, TIMELINE_LABEL
from groundstation.consumers.history.writer import Result
from tests.services import find_binary

ROOT: Final = Path(__file__).resolve().parent.parent
DEPLOY: Final = ROOT / "deploy"
PROMETHEUS: Final = DEPLOY / "prometheus"
GRAFANA: Final = DEPLOY / "grafana"
DASHBOARDS: Final = sorted((GRAFANA / "dashboards").glob("*.json"))
DATASOURCE_UID: Final = "gs-prometheus"

# ICD section 5: every name dashboards and rules may use, with its documented labels
# (histograms by their exported series). `job` and `instance` come from the scrape.
ICD_METRICS: Final[dict[str, frozenset[str]]] = {
    name: frozenset(labels.split())
    for name, labels in {
        # Health
        "gs_battery_voltage_volts": "vehicle",
        "gs_battery_current_amperes": "vehicle",
        "gs_battery_charge_ratio": "vehicle",
        "gs_temperature_celsius": "vehicle sensor",
        "gs_rotor_speed_rpm": "vehicle rotor",
        "gs_vehicle_mode": "vehicle mode",
        "gs_fault_active": "vehicle fault",
        "gs_link_rssi_dbm": "vehicle end",
        "gs_link_quality_ratio": "vehicle",
        "gs_link_up": "vehicle",
        "gs_relay_buffer_bytes": "vehicle",
        "gs_vibration_rms_mps2": "vehicle axis",
        # Position
        "gs_position_meters": "vehicle axis",
        "gs_velocity_meters_per_second": "vehicle axis",
        "gs_ground_speed_meters_per_second": "vehicle",
        "gs_attitude_radians": "vehicle axis",
        "gs_heading_radians": "vehicle",
        "gs_altitude_meters": "vehicle",
        "gs_range_to_rover_meters": "vehicle",
        "gs_flight_distance_meters": "vehicle",
        "gs_odometry_meters": "vehicle",
        # Link and pipeline
        "gs_envelopes_total": "vehicle result",
        "gs_envelopes_lost_total": "vehicle",
        "gs_packets_total": "vehicle apid result",
        "gs_packets_lost_total": "vehicle apid",
        "gs_events_total": "vehicle severity",
        "gs_last_packet_time_seconds": "vehicle apid",
        "gs_last_receive_time_seconds": "vehicle",
        "gs_packet_latency_seconds_bucket": "vehicle le",
        "gs_packet_latency_seconds_sum": "vehicle",
        "gs_packet_latency_seconds_count": "vehicle",
        "gs_decode_seconds_bucket": "le",
        "gs_decode_seconds_sum": "",
        "gs_decode_seconds_count": "",
        "gs_mqtt_connected": "",
        "gs_mqtt_reconnects_total": "",
        "gs_mqtt_session_takeovers_total": "",
        "gs_ingest_queue_depth": "",
        "gs_envelopes_taken_over_total": "vehicle",
        "gs_packets_taken_over_total": "vehicle apid",
        "gs_archive_write_failing": "",
        "gs_archive_write_errors_total": "",
        "gs_archive_filesystem_free_bytes": "",
        "gs_archive_filesystem_size_bytes": "",
        # History (ICD section 7)
        "gs_history_samples_total": "result",
        "gs_history_lag_seconds": "",
        "gs_history_up": "",
        # Prometheus's own per-target series.
        "up": "",
    }.items()
}
SCRAPE_LABELS: Final = frozenset({"job", "instance"})
# ICD section 7: the history writer's series, the Health and Position families with one more
# label (names, labels and the label's value from the writer's own code).
TIMELINE, SPACECRAFT = TIMELINE_LABEL
HISTORY_NAMES: Final = {family.name: frozenset(family.labels) for family in HISTORY_FAMILIES}
# Label values that ICD sections 4 and 5 close (apid and fault are open or dictionary-made).
ICD_LABEL_VALUES: Final[dict[str, frozenset[str]]] = {
    "vehicle": frozenset({"ingenuity", "perseverance", "unknown"}),
    "sensor": frozenset({"battery", "avionics"}),
    "rotor": frozenset({"upper", "lower"}),
    "mode": frozenset({"IDLE", "PREFLIGHT", "SPINUP", "FLIGHT", "LANDED", "SAFE"}),
    "fault": frozenset({"heater_on", "battery_low", "imu_fault", "lidar_fault", "motor_overtemp"}),
    "end": frozenset({"helicopter", "rover"}),
    "axis": frozenset({"x", "y", "z", "roll", "pitch", "yaw"}),
    "result": frozenset({"ok", "invalid", "crc_error", "malformed", "unknown_apid", "duplicate"}),
    "severity": frozenset({"DEBUG", "INFO", "WARNING", "ERROR", "FATAL"}),
    # "": the live (scraped) series, which have no timeline label.
    TIMELINE: frozenset({SPACECRAFT, ""}),
}
# Closed values of one family's label where they differ from the label's elsewhere.
FAMILY_LABEL_VALUES: Final[dict[tuple[str, str], frozenset[str]]] = {
    ("gs_history_samples_total", "result"): frozenset(typing.get_args(Result)),
}
# Values decoded from telemetry (ICD section 5 Health and Position): they freeze when the
# data stops, so every panel showing one must hide it once stale (docs/deploy.md).
TELEMETRY_GAUGES: Final = frozenset(
    name
    for name in ICD_METRICS
    if name.startswith("gs_")
    and name
    not in {
        "gs_envelopes_total",
        "gs_envelopes_lost_total",
        "gs_packets_total",
        "gs_packets_lost_total",
        "gs_events_total",
        "gs_last_packet_time_seconds",
        "gs_last_receive_time_seconds",
        "gs_mqtt_connected",
        "gs_mqtt_reconnects_total",
        "gs_mqtt_session_takeovers_total",
        "gs_ingest_queue_depth",
        "gs_envelopes_taken_over_total",
        "gs_packets_taken_over_total",
        "gs_archive_write_failing",
        "gs_archive_write_errors_total",
        "gs_archive_filesystem_free_bytes",
        "gs_archive_filesystem_size_bytes",
        "gs_history_samples_total",
        "gs_history_lag_seconds",
        "gs_history_up",
    }
    and not name.startswith(("gs_packet_latency_seconds", "gs_decode_seconds"))
)
STALENESS_GATE: Final = "and on(vehicle) (time() - gs_last_receive_time_seconds < $stale_after_s)"
DASHBOARD_VARIABLES: Final = frozenset({"stale_after_s", "__rate_interval", "__range"})

_NAME = re.compile(r"(?<![\w:$])(gs_\w+|[a-z_]+:[\w:]+|up(?=\{))")
_SELECTOR = re.compile(r"(?<![\w:$])(gs_\w+|[a-z_]+:[\w:]+|up)\{([^}]*)\}")
_MATCHER = re.compile(r'\s*(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"\s*,?')


def load_yaml(path: Path) -> Any:
    with path.open(encoding="utf-8") as file:
        return yaml.safe_load(file)


def rule_groups() -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = []
    for path in sorted((PROMETHEUS / "rules").glob("*.yml")):
        groups.extend(load_yaml(path)["groups"])
    return groups


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in rule_groups() for rule in group["rules"] if "alert" in rule]


def recorded_names() -> set[str]:
    return {
        rule["record"] for group in rule_groups() for rule in group["rules"] if "record" in rule
    }


def dashboard_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside collapsed rows included, rows themselves excluded."""
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


def dashboard_exprs() -> list[tuple[str, str, str]]:
    """(dashboard file, panel title, expr) of every query of every dashboard."""
    return [
        (path.name, panel["title"], target["expr"])
        for path in DASHBOARDS
        for panel in dashboard_panels(json.loads(path.read_text()))
        for target in panel["targets"]
    ]


def rule_exprs() -> list[tuple[str, str]]:
    """(rule name, expr) of every recording and alerting rule."""
    return [
        (rule.get("alert") or rule["record"], rule["expr"])
        for group in rule_groups()
        for rule in group["rules"]
    ]


def check_names(expr: str, *, recorded: set[str]) -> list[str]:
    """Problems with the metric names, label names and closed label values in `expr`."""
    problems = [
        f"{name} is neither an ICD section 5 name nor a recording rule"
        for name in _NAME.findall(expr)
        if name not in ICD_METRICS and name not in recorded
    ]
    for name, matchers in _SELECTOR.findall(expr):
        allowed = ICD_METRICS.get(name, frozenset())
        if name in HISTORY_NAMES:
            allowed |= {TIMELINE}
        for label, operator, value in _MATCHER.findall(matchers):
            if name in ICD_METRICS and label not in allowed | SCRAPE_LABELS:
                problems.append(f"{name} has no label {label} in the ICD")
            closed = FAMILY_LABEL_VALUES.get((name, label), ICD_LABEL_VALUES.get(label))
            if closed is not None and operator == "=" and value not in closed:
                problems.append(f"{name}{{{label}={value!r}}}: not an ICD value of {label}")
    return problems


def test_name_checker_catches_what_it_should() -> None:
    """The checker used below rejects an unknown name, label and label value."""
    assert check_names('gs_temperature_celsius{sensor="battery"}', recorded=set()) == []
    assert check_names("gs_battery_volts", recorded=set())
    assert check_names('gs_battery_voltage_volts{cell="1"}', recorded=set())
    assert check_names('gs_temperature_celsius{sensor="motor"}', recorded=set())
    assert check_names("vehicle:gs_x:ratio5m", recorded=set())
    assert check_names("vehicle:gs_x:ratio5m", recorded={"vehicle:gs_x:ratio5m"}) == []
    assert check_names('gs_altitude_meters{timeline="spacecraft"}', recorded=set()) == []
    assert check_names('gs_altitude_meters{timeline="ground"}', recorded=set())
    assert check_names('gs_packets_total{timeline="spacecraft"}', recorded=set())
    assert check_names('gs_history_samples_total{result="backfill"}', recorded=set()) == []
    assert check_names('gs_history_samples_total{result="crc_error"}', recorded=set())


def telemetry_selectors(expr: str) -> list[tuple[str, dict[str, str]]]:
    """(name, {label: value} of its `=` matchers) of every decoded-value selector in `expr`."""
    found = []
    for match in re.finditer(r"(?<![\w:$])(gs_\w+)(\{([^}]*)\})?", expr):
        if match.group(1) in TELEMETRY_GAUGES:
            matchers = _MATCHER.findall(match.group(3) or "")
            found.append((match.group(1), {k: v for k, op, v in matchers if op == "="}))
    return found


def is_history(expr: str) -> bool:
    """Every decoded value `expr` reads is a history series (ICD section 7)."""
    selectors = telemetry_selectors(expr)
    return bool(selectors) and all(m.get(TIMELINE) == SPACECRAFT for _, m in selectors)


@pytest.mark.parametrize(("rule", "expr"), rule_exprs(), ids=[name for name, _ in rule_exprs()])
def test_rules_use_only_icd_names(rule: str, expr: str) -> None:
    """Rules read only ICD section 5 names (and their labels) or other recording rules."""
    assert check_names(expr, recorded=recorded_names()) == []


def test_dashboards_use_only_icd_names() -> None:
    """Dashboards read only ICD section 5 names (and their labels) or recording rules."""
    recorded = recorded_names()
    problems = [
        f"{file} / {title}: {problem}"
        for file, title, expr in dashboard_exprs()
        for problem in check_names(expr, recorded=recorded)
    ]
    assert problems == []


def test_every_alert_has_severity_summary_and_runbook() -> None:
    """Each alert carries what an operator needs on the page: severity, summary, runbook."""
    alerts = alert_rules()
    assert len(alerts) >= 14
    for rule in alerts:
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        assert rule["annotations"]["summary"].strip(), rule["alert"]
        assert len(rule["annotations"]["runbook"]) > 40, rule["alert"]


def test_issue_alerts_all_exist() -> None:
    """Every alert the issue asks for is defined (names documented in docs/deploy.md)."""
    required = {
        "BatteryVoltageLow",
        "BatteryChargeLow",
        "BatteryTemperatureOutOfLimits",
        "AvionicsTemperatureOutOfLimits",
        "RotorSpeedMismatchInFlight",
        "HbsLinkDown",
        "HbsLinkQualityLow",
        "TelemetryStale",
        "PacketLossHigh",
        "PacketCrcErrors",
        "InvalidEnvelopes",
        "GroundstationDaemonDown",
        "MqttDisconnected",
        "DecoderBehind",
    }
    names = {rule["alert"] for rule in alert_rules()}
    assert required <= names
    docs = (ROOT / "docs" / "deploy.md").read_text()
    assert [name for name in sorted(names) if f"`{name}`" not in docs] == []


def test_every_alert_has_a_firing_and_a_quiet_promtool_case() -> None:
    """In deploy/prometheus/tests/, each alert has a test case where it fires and a test
    case where every evaluation of it expects no alert."""
    fires: set[str] = set()
    quiet: set[str] = set()
    for path in sorted((PROMETHEUS / "tests").glob("*.yml")):
        for case in load_yaml(path)["tests"]:
            evaluations: dict[str, list[bool]] = {}
            for check in case.get("alert_rule_test", []):
                evaluations.setdefault(check["alertname"], []).append(bool(check["exp_alerts"]))
            fires.update(name for name, fired in evaluations.items() if any(fired))
            quiet.update(name for name, fired in evaluations.items() if not any(fired))
    names = {rule["alert"] for rule in alert_rules()}
    assert sorted(names - fires) == []
    assert sorted(names - quiet) == []


def test_check_deploy_script_runs_all_three_promtool_checks() -> None:
    """scripts/check-deploy.sh runs check config, check rules and test rules, and stops on
    the first failure (set -e)."""
    script = (ROOT / "scripts" / "check-deploy.sh").read_text()
    assert "set -euo pipefail" in script
    for command in ("check config", "check rules", "test rules"):
        assert f'"$promtool" {command} deploy/prometheus/' in script


def test_prometheus_scrapes_the_daemon_and_loads_both_rule_files() -> None:
    """prometheus.yml scrapes the daemon's default metrics address and loads every rule file."""
    config = load_yaml(PROMETHEUS / "prometheus.yml")
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    targets = [t for group in jobs["groundstation"]["static_configs"] for t in group["targets"]]
    assert targets == ["127.0.0.1:9108"]
    assert sorted(config["rule_files"]) == sorted(
        f"rules/{path.name}" for path in (PROMETHEUS / "rules").glob("*.yml")
    )


def test_prometheus_takes_relayed_history() -> None:
    """An out-of-order window of at least a day (an orbiter pass comes up to about a day
    after the data was taken) and at most Debian's default retention of 15 days, and
    docs/deploy.md tells how to start the remote-write receiver and names the window."""
    window = load_yaml(PROMETHEUS / "prometheus.yml")["storage"]["tsdb"]["out_of_order_time_window"]
    match = re.fullmatch(r"(\d+)([hd])", window)
    assert match, window
    hours = int(match.group(1)) * (24 if match.group(2) == "d" else 1)
    assert 24 <= hours <= 15 * 24
    docs = (ROOT / "docs" / "deploy.md").read_text()
    assert "--web.enable-remote-write-receiver" in docs
    assert f"out_of_order_time_window: {window}" in docs


def test_dashboards_are_complete_grafana_models() -> None:
    """Each dashboard: unique uid, schema 39+, the provisioned datasource, unique panel ids
    inside the 24-column grid with no two overlapping, and at least one query per panel,
    each with a unique refId."""
    uids = set()
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        assert dashboard["uid"] not in uids
        uids.add(dashboard["uid"])
        assert dashboard["schemaVersion"] >= 39
        assert dashboard["title"].startswith("Mars ground station: ")
        ids = [panel["id"] for panel in dashboard["panels"]]
        assert len(ids) == len(set(ids)), path.name
        cells: dict[tuple[int, int], str] = {}
        for panel in dashboard["panels"]:
            grid = panel["gridPos"]
            assert grid["x"] + grid["w"] <= 24, (path.name, panel["title"])
            for x in range(grid["x"], grid["x"] + grid["w"]):
                for y in range(grid["y"], grid["y"] + grid["h"]):
                    assert (x, y) not in cells, (path.name, panel["title"], cells[x, y])
                    cells[x, y] = panel["title"]
        for panel in dashboard_panels(dashboard):
            where = (path.name, panel["title"])
            assert panel["datasource"]["uid"] == DATASOURCE_UID, where
            assert panel["description"], where
            refs = [target["refId"] for target in panel["targets"]]
            assert refs, where
            assert len(refs) == len(set(refs)), where
            for target in panel["targets"]:
                assert target["expr"].strip(), where
                assert target["datasource"]["uid"] == DATASOURCE_UID, where
    assert len(uids) == 3


def test_every_panel_says_stale_and_telemetry_values_are_gated() -> None:
    """Every panel shows a STALE text when it has no data, and every query of a decoded
    telemetry value carries the freshness gate, so a frozen value goes blank instead of
    looking live (docs/deploy.md, Staleness)."""
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        variables = {variable["name"] for variable in dashboard["templating"]["list"]}
        assert "stale_after_s" in variables
        for panel in dashboard_panels(dashboard):
            where = (path.name, panel["title"])
            history = all(is_history(target["expr"]) for target in panel["targets"])
            no_value = panel["fieldConfig"]["defaults"]["noValue"]
            assert ("No history" if history else "STALE") in no_value, where
            for target in panel["targets"]:
                expr = target["expr"]
                used = set(re.findall(r"\$\{?(\w+)", expr))
                assert used <= DASHBOARD_VARIABLES, where
                if history:
                    # A history sample does not freeze: it is the value at its own time.
                    assert "gs_last_receive_time_seconds" not in expr, (where, expr)
                elif set(_NAME.findall(expr)) & TELEMETRY_GAUGES:
                    assert expr.endswith(STALENESS_GATE), (where, expr)


def test_live_panels_do_not_draw_the_history() -> None:
    """A live panel's decoded values select `timeline=""`: the history series have the same
    names and labels plus timeline="spacecraft", and would otherwise be drawn (and gated) too."""
    for file, title, expr in dashboard_exprs():
        if not is_history(expr):
            for name, matchers in telemetry_selectors(expr):
                assert matchers.get(TIMELINE) == "", (file, title, name, expr)


def history_panels() -> list[dict[str, Any]]:
    flight = json.loads((GRAFANA / "dashboards" / "flight.json").read_text())
    return [
        panel
        for panel in dashboard_panels(flight)
        if all(is_history(target["expr"]) for target in panel["targets"])
    ]


def test_flight_dashboard_draws_the_history_the_writer_writes() -> None:
    """The Flight dashboard's history panels select only series the history writer writes:
    HISTORY_FAMILIES' names and labels plus timeline="spacecraft" (ICD section 7), and show
    the track, altitude, battery, speed, range, distance and mode at spacecraft time."""
    panels = history_panels()
    used: set[str] = set()
    for panel in panels:
        for target in panel["targets"]:
            for name, matchers in telemetry_selectors(target["expr"]):
                assert name in HISTORY_NAMES, (panel["title"], name)
                assert set(matchers) <= HISTORY_NAMES[name] | {TIMELINE}, (panel["title"], name)
                used.add(name)
    assert {
        "gs_position_meters",
        "gs_altitude_meters",
        "gs_battery_voltage_volts",
        "gs_battery_charge_ratio",
        "gs_ground_speed_meters_per_second",
        "gs_range_to_rover_meters",
        "gs_flight_distance_meters",
        "gs_vehicle_mode",
    } <= used
    assert any(panel["type"] == "xychart" for panel in panels)


def test_dashboards_show_what_the_issue_lists() -> None:
    """Flight, Health and Link & pipeline each query the families their panels promise."""
    wanted = {
        "flight.json": {
            "gs_position_meters",
            "gs_altitude_meters",
            "gs_ground_speed_meters_per_second",
            "gs_range_to_rover_meters",
            "gs_attitude_radians",
            "gs_flight_distance_meters",
            "gs_vehicle_mode",
        },
        "health.json": {
            "gs_battery_voltage_volts",
            "gs_battery_current_amperes",
            "gs_battery_charge_ratio",
            "gs_temperature_celsius",
            "gs_rotor_speed_rpm",
            "gs_fault_active",
            "gs_events_total",
        },
        "link-pipeline.json": {
            "gs_packets_total",
            "vehicle_apid:gs_packets_loss:ratio5m",
            "vehicle:gs_packets_crc_error:ratio5m",
            "gs_packet_latency_seconds_bucket",
            "gs_envelopes_total",
            "gs_ingest_queue_depth",
            "gs_mqtt_connected",
            "gs_mqtt_reconnects_total",
        },
    }
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        used = {
            name
            for panel in dashboard_panels(dashboard)
            for target in panel["targets"]
            for name in _NAME.findall(target["expr"])
        }
        assert wanted[path.name] <= used, path.name
    flight = json.loads((GRAFANA / "dashboards" / "flight.json").read_text())
    assert any(panel["type"] == "xychart" for panel in dashboard_panels(flight))
    link = json.loads((GRAFANA / "dashboards" / "link-pipeline.json").read_text())
    heatmaps = [panel for panel in dashboard_panels(link) if panel["type"] == "heatmap"]
    assert [panel["targets"][0]["format"] for panel in heatmaps] == ["heatmap"]


def test_grafana_provisioning_matches_the_dashboards() -> None:
    """The provisioned datasource has the uid the dashboards use; dashboards are loaded
    from a file provider."""
    datasources = load_yaml(GRAFANA / "provisioning" / "datasources" / "groundstation.yml")
    (source,) = datasources["datasources"]
    assert (source["uid"], source["type"]) == (DATASOURCE_UID, "prometheus")
    assert source["url"] == "http://127.0.0.1:9090"
    providers = load_yaml(GRAFANA / "provisioning" / "dashboards" / "groundstation.yml")
    (provider,) = providers["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"].startswith("/")


def _mosquitto_directives() -> dict[str, list[str]]:
    directives: dict[str, list[str]] = {}
    for line in (DEPLOY / "mosquitto" / "mosquitto.conf").read_text().splitlines():
        words = line.split(maxsplit=1)
        if words and not words[0].startswith("#"):
            directives.setdefault(words[0], []).append(words[1] if len(words) > 1 else "")
    return directives


def test_mosquitto_config_queues_a_playback_and_refuses_strangers() -> None:
    """Production Mosquitto: no anonymous clients, password file and ACL, plain MQTT on
    loopback only, persistence on, and explicit queue bounds far above the silent-drop
    default of 1000 messages (0, "unlimited", has been buggy across 2.0.x)."""
    conf = _mosquitto_directives()
    assert conf["per_listener_settings"] == ["false"]
    assert conf["allow_anonymous"] == ["false"]
    assert conf["password_file"]
    assert conf["acl_file"]
    assert conf["listener"] == ["1883 127.0.0.1"]
    assert conf["persistence"] == ["true"]
    assert int(conf["max_queued_messages"][0]) >= 100_000
    assert int(conf["max_queued_bytes"][0]) >= 256 * 1024 * 1024
    acl = (DEPLOY / "mosquitto" / "groundstation.acl").read_text()
    rules = [line.split() for line in acl.splitlines() if line and not line.startswith("#")]
    assert ["user", "groundstation"] in rules
    daemon = rules.index(["user", "groundstation"])
    assert rules[daemon + 1] == ["topic", "read", "mars/tm/#"]
    assert not any(rule[0] == "pattern" for rule in rules)


def _systemd_unit() -> configparser.ConfigParser:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    unit.read(DEPLOY / "systemd" / "groundstation.service")
    return unit


def test_systemd_unit_has_the_required_directives() -> None:
    """Dedicated user, StateDirectory, NoNewPrivileges, ProtectSystem=strict, PrivateTmp,
    restart on failure, a cache directory for the compiled decoder loops, and SIGTERM with
    a stop timeout longer than the daemon's drain."""
    service = _systemd_unit()["Service"]
    assert service["User"] == "groundstation"
    assert service["StateDirectory"] == "groundstation"
    assert service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "strict"
    assert service["PrivateTmp"] == "yes"
    assert service["Restart"] == "on-failure"
    assert service["KillSignal"] == "SIGTERM"
    assert service["ExecStart"].split()[1:3] == ["run", "--config"]
    # The compiled decoder loops are cached where the service may write.
    assert service["CacheDirectory"] == "groundstation"
    unit_text = (DEPLOY / "systemd" / "groundstation.service").read_text()
    assert "Environment=NUMBA_CACHE_DIR=/var/cache/groundstation/" in unit_text
    stop_timeout_s = float(service["TimeoutStopSec"].removesuffix("s"))
    example = tomllib.loads((DEPLOY / "groundstation.example.toml").read_text())
    drain_s = max(example["ingest"]["shutdown_timeout_s"], IngestConfig().shutdown_timeout_s)
    assert stop_timeout_s >= drain_s + 10
    sysusers = (DEPLOY / "systemd" / "groundstation.sysusers.conf").read_text()
    assert "u groundstation " in sysusers


def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    """systemd-analyze verify finds nothing to say (unknown keys are only warnings, so any
    output fails); ExecStart points at /bin/true since the daemon is not installed here."""
    verify = find_binary("systemd-analyze")
    text = (DEPLOY / "systemd" / "groundstation.service").read_text()
    executable = _systemd_unit()["Service"]["ExecStart"].split()[0]
    unit = tmp_path / "groundstation.service"
    unit.write_text(text.replace(executable, shutil.which("true") or "/bin/true"))
    result = subprocess.run(
        [verify, "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_rules_on_decoded_values_read_the_live_series() -> None:
    """An alert or recording rule on a decoded value selects `timeline=""`: the history
    series of the same name would otherwise fire a second copy of the alert, at spacecraft
    time, while light time is shorter than the lookback."""
    for rule, expr in rule_exprs():
        for name, matchers in telemetry_selectors(expr):
            if name in HISTORY_NAMES:
                assert matchers.get(TIMELINE) == "", (rule, name, expr)
