"""SPEC.md's generated tables (presets, layouts, matrix SHA-256, constants) equal
what turboquant.format and the reference produce on this machine."""

from turboquant import spec_tables


def test_spec_md_is_current():
    text = spec_tables.SPEC.read_text()
    assert spec_tables.render(text) == text, "run: python -m turboquant.spec_tables --write"
