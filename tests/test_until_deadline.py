"""tools/until_deadline.sh: a pytest run cut at its deadline still prints the failures it had (SIGINT, not
SIGKILL: the device calls' limit used to cut the eager vLLM suite with nothing but its progress line), a
deadline already past starts nothing, and no deadline runs the command as it is."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tools" / "until_deadline.sh"


def test_pytest_cut_at_the_deadline_prints_its_failures(tmp_path):
    case = tmp_path / "test_case.py"
    case.write_text("import time\n\n"
                    "def test_fails_first():\n    assert 'wanted' == 'got', 'the failure before the cut'\n\n"
                    "def test_runs_past_the_deadline():\n    time.sleep(120)\n")
    t0 = time.time()
    r = subprocess.run(["bash", str(SCRIPT), str(int(t0) + 15), sys.executable, "-m", "pytest", "-q", "-rA",
                        "-p", "no:cacheprovider", str(case)], cwd=tmp_path, capture_output=True, text=True,
                       timeout=110)
    assert time.time() - t0 < 60, r.stdout
    assert r.returncode == 124, (r.returncode, r.stdout[-3000:], r.stderr[-3000:])  # cut, as timeout says
    assert "the failure before the cut" in r.stdout and "KeyboardInterrupt" in r.stdout, r.stdout
    assert "FAILED" in r.stdout and "test_fails_first" in r.stdout, r.stdout


def test_a_deadline_already_past_starts_nothing(tmp_path):
    marker = tmp_path / "ran"
    r = subprocess.run(["bash", str(SCRIPT), str(int(time.time()) - 1), "touch", str(marker)], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 124 and "not started" in r.stdout, (r.returncode, r.stdout, r.stderr)
    assert not marker.exists()


def test_no_deadline_runs_the_command_as_it_is():
    for deadline in ("", "0"):
        r = subprocess.run(["bash", str(SCRIPT), deadline, "sh", "-c", "echo ran; exit 3"], capture_output=True,
                           text=True, timeout=30)
        assert (r.returncode, r.stdout) == (3, "ran\n"), (r.returncode, r.stdout, r.stderr)
    r = subprocess.run(["bash", str(SCRIPT), "0"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "usage" in r.stderr
