"""Runs lact_interpreter_cases.py in its own process with TRITON_INTERPRET=1.

Triton decides between compiling and interpreting when `triton` is first imported, and other
tests in this session may import it first; a fresh process is the only reliable way to run our
kernels through the interpreter on a CPU.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

CASES = Path(__file__).with_name("lact_interpreter_cases.py")


def test_triton_kernels_match_reference_under_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(CASES)],
        env=env,
        cwd=CASES.parents[2],
        capture_output=True,
        text=True,
        timeout=600,
    )
    tail = run.stdout[-6000:] + run.stderr[-2000:]
    assert run.returncode == 0, tail
    summary = re.search(r"(\d+) passed", run.stdout)
    assert summary and int(summary.group(1)) == 25 and "failed" not in run.stdout, tail
