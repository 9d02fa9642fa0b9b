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
