"""Explanation-engine benchmark: onnxplain's explainers against raw onnxruntime, shap and lime.

Run from the repository root (about three minutes on 2 cores)::

    .venv/bin/python bench/explain.py

Two models are built in the run: (a) StandardScaler + MLPClassifier on 10
features, 3 classes; (b) GradientBoostingClassifier, 30 trees of depth 3, 8
features, binary; both converted with skl2onnx (no ZipMap). 100 background
rows, 20 rows explained, the predicted class as target. Every model call
goes through one onnxruntime session (1 intra-op thread, no spinning).

* **Baseline A** (raw onnxruntime): the batch sizes of every call the method
  made to the model are recorded, then replayed as bare ``session.run``
  calls of the same sizes on float32 input prepared in advance.
* **Baseline B** (raw libraries): ``shap.KernelExplainer(l1_reg=False)``,
  ``shap.PermutationExplainer``, ``shap.ExactExplainer``,
  ``lime.lime_tabular.LimeTabularExplainer`` over the same model function,
  same budgets, all 20 rows in one call; ``shap.TreeExplainer`` on the
  sklearn GBM itself for ``tree_shap``.
* **onnxplain**: ``get_explainer(name).explain(ExplainTask(...))`` as the
  worker calls it, parameters through ``validate_params``; and, for the MLP's
  kernel_shap, the full HTTP path (Flask test client → Redis → worker).

Each method is timed interleaved with its baseline B (one warm-up on 2 rows
each, then ``REPEATS`` rounds of both, then both replays); medians reported.
Errors are against exact Shapley values of the same game (engine ``exact``
on probabilities; for ``tree_shap``, brute force on sklearn's margin).
"""

from __future__ import annotations

import io
import json
import os
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import date
from importlib.metadata import version
from pathlib import Path
from typing import Any

import benchlib
import numpy as np
import onnxruntime as ort

from engine.arrays import FloatArray
from engine.methods import get_explainer, validate_params
from engine.methods.base import ExplainTask
from engine.methods.exact import shapley_values

ROWS, BACKGROUND, REPEATS, WARMUP_ROWS = 20, 100, 5, 2
QUICK = [False]  # --quick, read where the groups are built
ROOT = Path(__file__).resolve().parents[1]
Run = Callable[[FloatArray], FloatArray]


class Model:
    """The ONNX model as a raw-feature function ``(n, d)`` float64 → ``(n, k)`` probabilities, counting rows."""

    def __init__(self, onnx: bytes) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(onnx, options, providers=benchlib.providers())
        self.input = self.session.get_inputs()[0].name
        self.batches: list[int] = []

    def __call__(self, X: FloatArray) -> FloatArray:
        X = np.asarray(X, dtype=np.float64)
        X = X.reshape(-1, X.shape[-1])
        self.batches.append(len(X))
        (y,) = self.session.run(["probabilities"], {self.input: X.astype(np.float32)})
        return np.asarray(y, dtype=np.float64)

    def replay(self, batches: list[int], pool: np.ndarray) -> float:
        """Baseline A: seconds for bare ``session.run`` calls of the recorded batch sizes."""
        start = time.perf_counter()
        for size in batches:
            self.session.run(["probabilities"], {self.input: pool[:size]})
        return time.perf_counter() - start


@dataclass
class Case:
    """One benchmarked model: its ONNX bytes and session, rows, background, targets and sklearn estimator."""

    name: str
    onnx: bytes
    model: Model
    X: FloatArray
    background: FloatArray
    targets: list[int]
    sklearn: Any


