"""docs/icd.md stands on its own and its packet dictionary is the one the decoder compiles."""

from __future__ import annotations

import re
from pathlib import Path

from groundstation.core.definitions import load_dictionaries
from groundstation.core.dictionary_table import dictionary_markdown

REPO = Path(__file__).resolve().parent.parent
ICD = REPO / "docs" / "icd.md"


def _embedded_dictionary() -> str:
    match = re.search(
        r"<!-- dictionary:begin -->\n(.*?)<!-- dictionary:end -->", ICD.read_text("utf-8"), re.S
    )
    assert match, "docs/icd.md has no dictionary:begin/end markers"
    return match.group(1)


def test_icd_dictionary_section_is_what_the_command_prints() -> None:
    """Regenerate with `groundstation dictionary show --vehicle NAME --format markdown`."""
    generated = "\n".join(
        dictionary_markdown(dictionary) for _, dictionary in sorted(load_dictionaries().items())
    )
    assert _embedded_dictionary() == generated


def test_icd_keeps_the_sections_code_comments_cite() -> None:
    headings = re.findall(r"^## (\d+)\. ", ICD.read_text("utf-8"), re.M)
    assert headings == [str(number) for number in range(1, 10)]
