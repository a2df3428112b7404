"""A topic the MQTT library cannot decode, from a broker that does not check (ICD section 6).

The real daemon process against `tests/fake_broker.py`: the bad PUBLISH is archived as
invalid (`bad_topic`), acknowledged and counted, and the messages around it go on.
"""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import unquote_to_bytes

import pytest

from groundstation.core.envelope import BAD_TOPIC_PREFIX
from groundstation.ingest.archive import ArchiveReader
from tests.daemon_support import envelope, replay_summary
from tests.fake_broker import running_fake_broker
from tests.reliability_support import DaemonProcess, count_archive, running_daemon, total

BAD_TOPIC = b"mars/tm/ingen\xffuity\xc3("  # not UTF-8: a stray byte, a broken sequence
WILDCARD_TOPIC = b"mars/tm/+"  # UTF-8, but no topic name (MQTT section 4.7.1)
GOOD_TOPIC = b"mars/tm/ingenuity"
SETTLE_S = 2.0  # time for a reconnect loop to show, had the bad message broken the link


@pytest.mark.integration
@pytest.mark.parametrize("version", ["5", "3.1.1"])
def test_unusable_topic_names_are_archived_invalid_acknowledged_and_ingest_goes_on(
    tmp_path: Path, version: str
) -> None:
    """Valid, non-UTF-8 topic, valid: all 3 archived and PUBACKed on one connection.

    1. The fake broker sends envelope 0, envelope 1 on a topic that is not UTF-8, envelope 2.
    2. The daemon counts 2 ok and 1 invalid, and acknowledges all 3.
    3. One connection only (no reconnect loop), even after a pause.
    4. The archive holds 3 records: the bad one marked invalid under the placeholder topic
       whose percent-encoding gives the original bytes; replay counts the same.
    """
    messages = [
        (GOOD_TOPIC, envelope(0)),
        (BAD_TOPIC, envelope(1)),
        (GOOD_TOPIC, envelope(2)),
        (WILDCARD_TOPIC, envelope(3)),
        (GOOD_TOPIC, envelope(4)),
    ]
    config = f'[broker]\nmqtt_version = "{version}"\nreconnect_min_s = 0.1\nreconnect_max_s = 0.2\n'
    with running_fake_broker(messages) as broker:
        daemon = DaemonProcess(
            workdir=tmp_path / "daemon", broker_port=broker.port, config_toml=config
        )
        with running_daemon(daemon):
            samples = daemon.wait_for(
                lambda samples: total(samples, "gs_envelopes_total") >= len(messages),
                timeout_s=30.0,
                what="every message to be counted",
            )
            time.sleep(SETTLE_S)
            samples = daemon.scrape()
            daemon.stop()
        assert sorted(broker.pubacks) == list(range(1, len(messages) + 1)), daemon.log_tail()
        assert broker.connections == 1, daemon.log_tail()
    assert total(samples, "gs_envelopes_total", result="ok") == 3
    assert total(samples, "gs_envelopes_total", result="invalid") == 2
    assert total(samples, "gs_mqtt_reconnects_total") == 0
    assert "bad_topic" in daemon.log_path.read_text()

    records = list(ArchiveReader(daemon.archive_dir).records())
    assert [record.valid for record in records] == [True, False, True, False, True]
    assert [record.payload for record in records] == [payload for _, payload in messages]
    for index, raw in ((1, BAD_TOPIC), (3, WILDCARD_TOPIC)):
        topic = records[index].topic
        assert topic.startswith(BAD_TOPIC_PREFIX)
        assert unquote_to_bytes(topic[len(BAD_TOPIC_PREFIX) :]) == raw
    assert count_archive(daemon.archive_dir).invalid == 2
    replayed = replay_summary(daemon.archive_dir)["counters"]
    assert replayed['gs_envelopes_total{result="invalid",vehicle="unknown"}'] == 2
    assert replayed['gs_envelopes_total{result="ok",vehicle="ingenuity"}'] == 3
