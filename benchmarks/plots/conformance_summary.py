"""Summarise a GPU conformance run (pytest -rA output of conformance/) as
markdown: card, versions, counts, worst errors, code-mismatch rates.

    python -m pytest conformance -rA -p no:cacheprovider > log.txt
    python -m benchmarks.plots.conformance_summary log.txt > results/<date>-h200-conformance/gpu-<date>.md
"""

from __future__ import annotations

import platform
import re
import sys
import time

STORE = re.compile(r"^(\S+) (\S+): (\d+) slots, code mismatches in margin (\d+)/(\d+) \(([\d.e+-]+)\), "
                   r"sign mismatches in margin (\d+)/(\d+), max norm rel err ([\d.e+-]+|inf|nan)")
ATTN = re.compile(r"^(\S+) (\S+): attention rel err ([\d.e+-]+|inf|nan) \(tol ([\d.e+-]+)\)")
RESULT = re.compile(r"^=*\s*(\d+ (?:passed|failed).*?) in ([\d.]+)s")


def main(path: str) -> str:
    text = open(path, errors="replace").read().splitlines()
    store, attn, summary = {}, {}, ""
    failed = [ln for ln in text if ln.startswith("FAILED ")]
    for ln in text:
        m = STORE.match(ln)
        if m:
            store[(m[1], m[2])] = m
        m = ATTN.match(ln)
        if m:
            attn[(m[1], m[2])] = m
        m = RESULT.match(ln)
        if m and ("passed" in m[1] or "failed" in m[1]):
            summary = f"{m[1]} in {m[2]} s"
    try:
        import torch
        import triton

        dev = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device"
        vers = f"torch {torch.__version__}, triton {triton.__version__}, CUDA {torch.version.cuda}"
    except Exception as e:  # pragma: no cover
        dev, vers = "unknown", repr(e)
    out = [f"# Conformance on GPU, {time.strftime('%Y-%m-%d')}", "",
           f"- card: {dev}", f"- versions: {vers}, Python {platform.python_version()}",
           f"- pytest: {summary}", ""]
    impls = sorted({k[0] for k in list(store) + list(attn)})
    for impl in impls:
        st = [m for k, m in store.items() if k[0] == impl]
        at = [m for k, m in attn.items() if k[0] == impl]
        codes = sum(int(m[5]) for m in st)
        mis = sum(int(m[4]) for m in st)
        signs = sum(int(m[8]) for m in st)
        smis = sum(int(m[7]) for m in st)
        worst_norm = max((float(m[9]) for m in st), default=0.0)
        worst_attn = max(at, key=lambda m: float(m[3]), default=None)
        out += [f"## {impl}", "",
                f"- cases: {len(st)} store, {len(at)} attention",
                f"- code mismatches inside the margin: {mis}/{codes} ({mis / max(codes, 1):.2e}); outside: 0 "
                f"unless listed under failures",
                f"- QJL sign mismatches inside the margin: {smis}/{signs}",
                f"- worst stored-norm relative error: {worst_norm:.2e}",
                f"- worst attention relative error: {float(worst_attn[3]):.2e} ({worst_attn[2]}, tol {worst_attn[4]})"
                if worst_attn else "- no attention cases", "",
                "| case | code mismatch rate | sign mism. | norm rel err | attention rel err |",
                "|---|--:|--:|--:|--:|"]
        for key in sorted({k[1] for k in list(store) + list(attn) if k[0] == impl}):
            s, a = store.get((impl, key)), attn.get((impl, key))
            out.append(f"| {key} | {s[6] if s else ''} | {s[7] + '/' + s[8] if s else ''} | {s[9] if s else ''} | "
                       f"{a[3] if a else ''} |")
        out.append("")
    out += ["## Failures", ""] + ([f"- `{ln}`" for ln in failed] or ["none"]) + [""]
    return "\n".join(out)


if __name__ == "__main__":
    print(main(sys.argv[1]))
