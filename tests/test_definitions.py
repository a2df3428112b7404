"""The packet dictionary loader: the shipped files, and bad ones refused with a clear message."""

from __future__ import annotations

from pathlib import Path

import pytest

from groundstation.core.definitions import (
    load_dictionaries,
    load_dictionary,
    load_dictionary_file,
)
from groundstation.errors import DefinitionError, UnknownVehicleError

GOOD_PACKET = """
vehicle = "testcraft"

[[packet]]
apid = 7
name = "TEST_HK"
length = 18

  [[packet.field]]
  name = "mode"
  offset = 0
  type = "u8"
  enum = { 0 = "OFF", 1 = "ON" }

  [[packet.field]]
  name = "spare"
  offset = 1
  type = "u8"

  [[packet.field]]
  name = "volts"
  offset = 2
  type = "u16"
  scale = 0.001
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "testcraft.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_shipped_dictionaries_match_the_icd() -> None:
    """Both vehicles load; packet lengths and APIDs are those of ICD section 4."""
    dictionaries = load_dictionaries()
    lengths = {
        name: {p.apid: (p.name, p.min_length, p.max_length) for p in d.packets.values()}
        for name, d in dictionaries.items()
    }
    assert lengths == {
        "ingenuity": {
            100: ("HELI_HK", 30, 30),
            101: ("HELI_NAV", 54, 54),
            102: ("HELI_IMU", 134, 134),
            103: ("HELI_EVR", 17, 217),
        },
        "perseverance": {
            200: ("ROVER_NAV", 36, 36),
            201: ("HBS_LINK", 26, 26),
            203: ("ROVER_EVR", 17, 217),
        },
    }
    imu = dictionaries["ingenuity"].packets[102]
    assert imu.samples == 10
    assert imu.packet_dtype is not None
    assert imu.packet_dtype.itemsize == 134


def test_a_good_file_loads(tmp_path: Path) -> None:
    """The template used below is itself valid, so each failure is down to its one change."""
    dictionary = load_dictionary_file(write(tmp_path, GOOD_PACKET))
    assert dictionary.vehicle == "testcraft"
    assert dictionary.packets[7].field("volts").scale == 0.001


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        pytest.param(
            "offset = 2\n", "offset = 3\n",
            r"packet TEST_HK, field volts: bytes 2\.\.2 are not covered", id="gap",
        ),
        pytest.param(
            "name = \"spare\"\n  offset = 1", "name = \"spare\"\n  offset = 0",
            r"packet TEST_HK, field (spare|mode): overlaps the field before it", id="overlap",
        ),
        pytest.param(
            "length = 18", "length = 19",
            r"packet TEST_HK: length 19 does not match the fields", id="wrong-length",
        ),
        pytest.param(
            "type = \"u16\"", "type = \"u24\"",
            r"packet TEST_HK, field volts: unknown type 'u24'", id="unknown-type",
        ),
        pytest.param(
            "enum = { 0 = \"OFF\", 1 = \"ON\" }", "enum = { 0 = \"OFF\", 256 = \"ON\" }",
            r"packet TEST_HK, field mode: enum value 256 is outside 0\.\.255", id="enum-range",
        ),
        pytest.param(
            "enum = { 0 = \"OFF\", 1 = \"ON\" }", "enum = { 0 = \"OFF\", 1 = \"OFF\" }",
            r"packet TEST_HK, field mode: enum name 'OFF' is used twice", id="enum-name-twice",
        ),
        pytest.param(
            "enum = { 0 = \"OFF\", 1 = \"ON\" }", "enum = { x = \"OFF\" }",
            r"packet TEST_HK, field mode: enum key 'x' is not an integer", id="enum-key",
        ),
        pytest.param(
            "scale = 0.001", "scale = 0.001\n  bits = { 0 = \"a\" }",
            r"packet TEST_HK, field volts: enum and flag fields take no scale", id="bits-scale",
        ),
        pytest.param(
            "apid = 7", "apid = 2048",
            r"packet TEST_HK: `apid` = 2048 is outside 0\.\.2047", id="apid-range",
        ),
        pytest.param(
            "name = \"volts\"", "name = \"volts\"\n  colour = \"red\"",
            r"packet TEST_HK, field volts: unknown key\(s\) \['colour'\]", id="unknown-key",
        ),
    ],
)  # fmt: skip
def test_bad_dictionary_is_refused(tmp_path: Path, old: str, new: str, message: str) -> None:
    """One defect at a time: DefinitionError naming the file, the packet and the field."""
    assert old in GOOD_PACKET
    path = write(tmp_path, GOOD_PACKET.replace(old, new, 1))
    with pytest.raises(DefinitionError, match=message) as caught:
        load_dictionary_file(path)
    assert str(caught.value).startswith(f"{path}: ")


def test_duplicate_apid_is_refused(tmp_path: Path) -> None:
    """Two packets with one APID: the message names both packets."""
    second = GOOD_PACKET.split("\n", 2)[2].replace("TEST_HK", "TEST_TWO")
    path = write(tmp_path, GOOD_PACKET + second)
    with pytest.raises(DefinitionError, match=r"packet TEST_TWO \(APID 7\): duplicate APID, also"):
        load_dictionary_file(path)


def test_text_must_be_last_and_variable_length(tmp_path: Path) -> None:
    """A text field in a fixed-length packet, or not last, is refused."""
    text = '\n  [[packet.field]]\n  name = "note"\n  offset = 4\n  type = "text"\n'
    path = write(tmp_path, GOOD_PACKET + text)
    with pytest.raises(DefinitionError, match="a packet with text has min_length/max_length"):
        load_dictionary_file(path)


def test_unreadable_and_invalid_files(tmp_path: Path) -> None:
    """Invalid TOML and a folder without dictionaries are DefinitionErrors naming the path."""
    path = write(tmp_path, "vehicle = \n")
    with pytest.raises(DefinitionError, match=r"testcraft\.toml: not valid TOML"):
        load_dictionary_file(path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DefinitionError, match="no packet definitions"):
        load_dictionaries(empty)


def test_unknown_vehicle() -> None:
    """A vehicle without a dictionary is UnknownVehicleError listing the known ones."""
    with pytest.raises(UnknownVehicleError, match=r"'mars' \(known: ingenuity, perseverance\)"):
        load_dictionary("mars")
