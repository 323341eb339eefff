"""The project's documents cite only what exists: relative links and their #anchors,
repository paths named in the text, and sections cited as `docs/x.md, "Heading"`."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
DOCS = sorted([ROOT / "README.md", ROOT / "packaging" / "README.md",
               *(ROOT / "docs").glob("*.md")])
# Top-level entries of this repository a document may name as a path.
TOP = ("rsprof", "csrc", "tests", "bench", "docs", "packaging", "example", "rsprof-trace")
# (not a glob or a placeholder such as csrc/rsprof_*.c; not in quotes: a Cargo feature
# such as "rsprof-trace/profiling")
_TOP = "|".join(re.escape(t) for t in TOP)
PATH = re.compile(rf"(?<![\w/.~$<\"-])((?:{_TOP})/[\w./-]*+)(?![*<{{])")
# A file name inside a longer token ("docs/benchmarks.md-style"): stop after its suffix.
FILE = re.compile(r"(.*?\.(?:md|py|pyx|pyi|pxd|rs|c|h|toml|json|txt|proto|lock))(?![\w])")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
CITED = re.compile(r"((?:docs/)?[\w-]+\.md),\s+\"([^\"]+)\"")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$")
# Documents that are not in this repository (the invariants live in docs/architecture.md
# by content, not by a number in someone else's list).
FOREIGN = re.compile(r"\bARCHITECTURE\b|\b(?i:invariant)\s+\d+")


def _text(doc: Path) -> str:
    """The whole document, code blocks included (their commands name paths too)."""
    return doc.read_text(encoding="utf-8")


def _prose(doc: Path) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks."""
    out, fenced = [], False
    for n, line in enumerate(_text(doc).splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            out.append((n, line))
    return out


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", lambda m: m.group(1) or "", heading)
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(doc: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for _n, line in _prose(doc):
        m = HEADING.match(line)
        if m:
            base = slug(m.group(1))
            k = seen.get(base, 0)
            seen[base] = k + 1
            out.add(base if k == 0 else f"{base}-{k}")
    return out


def headings(doc: Path) -> set[str]:
    return {m.group(1).strip() for _n, line in _prose(doc) if (m := HEADING.match(line))}


def _rel(doc: Path) -> str:
    return str(doc.relative_to(ROOT))


@pytest.mark.parametrize("doc", DOCS, ids=_rel)
def test_relative_links_and_anchors_resolve(doc: Path) -> None:
    bad = []
    for n, line in _prose(doc):
        for target in LINK.findall(line):
            if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            dest = (doc.parent / path).resolve() if path else doc
            if not dest.exists():
                bad.append(f"{_rel(doc)}:{n}: {target}: no such file")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                bad.append(f"{_rel(doc)}:{n}: {target}: no such heading")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("doc", DOCS, ids=_rel)
def test_repository_paths_in_the_text_exist(doc: Path) -> None:
    bad = []
    for n, line in enumerate(_text(doc).splitlines(), 1):
        for token in PATH.findall(line):
            token = token.rstrip(".,:;")
            m = FILE.match(token)
            if m:
                token = m.group(1)
            if "/target/" in token or token.startswith("example/target"):
                continue  # cargo's build output
            if not (ROOT / token).exists():
                bad.append(f"{_rel(doc)}:{n}: {token}")
    assert not bad, "paths that do not exist:\n" + "\n".join(bad)


@pytest.mark.parametrize("doc", DOCS, ids=_rel)
def test_cited_sections_exist(doc: Path) -> None:
    bad = []
    for n, line in enumerate(_text(doc).replace("\n", " \n").splitlines(), 1):
        for name, section in CITED.findall(line):
            target = ROOT / name if "/" in name else doc.parent / name
            if not target.exists():
                bad.append(f"{_rel(doc)}:{n}: {name}: no such file")
            elif section not in headings(target):
                bad.append(f"{_rel(doc)}:{n}: {name} has no section \"{section}\"")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("doc", DOCS, ids=_rel)
def test_no_citation_of_documents_outside_the_repository(doc: Path) -> None:
    bad = [f"{_rel(doc)}:{n}: {line.strip()}" for n, line in enumerate(
        _text(doc).splitlines(), 1) if FOREIGN.search(line)]
    assert not bad, "cite the project's own docs, or say what the rule is:\n" + "\n".join(bad)


def test_the_checks_find_what_they_look_for(tmp_path: Path) -> None:
    """The checks themselves: a heading's slug, a cited section, a path."""
    assert slug("In-process: the rsprof-trace crate, and CPU without perf") == \
        "in-process-the-rsprof-trace-crate-and-cpu-without-perf"
    assert slug("The live display and `rsprof view`") == "the-live-display-and-rsprof-view"
    assert "A program with its own allocator" in headings(ROOT / "docs" / "architecture.md")
    assert PATH.findall("see `rsprof/_ring.pyx` and ~/.cache/rsprof/shim/, csrc/x_*.c") == [
        "rsprof/_ring.pyx"]
    assert FILE.match("docs/benchmarks.md-style").group(1) == "docs/benchmarks.md"  # type: ignore[union-attr]
    assert FOREIGN.search("Ordering (ARCHITECTURE invariant 3)")
    assert FOREIGN.search("see Invariant 7") and not FOREIGN.search("# Architecture")
