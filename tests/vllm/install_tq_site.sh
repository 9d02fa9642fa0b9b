#!/usr/bin/env bash
# install_tq_site.sh -- install this project (no dependencies) into $TQ_SITE (default /tmp/tq-site)
# with its entry points, so that vLLM finds the plugin; runs from the repository root.  Used by
# run_gpu.sh and tools/gpu_campaign.sh on the GPU machine.
set -euo pipefail
TQ_SITE="${TQ_SITE:-/tmp/tq-site}"
rm -rf "$TQ_SITE"
if ! python3 -m pip install -q --no-deps --no-build-isolation --no-compile --target "$TQ_SITE" . ; then
  # No build backend on the machine: assemble the same layout from pyproject.toml by hand
  # (package-dir mapping, package data, entry points), which is all vLLM needs.
  echo "pip could not build the project; assembling $TQ_SITE from pyproject.toml" >&2
  rm -rf "$TQ_SITE"
  python3 - "$TQ_SITE" <<'PY'
import glob, os, shutil, sys, tomllib
site = sys.argv[1]
py = tomllib.load(open("pyproject.toml", "rb"))
st = py["tool"]["setuptools"]
def src_dir(pkg):  # setuptools' rule: the longest mapped parent, then the rest of the dotted name
    parts = pkg.split(".")
    for n in range(len(parts), 0, -1):
        base = st["package-dir"].get(".".join(parts[:n]))
        if base is not None:
            return os.path.join(base, *parts[n:])
    return os.path.join(*parts)
for pkg in st["packages"]:
    src = src_dir(pkg)
    dst = os.path.join(site, *pkg.split("."))
    os.makedirs(dst, exist_ok=True)
    for f in glob.glob(os.path.join(src, "*.py")):
        shutil.copy(f, dst)
    for pat in st.get("package-data", {}).get(pkg, []):
        for f in glob.glob(os.path.join(src, pat)):
            os.makedirs(os.path.join(dst, os.path.dirname(os.path.relpath(f, src))), exist_ok=True)
            shutil.copy(f, os.path.join(dst, os.path.relpath(f, src)))
proj = py["project"]
info = os.path.join(site, f"{proj['name'].replace('-', '_')}-{proj['version']}.dist-info")
os.makedirs(info)
open(os.path.join(info, "METADATA"), "w").write(
    f"Metadata-Version: 2.1\nName: {proj['name']}\nVersion: {proj['version']}\n")
with open(os.path.join(info, "entry_points.txt"), "w") as f:
    for group, eps in proj.get("entry-points", {}).items():
        f.write(f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()) + "\n")
print("assembled", site)
PY
fi
