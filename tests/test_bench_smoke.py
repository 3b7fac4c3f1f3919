"""The bench scripts still run: each in its ``--quick`` mode prints every one of its tables (no timing asserted).

``make bench`` is run by hand, rarely; without this test an API change would break it unnoticed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Per script, lines its output must hold: every table's heading, and the rows it must print.
EXPECTED = {
    "http_ab.py": ["latency: 1-row sync explain", "mean B−A", "range B−A", "throughput:", "B/A"],
    "http_bench.py": [
        "sync explain: kernel_shap",
        "HTTP p50  HTTP p99  in-process p50",
        "predict: requests/s",
        ":predict req/s  bare echo req/s  ratio",
        ":predict CPU µs  echo CPU µs",
    ],
    "predict_wsgi.py": [":predict and the bare echo as WSGI calls", "phases of a 1-row :predict", "request log line"],
    "perception.py": [
        "partition 1000",
        "shap.Partition 1000",
        "occlusion",
        "lime 1000",
        "lime_image raw 1000",
        "gradient methods on the same CNN",
        "grad_cam",
        "saliency",
        "integrated_gradients 64",
    ],
    "audit.py": ["single process (explainer only)", "audit, 1 worker", "audit, 2 workers"],
    "explain.py": [
        "HTTP kernel_shap n=2048",
        "shap.Kernel n=2048",
        "shap.Permutation 2048",
        "lime raw 5000",
        "tree_shap",
        "shap.Tree (sklearn)",
    ],
    "kernel.py": [
        "shap.KernelExplainer",
        "ours r=10",
        "cost by features",
        "relative error by model evaluations per row",
        "shap.PermutationExplainer",
        "ours permutation",
        "cost by background rows",
        "shap.TreeExplainer, built once",
        "engine tree_shap probability",
    ],
}


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("script", sorted(EXPECTED))
def test_bench_script_runs_in_quick_mode(script: str) -> None:
    run = _quick(script, "--device", "cuda")
    missing = [line for line in EXPECTED[script] if line not in run.stdout]
    assert not missing, f"{script} did not print {missing}:\n{run.stdout[-3000:]}"
    assert "FAILED" not in run.stdout and "skipped" not in run.stdout.replace("absent (skipped)", "")
    # --device cuda: on a host without a GPU every process falls back to the CPU, saying so in one log line.
    (device,) = [line for line in run.stdout.splitlines() if line.startswith("device cuda: onnxruntime providers")]
    assert "CUDAExecutionProvider" in device or "CUDAExecutionProvider not usable here" in run.stderr


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_http_ab_predict_mode_runs_in_quick_mode() -> None:
    """``bench/http_ab.py --predict``: both revisions' :predict throughput against the bare echo."""
    run = _quick("http_ab.py", "--predict")
    for line in (":predict: requests/s", " 1 rows    A:", " 1 rows    B:", " 1 rows echo:", "64 rows B/A", "÷echo"):
        assert line in run.stdout, f"http_ab.py --predict did not print {line!r}:\n{run.stdout[-3000:]}"


def _quick(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``bench/<script> --quick <args>`` without the caller's ONNXPLAIN_ settings; it must exit 0."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ONNXPLAIN_")}
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), "--quick", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=230,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    return run