def build(name: str) -> Case:
    """Train and convert model ``mlp`` or ``gbm`` on synthetic data."""
    from skl2onnx import to_onnx
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    d = 10 if name == "mlp" else 8
    X = (rng.normal(size=(3000, d)) * rng.uniform(0.5, 20, d)).astype(np.float32).astype(np.float64)
    z = (X / X.std(axis=0)) @ rng.normal(size=(d, 3)) + np.sin(X[:, :1] / X[:, 0].std()) * (X[:, 1:2] > 0)
    if name == "mlp":
        est = make_pipeline(StandardScaler(), MLPClassifier((64, 32), max_iter=300, random_state=0))
        y = z.argmax(axis=1)
    else:
        est = GradientBoostingClassifier(n_estimators=30, max_depth=3, random_state=0)
        y = (z[:, 0] > 0).astype(int)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.fit(X[:2000], y[:2000])
    onx = to_onnx(est, X[:1].astype(np.float32), options={"zipmap": False}, target_opset={"": 17, "ai.onnx.ml": 3})
    model = Model(onx.SerializeToString())
    rows, background = X[2000 : 2000 + ROWS], X[2500 : 2500 + BACKGROUND]
    return Case(name, onx.SerializeToString(), model, rows, background, [int(t) for t in model(rows).argmax(1)], est)


def to_dnk(values: Any, n: int, d: int) -> FloatArray:
    """Normalise a library's attributions (list per output, or array) to ``(n, d, k)``."""
    if isinstance(values, list):
        values = np.stack(values, axis=-1)
    return np.asarray(values, dtype=np.float64).reshape(n, d, -1)


def engine(case: Case, method: str, params: dict[str, Any]) -> Run:
    """A run of the onnxplain explainer ``method`` over some rows, as the worker builds the task."""
    valid = validate_params(method, params)
    if method == "lime":
        valid["mode"] = "classification"
    outputs = [str(c) for c in range(case.model(case.X[:1]).shape[1])]
    names = [f"x{j}" for j in range(case.X.shape[1])]
    fixed = {"background": case.background, "feature_names": names, "output_names": outputs, "params": valid}
    fixed["onnx_model"] = case.onnx if method == "tree_shap" else None

    def run(X: FloatArray) -> FloatArray:
        targets = [[t] for t in case.targets[: len(X)]]
        task = ExplainTask(f=case.model, X=X, targets=targets, seed=valid["seed"], **fixed)
        return get_explainer(method).explain(task).values

    return run


