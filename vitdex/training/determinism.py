"""Bit-for-bit reproducible CPU maths for training processes.

A run killed and resumed must end with the same weights as one that never stopped, and
that holds only if two processes compute the same step the same way. MKL (torch's CPU
BLAS) may pick different code paths from run to run (memory alignment, threads it
drops under load), which changes the last bits of a matrix product now and then. Its
strict conditional-numerical-reproducibility mode removes that freedom. It must be set
before MKL's first call, so training entry points call :func:`reproducible_cpu_math`
before torch computes anything; a value the user set is kept.
"""

from __future__ import annotations

import os

__all__ = ["reproducible_cpu_math"]


def reproducible_cpu_math() -> None:
    """Ask MKL for run-to-run identical results (``MKL_CBWR=AUTO,STRICT``) unless set."""
    os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")
