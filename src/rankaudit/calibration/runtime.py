"""Process set-up for calibration jobs (kept free of numpy/torch imports so it can run before them)."""

from __future__ import annotations

import os
import sys
import warnings

NATIVE_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")


def limit_native_threads(threads: int) -> None:
    """Cap BLAS/OpenMP pools at the job's `threads`: Snakemake only does this for shell jobs, and on a shared 2-core
    machine an uncapped OpenBLAS pool made the small float64 linear algebra of a cell ~8x slower. Must run before
    numpy is imported."""
    if "numpy" in sys.modules:
        warnings.warn("limit_native_threads: numpy is already imported; BLAS thread caps may not take effect",
                      RuntimeWarning, stacklevel=2)
    for variable in NATIVE_THREAD_VARIABLES:
        os.environ[variable] = str(threads)
