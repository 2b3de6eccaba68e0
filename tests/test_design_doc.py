"""The code cites the project's own design document, and every citation names a section it has."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CITED = re.compile(r"docs/design\.md §(\d+)((?:[,–-]\s*§?\d+)*)")


def sources() -> list[Path]:
    folders = ("cdb", "agents", "environments", "benchmarks", "tests", "notebooks")
    files = [p for f in folders for p in (ROOT / f).rglob("*") if p.suffix in (".py", ".ipynb", ".md")]
    return [*files, ROOT / "README.md"]


def test_every_design_citation_names_a_section_of_docs_design_md():
    sections = {int(n) for n in re.findall(r"^## (\d+)\. ", (ROOT / "docs" / "design.md").read_text(), re.M)}
    assert sections == set(range(1, len(sections) + 1)) and len(sections) >= 9
    cited = {}
    for path in sources():
        for match in CITED.finditer(path.read_text(encoding="utf-8")):
            numbers = [int(match.group(1)), *map(int, re.findall(r"\d+", match.group(2)))]
            for number in numbers:
                cited.setdefault(number, []).append(path.relative_to(ROOT).as_posix())
    assert len(cited) >= 5  # the code does cite it
    missing = {n: where for n, where in cited.items() if n not in sections}
    assert not missing, f"citations of sections docs/design.md does not have: {missing}"


def test_nothing_cites_a_document_outside_the_repository():
    stale = re.compile("DESIGN(?:[.]md)? " + "§|shared/" + "DESIGN")  # split, so this file does not match
    offenders = [p.relative_to(ROOT).as_posix() for p in sources() if stale.search(p.read_text(encoding="utf-8"))]
    assert offenders == []
