"""The README and docs/: every link between them leads somewhere.

The README is the user's manual and docs/benchmark.md its measurements; they point into each
other by heading, and a heading renamed or a section moved breaks a link silently."""

from __future__ import annotations

import re
from pathlib import Path

from jobs.settings import PROJECT_ROOT

LINK = re.compile(r"\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#+\s+(.*)")


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to dashes."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(markdown: str) -> set[str]:
    """Each heading's anchor, outside code blocks; a repeated heading's gets ``-1``, ``-2``…"""
    seen: dict[str, int] = {}
    found, in_code = set(), False
    for line in markdown.split("\n"):
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and (m := HEADING.match(line)):
            name = slug(m.group(1))
            found.add(f"{name}-{seen[name]}" if name in seen else name)
            seen[name] = seen.get(name, 0) + 1
    return found


def broken_links(page: Path) -> list[str]:
    broken = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target):  # https:, mailto:: not ours to check
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest.read_text()):
            broken.append(f"{target} (no such heading in {dest.name})")
    return broken


def test_every_link_in_the_readme_and_docs_leads_somewhere():
    pages = [PROJECT_ROOT / "README.md", *sorted((PROJECT_ROOT / "docs").rglob("*.md"))]
    broken = {str(p.relative_to(PROJECT_ROOT)): b for p in pages if (b := broken_links(p))}
    assert not broken, f"links to nowhere: {broken}"


def test_a_link_to_a_heading_that_is_not_there_is_found(tmp_path):
    (tmp_path / "other.md").write_text("# Other\n\n## Its part, (2026)\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n## Twice\n\n## Twice\n\n```\n# not a heading\n```\n"
        "[a](#twice-1) [b](other.md#its-part-2026) [c](#not-a-heading) [d](other.md#its-part) [e](gone.md) "
        "[f](https://example.com/#x)\n"
    )
    assert broken_links(page) == [
        "#not-a-heading (no such heading in page.md)",
        "other.md#its-part (no such heading in other.md)",
        "gone.md (no such file)",
    ]
