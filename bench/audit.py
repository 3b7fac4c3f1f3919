"""Audit throughput: rows/s of a batch audit on 1 and 2 workers, against the same method in one plain process.

Run from the repository root (about two minutes on 2 cores)::

    .venv/bin/python bench/audit.py

One model is built in the run: StandardScaler + MLPClassifier (32, 16) on 8 features, binary, converted with
skl2onnx (no ZipMap); 100 background rows; ``ROWS`` rows to explain with ``METHOD`` (seed 0), the positive class
as target.

* **single process** (the baseline): ``get_explainer(METHOD).explain(ExplainTask(...))`` on all rows at once, the
  model a bare onnxruntime session (1 intra-op thread, no spinning): no service, no Redis, no JSON.
* **audit, N workers**: the whole service path: ``POST /v1/audits`` (CSV upload, validation, storage) through a
  Flask test client, a private ``redis-server``, N ``python -m worker`` processes taking chunks of
  ``CHUNK_ROWS`` rows from the ``batch`` queue, then the merge job (summary with fairness, HTML report). Timed
  from the POST to ``succeeded``, polling every 0.25 s. "explain" is the explaining phase alone (first chunk
  start to merge start), "merge" the merge job, "chunk jobs" the sum of every chunk job's run time (the work
  the workers did, whatever their number). Each worker is warmed first by a small audit, so the times exclude
  imports and session creation.

The single process and the audits run interleaved (single, audit, single, audit, ...), so both see the same load
on a shared host. Every number is the median of ``REPEATS`` runs; ratios are rows/s over the single process's.
"""

from __future__ import annotations

import io
import json
import os
import platform
import statistics
import time
import warnings
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

# One BLAS thread in the single process too, as in every worker (worker/__init__.py): the comparison is one
# core's loop against one and two workers.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import benchlib  # noqa: E402
import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import pandas as pd  # noqa: E402

from engine.arrays import FloatArray  # noqa: E402
from engine.methods import get_explainer, validate_params  # noqa: E402
from engine.methods.base import ExplainTask  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

ROWS, CHUNK_ROWS, BACKGROUND, REPEATS = 2000, 250, 100, 3
METHOD, PARAMS = "kernel_shap", {"nsamples": 512, "seed": 0}
FEATURES = [f"x{i}" for i in range(8)]


