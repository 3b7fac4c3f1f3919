"""A worker process runs numpy's BLAS on as many threads as onnxruntime's intra-op threads (1 by default)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

PROBE = (
    "import worker, numpy, threadpoolctl, json; "
    "print(json.dumps([p['num_threads'] for p in threadpoolctl.threadpool_info() if p['user_api'] == 'blas']))"
)


def _blas_threads(**env: str) -> list[int]:
    clean = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "ONNXPLAIN_ORT_THREADS")}
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env={**clean, **env}, capture_output=True, text=True, check=True, timeout=60
    )
    threads: list[int] = json.loads(out.stdout)
    return threads


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="one core: BLAS starts one thread anyway")
def test_the_worker_package_limits_blas_to_the_intra_op_threads() -> None:
    assert _blas_threads() == [1]  # numpy's OpenBLAS would take every core
    assert _blas_threads(ONNXPLAIN_ORT_THREADS="2") == [2]
    assert _blas_threads(OPENBLAS_NUM_THREADS="2", ONNXPLAIN_ORT_THREADS="1") == [2]  # an explicit setting wins
