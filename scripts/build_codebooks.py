"""Regenerate turboquant/data/codebooks.json (Lloyd-Max, needs SciPy).

    python scripts/build_codebooks.py          # write the file
    python scripts/build_codebooks.py --check  # exit 1 if the shipped file differs
"""

import argparse
import json
import pathlib
import sys

from turboquant.reference.codebook import CODEBOOK_FILE, build_all

PATH = pathlib.Path(__file__).resolve().parents[1] / "turboquant" / "data" / CODEBOOK_FILE


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    text = json.dumps(build_all(), indent=1, sort_keys=True) + "\n"
    if args.check:
        same = PATH.exists() and PATH.read_text() == text
        print("codebooks.json is up to date" if same else "codebooks.json differs from the regenerated data")
        return 0 if same else 1
    PATH.write_text(text)
    print(f"wrote {PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
