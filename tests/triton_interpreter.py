"""Run a file of Triton-kernel test cases in its own process with TRITON_INTERPRET=1.

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


def run_interpreted(cases: Path, expected_passed: int) -> None:
    """pytest on `cases` under the interpreter; asserts it passed exactly `expected_passed` tests
    (so a case that silently stops being collected fails too)."""
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(cases)],
        env={**os.environ, "TRITON_INTERPRET": "1"},
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=600,
    )
    tail = run.stdout[-6000:] + run.stderr[-2000:]
    assert run.returncode == 0, tail
    summary = re.search(r"(\d+) passed", run.stdout)
    assert summary and int(summary.group(1)) == expected_passed and "failed" not in run.stdout, tail
