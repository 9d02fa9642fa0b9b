"""Generated sections of SPEC.md (presets, slot layouts, matrix hashes).

SPEC.md holds blocks between ``<!-- BEGIN GENERATED: name -->`` and
``<!-- END GENERATED: name -->``; ``python -m turboquant.spec_tables --write``
refreshes them from turboquant.format, and tests/test_spec_tables.py checks
that SPEC.md is current, so SPEC.md and the format module cannot drift apart.
"""

from __future__ import annotations

import argparse
import pathlib
import re
import sys

from turboquant import format as tqf


def presets_table() -> str:
    dims = (64, 128, 256)
    head = "| preset | key | value | rotation | outlier split | " + " | ".join(f"B @ d={d}" for d in dims) + \
        " | vs bf16 @ 128 |"
    lines = [head, "|" + "---|" * (6 + len(dims))]
    for p in tqf.PRESETS.values():
        key = f"{p.key_mode} {p.key_bits}b"
        val = f"{p.value_mode} {p.value_bits}b" + (f" g={p.group_size}" if p.value_mode == "group" else "")
        split = (f"{p.outlier_fraction:g} of channels: K {p.key_outlier_bits}b"
                 + (f", V {p.value_outlier_bits}b" if p.value_mode == "mse" else "")) if p.outlier_fraction else "-"
        sizes = []
        for d in dims:
            try:
                sizes.append(str(tqf.LayerFormat(p, d).slot_bytes))
            except ValueError:
                sizes.append("n/a")
        ratio = tqf.bf16_slot_bytes(128) / tqf.LayerFormat(p, 128).slot_bytes
        lines.append(f"| `{p.name}` | {key} | {val} | {p.rotation} | {split} | " + " | ".join(sizes) +
                     f" | {ratio:.2f}x |")
    return "\n".join(lines)


def layouts_table() -> str:
    lines = ["| preset (d=128) | slot bytes | fields: name @ offset +bytes (dtype, count x bits) |", "|---|---|---|"]
    for p in tqf.PRESETS.values():
        fmt = tqf.LayerFormat(p, 128)
        parts = []
        for f in fmt.fields:
            kind = f"{f.dtype}" if f.dtype != "u8" else f"{f.count}x{f.bits}b"
            parts.append(f"`{f.name}`@{f.offset}+{f.nbytes} ({kind})")
        pad = fmt.slot_bytes - (fmt.fields[-1].offset + fmt.fields[-1].nbytes)
        if pad:
            parts.append(f"pad +{pad}")
        lines.append(f"| `{p.name}` | {fmt.slot_bytes} | " + ", ".join(parts) + " |")
    return "\n".join(lines)


def matrices_table() -> str:
    from turboquant.reference.codebook import shipped_hash
    from turboquant.reference.qjl import qjl_matrix
    from turboquant.reference.rotation import matrix_sha256, rotation_matrix

    rows = ["| matrix | base_seed | layer | instance | dim | seed (derive_seed) | SHA-256 of float32 LE bytes |",
            "|---|---|---|---|---|---|---|"]
    for kind, layer, inst, d in (("haar", 0, 0, 128), ("haar", 1, 0, 128), ("haar", 0, 0, 64),
                                 ("haar", 0, 0, 256), ("hadamard", 0, 0, 128), ("qjl", 0, 0, 128),
                                 ("haar", 0, 1, 96), ("haar", 0, 0, 32)):
        purpose = "qjl" if kind == "qjl" else "rotation"
        seed = tqf.derive_seed(tqf.DEFAULT_BASE_SEED, layer, purpose, inst)
        m = qjl_matrix(d, seed) if kind == "qjl" else rotation_matrix(kind, d, seed)
        name = "S (QJL)" if kind == "qjl" else f"Pi ({kind})"
        rows.append(f"| {name} | {tqf.DEFAULT_BASE_SEED} | {layer} | {inst} | {d} | {seed} | `{matrix_sha256(m)}` |")
    rows.append("")
    rows.append(f"Shipped codebooks (`turboquant/data/codebooks.json`) content hash: `{shipped_hash()}`")
    return "\n".join(rows)


