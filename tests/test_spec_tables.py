"""SPEC.md's generated tables (presets, layouts, matrix SHA-256, constants) equal
what turboquant.format and the reference produce on this machine."""

from turboquant import spec_tables


def test_spec_md_is_current():
    text = spec_tables.SPEC.read_text()
    assert spec_tables.render(text) == text, "run: python -m turboquant.spec_tables --write"


def test_generator_prose_uses_format_constants():
    """SPEC section 2's word recipe is written out in prose; its constants are format.py's."""
    from turboquant import format as tqf

    text = spec_tables.SPEC.read_text()
    recipe = text[text.index("**Words.**"): text.index("<!-- BEGIN GENERATED: generator -->")]
    s1, s2, s3 = tqf.SPLITMIX64_SHIFTS
    m1, m2 = tqf.SPLITMIX64_MULTIPLIERS
    for piece in (f"(k + 1) · 0x{tqf.SPLITMIX64_GAMMA:016X}", f"(z ⊕ (z ≫ {s1})) · 0x{m1:016X}",
                  f"(z ⊕ (z ≫ {s2})) · 0x{m2:016X}", f"w_k = z ⊕ (z ≫ {s3})"):
        assert piece in recipe, piece
    assert f"τ = {tqf.BOX_MULLER_TWO_PI!r}" in text
