"""Every relative link in the project's markdown files points at a file or folder that exists."""

from __future__ import annotations

import pathlib
import re
import subprocess

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def markdown_files() -> list[pathlib.Path]:
    try:
        out = subprocess.run(["git", "ls-files", "*.md"], cwd=REPO, capture_output=True, text=True, check=True)
        return [REPO / p for p in out.stdout.split()]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout
        return sorted(p for p in REPO.rglob("*.md") if not any(part.startswith(".") for part in p.parts))


def relative_links(text: str) -> list[str]:
    return [t for t in LINK.findall(text) if not re.match(r"^[a-z][a-z0-9+.-]*:|^#", t)]


def test_link_parser():
    assert relative_links("see [a](docs/x.md#y), [b](https://e.org/z) and [c](#here) ![p](r.png)") == \
        ["docs/x.md#y", "r.png"]


@pytest.mark.parametrize("md", markdown_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(md):
    missing = [t for t in relative_links(md.read_text(encoding="utf-8"))
               if not (md.parent / t.split("#")[0]).exists()]
    assert not missing, f"{md.relative_to(REPO)} links to missing files: {missing}"


def heading_anchors(text: str) -> set[str]:
    """The anchors GitHub gives a markdown file's headings: lowercased, characters other than letters, digits,
    spaces, hyphens and underscores dropped, spaces as hyphens, repeats numbered -1, -2, ...; headings inside
    fenced code blocks do not count."""
    anchors, seen, fenced = set(), {}, False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if fenced or not m:
            continue
        slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


def test_heading_anchors():
    text = "# Performance (measured, H200)\n## `k4v3` on L\n```\n# not a heading\n```\n## `k4v3` on L\n"
    assert heading_anchors(text) == {"performance-measured-h200", "k4v3-on-l", "k4v3-on-l-1"}


@pytest.mark.parametrize("md", markdown_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_anchors_resolve(md):
    """Every link to a heading (#anchor, in this file or in another markdown file) names a heading there."""
    text = md.read_text(encoding="utf-8")
    broken = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or "#" not in target:
            continue
        path, anchor = target.split("#", 1)
        doc = md if not path else md.parent / path
        if doc.suffix == ".md" and doc.is_file() and anchor not in heading_anchors(doc.read_text(encoding="utf-8")):
            broken.append(target)
    assert not broken, f"{md.relative_to(REPO)} links to headings that do not exist: {broken}"
