"""docs/adapters.md against the code it describes: the error vocabulary, the
shim's classification tables and the OTLP `error.type` mapping cannot drift."""

from __future__ import annotations

import re
from pathlib import Path

from msgtally.ingest.intake.otlp.errortype import table
from msgtally.ingest.shim.classify import LIBRARIES, SECTIONS, markdown
from msgtally.record import ERROR_CLASSES

REPO = Path(__file__).resolve().parents[1]
DOC = (REPO / "docs" / "adapters.md").read_text()


def generated(source: str) -> str:
    """The block of the doc between its markers, as generated from `source`."""
    start = f"<!-- generated: {source} -->\n"
    assert start in DOC, f"no generated block of {source}"
    return DOC.split(start, 1)[1].split("<!-- end generated -->", 1)[0]


def test_the_classification_tables_are_the_shim_s() -> None:
    assert generated("msgtally.ingest.shim.classify.markdown()") == markdown()
    # Every library the shim knows has its table on the page.
    assert {p for _, packages in SECTIONS for p in packages} == set(LIBRARIES)


def test_the_otlp_mapping_is_the_collector_s() -> None:
    assert generated("msgtally.ingest.intake.otlp.errortype.table()") == table()


def test_the_vocabulary_is_the_record_s_with_a_meaning_and_an_action_each() -> None:
    section = DOC.split("## Error classes\n", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `(\w+)` \| ([^|]+) \| ([^|]+) \|$", section, re.M)
    assert tuple(name for name, _, _ in rows) == ERROR_CLASSES
    assert all(meaning.strip() and action.strip() for _, meaning, action in rows)


def test_the_page_is_linked_from_the_readme_and_the_layout() -> None:
    assert "(docs/adapters.md)" in (REPO / "README.md").read_text()
    assert "(adapters.md)" in (REPO / "docs" / "layout.md").read_text()
