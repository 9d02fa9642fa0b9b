"""tools/gpu_campaign.sh's kernels stage on this machine, with a stand-in nvidia-smi: the stage reports
the GPU tests' outcome and goes on to its next step whether they pass or fail, and packs what it wrote
(kernels.tgz + kernels-summary.txt). A run whose tests all passed once ended the stage early (a grep for
failures that found none ended the `set -e` script), losing the decode step of a device call."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _kernels_stage(tmp_path, case_source: str, **env_vars: str):
    """tools/gpu_campaign.sh kernels with a stand-in nvidia-smi, KERNEL_TESTS a file of case_source, OUT
    tmp_path/out and env_vars: (the completed process, OUT)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in (("nvidia-smi", "echo 'Stand-in GPU, 0.0'"), ("python3", f'exec "{sys.executable}" "$@"')):
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod((bin_dir / name).stat().st_mode | stat.S_IEXEC)
    case = tmp_path / "test_case.py"
    case.write_text(case_source)
    out = tmp_path / "out"
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "OUT": str(out),
           "KERNEL_TESTS": str(case), **env_vars}
    env.pop("TRITON_INTERPRET", None)
    r = subprocess.run(["bash", "tools/gpu_campaign.sh", "kernels"], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r, out


@pytest.mark.parametrize("outcome", ["passed", "failed"])
def test_kernels_stage_reports_the_tests_and_goes_on(tmp_path, outcome):
    r, out = _kernels_stage(tmp_path, f"def test_case():\n    assert {outcome == 'passed'}\n",
                            KERNEL_STEPS="tests,trace", TRACE_TARGETS="none")
    assert "== tests done" in r.stdout and "== trace done" in r.stdout, r.stdout  # the next step ran
    summary = (out / "kernels-summary.txt").read_text()
    assert f"1 {outcome}" in summary, summary
    if outcome == "failed":
        assert "FAILED" in r.stdout and "tests rc 1" in r.stdout, r.stdout
    with tarfile.open(out / "kernels.tgz") as tgz:
        assert {"kernels/gpu.txt", "kernels/tests.log", "kernels/trace.log"} <= set(tgz.getnames())


def test_kernels_stage_passes_a_k_expression_whole(tmp_path):
    """KERNEL_TEST_K reaches pytest as one -k argument (KERNEL_TEST_ARGS is split at spaces: a "-k 'a or b'"
    there once ran no test at all)."""
    r, out = _kernels_stage(tmp_path, "def test_one():\n    pass\n\ndef test_two():\n    pass\n\n"
                                      "def test_three():\n    assert False\n",
                            KERNEL_STEPS="tests", KERNEL_TEST_K="one or two")
    assert "2 passed, 1 deselected" in (out / "kernels-summary.txt").read_text() + r.stdout, r.stdout