def constants_table() -> str:
    names = ["SPEC_VERSION", "DEFAULT_BASE_SEED", "SLOT_ALIGN", "CODE_MARGIN", "SIGN_MARGIN", "GROUP_CODE_MARGIN",
             "NORM_RTOL", "RNORM_ATOL", "ATTN_RTOL_FP32", "ATTN_RTOL_HALF", "FP16_MAX"]
    lines = ["| constant | value |", "|---|---|"]
    lines += [f"| `{n}` | {getattr(tqf, n)} |" for n in names]
    lines += [f"| `NORM_NAN_BITS` | 0x{tqf.NORM_NAN_BITS:08X} |", f"| `GROUP_NAN_BITS` | 0x{tqf.GROUP_NAN_BITS:04X} |"]
    return "\n".join(lines)


def generator_table() -> str:
    """The constants of section 2's generator, as format.py holds them."""
    lines = ["| constant | value |", "|---|---|", f"| `RANDOM_GENERATOR` | `{tqf.RANDOM_GENERATOR}` |",
             f"| `SEED_PURPOSES` | {', '.join(f'`{p}`' for p in tqf.SEED_PURPOSES)} |",
             f"| `SPLITMIX64_GAMMA` | 0x{tqf.SPLITMIX64_GAMMA:016X} |",
             "| `SPLITMIX64_MULTIPLIERS` | " + ", ".join(f"0x{c:016X}" for c in tqf.SPLITMIX64_MULTIPLIERS) + " |",
             "| `SPLITMIX64_SHIFTS` | " + ", ".join(str(k) for k in tqf.SPLITMIX64_SHIFTS) + " |",
             f"| `BOX_MULLER_TWO_PI` | {tqf.BOX_MULLER_TWO_PI!r} |"]
    return "\n".join(lines)


def boundary_table() -> str:
    """Bytes per token over all layers with boundary layers (SPEC 7.1), Llama-3-8B geometry."""
    layers, heads, d = 32, 8, 128
    bf16 = layers * heads * tqf.bf16_slot_bytes(d)
    lines = ["| main | boundary layers | boundary format | bytes / token (all layers) | vs bf16 |",
             "|---|---|---|--:|--:|"]
    rows = [("tq3", 0, "-"), ("tq3", 2, tqf.NATIVE), ("tq3", 2, "k4v3"), ("tq3", 2, "tq4"), ("tq3", 1, "k4v3"),
            ("k4v3", 0, "-"), ("k4v3", 2, "tq4")]
    for main, n, b in rows:
        got = tqf.mixed_bytes_per_token(layers, d, heads, main, n, b if n else tqf.NATIVE)
        which = ", ".join(map(str, tqf.boundary_layer_indices(layers, n))) or "none"
        lines.append(f"| `{main}` | {which} | {f'`{b}`' if n else '-'} | {got:,} | {bf16 / got:.2f}x |")
    return "\n".join(lines)


SECTIONS = {"presets": presets_table, "layouts": layouts_table, "matrices": matrices_table,
            "constants": constants_table, "generator": generator_table, "boundary": boundary_table}
SPEC = pathlib.Path(__file__).resolve().parents[1] / "SPEC.md"


def render(text: str) -> str:
    for name, fn in SECTIONS.items():
        pat = re.compile(rf"(<!-- BEGIN GENERATED: {name} -->\n).*?(<!-- END GENERATED: {name} -->)", re.S)
        if not pat.search(text):
            raise ValueError(f"SPEC.md lacks the generated block {name!r}")
        text = pat.sub(lambda m, fn=fn: m.group(1) + fn() + "\n" + m.group(2), text)
    return text


def main() -> int:
    ap = argparse.ArgumentParser(description="refresh or check SPEC.md's generated tables")
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    text = SPEC.read_text()
    new = render(text)
    if args.write:
        SPEC.write_text(new)
        print("SPEC.md refreshed")
        return 0
    print("SPEC.md is current" if new == text else "SPEC.md is stale: run python -m turboquant.spec_tables --write")
    return 0 if new == text else 1


if __name__ == "__main__":
    sys.exit(main())
