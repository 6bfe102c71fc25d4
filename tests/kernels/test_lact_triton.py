"""Runs lact_interpreter_cases.py in its own process with TRITON_INTERPRET=1 (see triton_interpreter.py)."""

from __future__ import annotations

from pathlib import Path

from triton_interpreter import run_interpreted

CASES = Path(__file__).with_name("lact_interpreter_cases.py")


def test_triton_kernels_match_reference_under_interpreter():
    run_interpreted(CASES, 13)