def raw(case: Case, kind: str, budget: int) -> Run:
    """A run of the raw library (baseline B) over some rows."""
    import shap
    from lime.lime_tabular import LimeTabularExplainer

    f, bg = case.model, case.background
    masker = shap.maskers.Independent(bg, max_samples=len(bg))
    k = f(bg[:1]).shape[1]

    def run(X: FloatArray) -> FloatArray:
        n, d = X.shape
        if kind == "kernel":
            np.random.seed(0)
            return to_dnk(shap.KernelExplainer(f, bg).shap_values(X, nsamples=budget, l1_reg=False, silent=True), n, d)
        if kind == "permutation":
            np.random.seed(0)
            return to_dnk(shap.PermutationExplainer(f, masker, seed=0)(X, max_evals=budget, silent=True).values, n, d)
        if kind == "exact":
            return to_dnk(shap.ExactExplainer(f, masker)(X, silent=True).values, n, d)
        if kind == "tree":
            tree = shap.TreeExplainer(case.sklearn, bg, feature_perturbation="interventional")
            phi = to_dnk(tree.shap_values(X, check_additivity=False), n, d)
            return np.concatenate([-phi, phi], axis=2)  # margin s of class 1; class 0 gets −s
        out = np.zeros((n, d, k))
        explainer = LimeTabularExplainer(bg, mode="classification", discretize_continuous=True, random_state=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for i, (x, t) in enumerate(zip(X, case.targets, strict=False)):
                local = explainer.explain_instance(x, f, labels=(t,), num_features=d, num_samples=budget).local_exp
                for j, w in local[t]:
                    out[i, j, t] = w
        return out

    return run


def measure(case: Case, group: list[tuple[str, Run]], pool: np.ndarray) -> dict[str, dict[str, Any]]:
    """Time a method and its baseline B interleaved (fair under drifting load), each with its baseline A replay.

    Returns per label: median seconds, median replay seconds (``None`` when
    the ONNX model was never called), rows evaluated, calls, last attributions.
    """
    for _, run in group:
        run(case.X[:WARMUP_ROWS])
    out: dict[str, dict[str, Any]] = {label: {"s": [], "ort": []} for label, _ in group}
    for _ in range(REPEATS):
        for label, run in group:
            case.model.batches = []
            start = time.perf_counter()
            out[label]["values"] = run(case.X)
            out[label]["s"].append(time.perf_counter() - start)
            out[label]["batches"] = case.model.batches
        for label, _ in group:
            batches = out[label]["batches"]
            if batches and max(batches) > len(pool):
                pool = np.resize(pool, (max(batches), pool.shape[1]))
            out[label]["ort"].append(case.model.replay(batches, pool) if batches else None)
    for r in out.values():
        r["s"] = statistics.median(r["s"])
        r["ort"] = None if r["ort"][0] is None else statistics.median(r["ort"])
        r["evals"], r["calls"] = sum(r["batches"]), len(r["batches"])
    return out


def margin_reference(case: Case) -> FloatArray:
    """Exact Shapley values of sklearn's margin (decision_function), as ``(n, d, 2)`` with class 0 = −class 1."""
    f = case.sklearn.decision_function
    phi = np.stack([shapley_values(lambda Z: f(Z).reshape(-1, 1), x, case.background)[1] for x in case.X])
    return np.concatenate([-phi, phi], axis=2)


class HttpPath:
    """The full HTTP path as a run: ``POST /v1/models/mlp:explain`` (kernel_shap, nsamples 2048).

    Flask test client → a private ``redis-server`` → one ``python -m worker``
    subprocess; every call sends a new seed, so no answer can come from a cache.
    """

    def __init__(self, case: Case) -> None:
        self.case, self.seed = case, 0

    def __enter__(self) -> HttpPath:
        self.service = benchlib.Service(max_wait_s=120.0)
        try:
            self.service.start_workers(1)
            self.client = self.service.client_of()
            names = [f"x{j}" for j in range(self.case.X.shape[1])]
            card = {"name": "mlp", "task": "classification", "features": names, "class_names": ["0", "1", "2"]}
            csv = "\n".join([",".join(names)] + [",".join(map(repr, r)) for r in self.case.background.tolist()])
            files = {"model": (io.BytesIO(self.case.onnx), "m.onnx"), "card": json.dumps(card)}
            files["background"] = (io.BytesIO(csv.encode()), "b.csv")
            response = self.client.post("/v1/models", data=files, content_type="multipart/form-data")
            assert response.status_code == 201, response.get_data(as_text=True)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __call__(self, X: FloatArray) -> FloatArray:
        self.seed += 1
        body = {"instances": X.tolist(), "method": "kernel_shap", "parameters": {"nsamples": 2048, "seed": self.seed}}
        response = self.client.post("/v1/models/mlp:explain", json={**body, "wait": 120})
        assert response.status_code == 200, response.get_data(as_text=True)[:500]
        out = np.zeros((*X.shape, 3))
        for i, explanation in enumerate(response.get_json()["explanations"]):
            for target in explanation["targets"]:
                out[i, :, int(target["target"])] = [a["attribution"] for a in target["attributions"]]
        return out

    def __exit__(self, *exc: object) -> None:
        self.service.close()


def fmt(x: float | None, spec: str = ".3g") -> str:
    """Format a number, ``—`` for none."""
    return "—" if x is None else format(x, spec)


def groups(case: Case) -> list[list[tuple[str, Run]]]:
    """The measurements of one model: each onnxplain method first, then its baseline B."""
    budgets = [2048, 800, 200] if case.name == "mlp" else [2048, 200]  # below 2^d − 2 both sample
    if QUICK[0]:
        budgets = [2048, 200] if case.name == "mlp" else [200]
    out = [[("exact", engine(case, "exact", {})), ("shap.ExactExplainer", raw(case, "exact", 0))]]
    for n in budgets:
        out.append([(f"kernel_shap n={n}", engine(case, "kernel_shap", {"nsamples": n})),
                    (f"shap.Kernel n={n}", raw(case, "kernel", n))])  # fmt: skip
    out.append([("permutation 2048", engine(case, "permutation", {"max_evals": 2048})),
                ("shap.Permutation 2048", raw(case, "permutation", 2048))])  # fmt: skip
    out.append([("lime 5000", engine(case, "lime", {"num_samples": 5000})), ("lime raw 5000", raw(case, "lime", 5000))])
    if case.name == "gbm" and (ROOT / "engine/methods/tree_shap.py").exists():
        out.append([("tree_shap", engine(case, "tree_shap", {})), ("shap.Tree (sklearn)", raw(case, "tree", 0))])
    return out


def main() -> None:
    """Build the models, run every measurement and print the table."""
    global ROWS, REPEATS
    args = benchlib.arguments(__doc__)  # before create_app, whose log setup (INFO, shap at WARNING) then joins it
    if args.quick:  # the smoke test's mode: every kind of row, fewest rows and budgets
        ROWS, REPEATS, QUICK[0] = 2, 1, True
    started = time.perf_counter()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    libs = ("numpy", "onnxruntime", "shap", "lime", "scikit-learn", "skl2onnx")
    print("versions: " + ", ".join(f"{p} {version(p)}" for p in libs))
    print(f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}; ort: 1 intra-op thread, no spinning")
    print("load average at start: " + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    table: list[list[str]] = []
    for name in ("mlp", "gbm"):
        case = build(name)
        pool = np.resize(case.background.astype(np.float32), (250_000, case.X.shape[1]))
        reference: dict[str, FloatArray] = {}
        for group in groups(case):
            label, raw_label = group[0][0], group[-1][0]
            with ExitStack() as stack:
                if name == "mlp" and label == "kernel_shap n=2048":
                    try:  # optional: the full HTTP path, interleaved with the in-process runs
                        group = [group[0], ("HTTP kernel_shap n=2048", stack.enter_context(HttpPath(case))), group[1]]
                    except Exception as exc:
                        print(f"HTTP path skipped: {type(exc).__name__}: {exc}")
                try:
                    results = measure(case, group, pool)
                except Exception as exc:  # report a broken method, keep benchmarking the others
                    print(f"{name} {label}: FAILED {type(exc).__name__}: {exc}")
                    continue
            if "HTTP kernel_shap n=2048" in results:  # the worker's model calls are those of the engine run
                results["HTTP kernel_shap n=2048"].update({k: results[label][k] for k in ("ort", "evals", "calls")})
            if label == "exact":
                reference["prob"] = results["exact"]["values"]
            if label == "tree_shap":
                reference["margin"] = margin_reference(case)
            ref = reference.get("margin" if label == "tree_shap" else "prob")
            for key, r in results.items():
                err = ["—", "—"]
                if ref is not None and not key.startswith("lime"):
                    diff = np.abs([r["values"][i, :, t] - ref[i, :, t] for i, t in enumerate(case.targets)])
                    err = [f"{diff.max():.1e}", f"{diff.mean():.1e}"]
                ratio_b = fmt(results[raw_label]["s"] / r["s"], ".2f") if key != raw_label else "—"
                ratio_a = fmt(r["ort"] and r["s"] / r["ort"], ".1f")
                ort_s = fmt(r["ort"] and r["ort"] / ROWS)
                table.append([name, key, f"{r['evals'] / ROWS:,.0f}", f"{r['calls'] / ROWS:.3g}",
                              fmt(r["s"] / ROWS), ort_s, ratio_a, ratio_b, *err])  # fmt: skip
    head = ["model", "method", "evals/row", "calls/row", "s/row", "ort s/row", "×A", "B/onnxplain"]
    head += ["max|err|", "mean|err|"]
    widths = [max(len(r[i]) for r in [head, *table]) for i in range(len(head))]
    print()
    for row in [head, ["-" * w for w in widths], *table]:
        print("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))))
    print(f"\n{ROWS} rows, {BACKGROUND} background rows, median of {REPEATS} interleaved runs; {date.today()}; "
          f"load average at end {os.getloadavg()[0]:.2f}; total {time.perf_counter() - started:.0f} s")  # fmt: skip


if __name__ == "__main__":
    main()