def build() -> tuple[bytes, dict[str, Any], FloatArray, FloatArray]:
    """The ONNX model, its card, background rows and the rows to audit."""
    from skl2onnx import to_onnx
    from sklearn.datasets import make_classification
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = make_classification(n_samples=ROWS + 600, n_features=8, n_informative=6, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # a rough fit is as good a model to explain
        model = make_pipeline(StandardScaler(), MLPClassifier((32, 16), max_iter=500, random_state=0))
        model.fit(X[:500], y[:500])
    onx = to_onnx(model, X[:1].astype(np.float32), options={id(model): {"zipmap": False}}, target_opset=17)
    card = {"name": "bench-audit", "task": "classification", "features": FEATURES, "class_names": ["no", "yes"]}
    return onx.SerializeToString(), card, X[500 : 500 + BACKGROUND], X[600 : 600 + ROWS]


def single_process(onnx: bytes, background: FloatArray, X: FloatArray) -> float:
    """Seconds for the explainer alone, all rows in one call."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(onnx, options, providers=benchlib.providers())
    name = session.get_inputs()[0].name

    def f(rows: FloatArray) -> FloatArray:
        rows = np.asarray(rows, dtype=np.float64).reshape(-1, X.shape[1])
        return np.asarray(session.run(["probabilities"], {name: rows.astype(np.float32)})[0], dtype=np.float64)

    task = ExplainTask(
        f=f,
        X=X,
        background=background,
        feature_names=FEATURES,
        output_names=["no", "yes"],
        targets=[[1]] * len(X),
        params=validate_params(METHOD, PARAMS),
        seed=0,
    )
    started = time.perf_counter()
    get_explainer(METHOD).explain(task)
    return time.perf_counter() - started


class Service(benchlib.Service):
    """A private Redis, N workers and the API (Flask test client, auth on) over temporary stores."""

    def __init__(self, workers: int, onnx: bytes, card: dict[str, Any], background: FloatArray) -> None:
        super().__init__(audit_chunk_rows=CHUNK_ROWS)
        self.start_workers(workers)
        self.client = self.client_of()
        frame = pd.DataFrame(background, columns=FEATURES).to_csv(index=False).encode()
        data = {"model": (io.BytesIO(onnx), "m"), "card": json.dumps(card), "background": (io.BytesIO(frame), "b")}
        answer = self.client.post("/v1/models", data=data, content_type="multipart/form-data")
        assert answer.status_code == 201, answer.json
        # Warm every worker (imports, session, explainer) with one small chunk each.
        warm = self.client_of(self.settings.replace(audit_chunk_rows=5))
        self.audit(background[: 5 * workers], client=warm)

    def audit(self, X: FloatArray, client: Any = None) -> dict[str, Any]:
        """Run one audit to the end; return the final audit resource (and ``seconds``)."""
        client = client or self.client
        frame = pd.DataFrame(X, columns=FEATURES).assign(group=np.where(X[:, 0] > 0, "a", "b"))
        spec = {"model": "bench-audit", "method": METHOD, "parameters": PARAMS, "sensitive": ["group"]}
        started = time.perf_counter()
        data = {"dataset": (io.BytesIO(frame.to_csv(index=False).encode()), "d"), "spec": json.dumps(spec)}
        answer = client.post("/v1/audits", data=data, content_type="multipart/form-data")
        assert answer.status_code == 202, answer.json
        while (body := client.get(answer.headers["Location"]).json)["status"] not in (
            "succeeded",
            "failed",
            "canceled",
        ):
            time.sleep(0.25)  # as a client would poll; faster polling takes CPU from the workers
        assert body["status"] == "succeeded", body
        return {**body, "seconds": time.perf_counter() - started}

    def phases(self, audit: dict[str, Any]) -> tuple[float, float, float]:
        """Seconds of the explaining phase (first chunk start to merge start), of the merge, and of all chunk jobs."""
        from redis import Redis
        from rq.job import Job

        from engine.jobs import JobSerializer

        def job(start: int | str) -> Job:
            return Job.fetch(f"audit-{audit['id']}-{start}", connection=connection, serializer=JobSerializer)

        def seconds(a: datetime | None, b: datetime | None) -> float:
            assert a is not None and b is not None
            return (b.replace(tzinfo=UTC) - a.replace(tzinfo=UTC)).total_seconds()

        connection = Redis.from_url(self.redis.url)
        # The merge job writes the audit's end itself, a moment before RQ stores the job's own end: wait for it.
        deadline = time.monotonic() + 10
        while (merge := job("merge")).ended_at is None and time.monotonic() < deadline:
            time.sleep(0.01)
        first = datetime.fromisoformat(audit["started_at"].replace("Z", "+00:00"))
        busy = sum(seconds(j.started_at, j.ended_at) for j in map(job, range(0, ROWS, CHUNK_ROWS)))
        return seconds(first, merge.started_at), seconds(merge.started_at, merge.ended_at), busy


def main() -> None:
    """Build the model, time the single process and the audits, print the table."""
    global ROWS, CHUNK_ROWS, REPEATS
    args = benchlib.arguments(__doc__)
    if args.quick:
        ROWS, CHUNK_ROWS, REPEATS = 40, 20, 1  # the smoke test's mode
    begun = time.perf_counter()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print("versions: " + ", ".join(f"{p} {version(p)}" for p in ("onnxruntime", "shap", "rq", "fairlearn")))
    print("load average at start: " + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    onnx, card, background, X = build()
    singles: list[float] = []
    audits: dict[int, list[tuple[float, float, float, float]]] = {}
    for n in (1, 2):
        service = Service(n, onnx, card, background)
        try:
            for _ in range(REPEATS):  # interleaved, so that both see the same load on a shared host
                singles.append(single_process(onnx, background, X))
                run = service.audit(X)
                audits.setdefault(n, []).append((run["seconds"], *service.phases(run)))
        finally:
            service.close()
    base = statistics.median(singles)
    rows: list[tuple[str, float, tuple[float, float, float] | None]] = [("single process (explainer only)", base, None)]
    for n, runs in audits.items():
        total = statistics.median(r[0] for r in runs)
        phases = (statistics.median(r[1] for r in runs), statistics.median(r[2] for r in runs))
        rows.append(
            (f"audit, {n} worker{'s' if n > 1 else ''}", total, (*phases, statistics.median(r[3] for r in runs)))
        )
    setup = f"{len(FEATURES)} features, {BACKGROUND} background rows, chunks of {CHUNK_ROWS}"
    print(f"\n{ROWS} rows, {METHOD} {PARAMS}, {setup}")
    header = ("path", "seconds", "rows/s", "ratio", "explain s", "rows/s", "ratio", "merge s", "chunk jobs s")
    table = [header, tuple("-" * len(h) for h in header)]
    for name, seconds, phase in rows:
        cells = [name, f"{seconds:.2f}", f"{ROWS / seconds:,.0f}", f"{base / seconds:.2f}"]
        if phase is None:
            cells += [""] * 5
        else:
            explain, merge, busy = phase
            cells += [
                f"{explain:.2f}",
                f"{ROWS / explain:,.0f}",
                f"{base / explain:.2f}",
                f"{merge:.2f}",
                f"{busy:.2f}",
            ]
        table.append(tuple(cells))
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for r in table:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))))
    total = f"total {time.perf_counter() - begun:.0f} s, load average at end: {os.getloadavg()[0]:.2f}"
    print(f"\nmedian of {REPEATS} runs each, interleaved; ratio = rows/s over single-process rows/s; {total}")


if __name__ == "__main__":
    main()
