"""HTTP benchmark: sync ``:explain`` against the same work in process, and ``:predict`` against a bare Flask echo.

Run from the repository root (about two minutes on 2 cores; ``--quick``: about 30 s)::

    .venv/bin/python bench/http_bench.py [--quick] [--device cpu|cuda] [--profile]

One model is built in the run: StandardScaler + MLPClassifier (32,) on 10 features, binary, via skl2onnx (no
ZipMap), 100 background rows. The service runs as in production: a private ``redis-server``, one
``python -m worker``, the API under gunicorn with the repository's ``gunicorn.conf.py`` (2 processes × 8
threads), auth on (every request carries a key), requests over keep-alive HTTP/1.1 from this process.

* **sync explain**: ``POST :explain`` (``kernel_shap``, a new seed per request so the result cache never
  answers) against ``run_explanation`` on the same payload in this process (the worker's job function without
  RQ), interleaved request by request. The breakdown comes from RQ's own timestamps of each job (one clock,
  one host): API before the enqueue (body read, auth, plan), queue wait (enqueue to the worker's start), the
  job itself, and the rest (result store, the API's wake-up, the response's JSON and transfer).
* **predict**: requests/s of ``POST :predict`` at 1 and 64 rows from ``CLIENTS`` threads against ``POST /echo``
  of ``bench/echo_app.py`` (parses the same JSON body and sends it back) under the same gunicorn settings,
  interleaved in rounds; the median round is shown.
* ``--profile``: cProfile of the API side of ``:predict`` and ``:explain`` (Flask test client, in process), the
  functions with the most cumulative time.
"""

from __future__ import annotations

import cProfile
import http.client
import io
import json
import os
import platform
import pstats
import statistics
import threading
import time
import warnings
from datetime import date
from importlib.metadata import version
from typing import Any
from urllib.parse import urlsplit

# One BLAS thread in this process, as every worker runs (worker/__init__.py): the in-process baseline is the
# worker's job function run here. The processes the bench starts get the environment they get in production.
_SERVED_BLAS = os.environ.get("OPENBLAS_NUM_THREADS")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import benchlib  # noqa: E402
import numpy as np  # noqa: E402

from engine.arrays import FloatArray  # noqa: E402

CLIENTS = 8
FEATURES = [f"x{i}" for i in range(10)]


def build() -> tuple[bytes, dict[str, Any], FloatArray, FloatArray]:
    """The ONNX model, its card, background rows and rows to explain or predict."""
    from skl2onnx import to_onnx
    from sklearn.datasets import make_classification
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = make_classification(n_samples=1000, n_features=10, n_informative=6, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = make_pipeline(StandardScaler(), MLPClassifier((32,), max_iter=300, random_state=0)).fit(X, y)
    onx = to_onnx(model, X[:1].astype(np.float32), options={id(model): {"zipmap": False}}, target_opset=17)
    card = {"name": "bench-http", "task": "classification", "features": FEATURES, "class_names": ["no", "yes"]}
    return onx.SerializeToString(), card, X[:100], X[100:400]


def register(service: benchlib.Service, onnx: bytes, card: dict[str, Any], background: FloatArray) -> None:
    """Register the bench model in ``service``'s store through the API (in this process), shared with every
    tenant (the auth-off server's caller is another tenant)."""
    frame = "\n".join([",".join(FEATURES)] + [",".join(map(repr, r)) for r in background.tolist()])
    data = {"model": (io.BytesIO(onnx), "m.onnx"), "card": json.dumps(card), "visibility": "shared"}
    data["background"] = (io.BytesIO(frame.encode()), "b.csv")
    answer = service.client_of().post("/v1/models", data=data, content_type="multipart/form-data")
    assert answer.status_code == 201, answer.get_data(as_text=True)


class Http:
    """One keep-alive HTTP/1.1 connection; ``post`` returns status and body."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        parts = urlsplit(url)
        self.conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=120)
        self.headers = {**headers, "Content-Type": "application/json"}
        self.job_id = ""

    def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        """Post ``body``; the response's ``X-Job-Id`` is kept in ``job_id``."""
        self.conn.request("POST", path, body=body, headers=self.headers)
        response = self.conn.getresponse()
        self.job_id = response.getheader("X-Job-Id") or ""
        return response.status, response.read()

    def close(self) -> None:
        self.conn.close()


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def sync_explain(service: benchlib.Service, url: str, X: FloatArray, rows: int, count: int) -> dict[str, Any]:
    """Time ``count`` sync explains over HTTP and the same payloads in process, interleaved."""
    from redis import Redis
    from rq.job import Job
    from rq.serializers import JSONSerializer

    from engine.explain.plan import ExplainRequest
    from engine.explain.run import run_explanation
    from engine.models.store import ModelRegistry
    from engine.serving import Predictor

    registry = ModelRegistry(service.settings)
    predictor = Predictor(service.settings, registry)
    redis = Redis.from_url(service.settings.redis_url)
    conn = Http(url, service.headers)
    phases: dict[str, list[float]] = {
        k: [] for k in ("http", "inproc", "api", "queue", "job", "rest", "overhead", "bytes")
    }
    for i in range(count + 2):  # the first two warm the worker, the API process and this one
        instances = np.take(X, np.arange(i * rows, (i + 1) * rows), axis=0, mode="wrap").tolist()
        body = {"instances": instances, "method": "kernel_shap", "wait": 60}
        body["parameters"] = {"nsamples": 2048, "seed": i}
        payload = json.dumps(body).encode()
        started = time.time()
        status, answer = conn.post("/v1/models/bench-http:explain", payload)
        ended = time.time()
        assert status == 200, answer[:300]
        job = Job.fetch(conn.job_id, connection=redis, serializer=JSONSerializer)
        request = ExplainRequest.from_payload(job.args[0])
        t0 = time.perf_counter()
        run_explanation(request, registry, predictor).to_json()
        inproc = time.perf_counter() - t0
        if i < 2:
            continue
        assert job.created_at and job.enqueued_at and job.started_at and job.ended_at
        phases["http"].append(ended - started)
        phases["inproc"].append(inproc)
        phases["api"].append(job.created_at.timestamp() - started)
        phases["queue"].append((job.started_at - job.enqueued_at).total_seconds())
        phases["job"].append((job.ended_at - job.started_at).total_seconds())
        phases["rest"].append(ended - job.ended_at.timestamp())
        phases["overhead"].append((ended - started) - (job.ended_at - job.started_at).total_seconds())
        phases["bytes"].append(len(answer))
    conn.close()
    redis.close()
    return phases


def throughput(url: str, path: str, body: bytes, headers: dict[str, str], seconds: float) -> float:
    """Requests per second of ``CLIENTS`` threads posting ``body`` to ``path`` for ``seconds``."""
    counts = [0] * CLIENTS
    stop = time.perf_counter() + seconds
    errors: list[str] = []

    def client(slot: int) -> None:
        conn = Http(url, headers)
        try:
            while time.perf_counter() < stop:
                status, answer = conn.post(path, body)
                if status != 200:
                    errors.append(f"{status} {answer[:200]!r}")
                    return
                counts[slot] += 1
        finally:
            conn.close()

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise RuntimeError(errors[0])
    return sum(counts) / (time.perf_counter() - started)


def served_round(
    service: benchlib.Service, url: str, path: str, body: bytes, headers: dict[str, str], seconds: float
) -> tuple[float, float | None]:
    """One :func:`throughput` round: requests/s, and the CPU µs its gunicorn workers spent per request."""
    before = benchlib.workers_cpu(service.masters[url])
    started = time.perf_counter()
    rate = throughput(url, path, body, headers, seconds)
    answered = rate * (time.perf_counter() - started)
    after = benchlib.workers_cpu(service.masters[url])
    cpu = None if before is None or after is None or not answered else (after - before) / answered * 1e6
    return rate, cpu


def profile(service: benchlib.Service, X: FloatArray) -> None:
    """Print where the API's time goes for ``:predict`` and a sync ``:explain`` (cProfile, in process)."""
    client = service.client_of()
    for label, path, count, make in (
        (":predict 64 rows", "/v1/models/bench-http:predict", 300, lambda i: {"instances": X[:64].tolist()}),
        (
            ":explain 1 row (API side, waits included)",
            "/v1/models/bench-http:explain",
            30,
            lambda i: {"instances": X[:1].tolist(), "parameters": {"seed": 10_000 + i}, "wait": 60},
        ),
    ):
        client.post(path, json=make(-1))
        profiler = cProfile.Profile()
        profiler.enable()
        for i in range(count):
            assert client.post(path, json=make(i)).status_code == 200
        profiler.disable()
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(25)
        print(f"\nprofile of {count} × {label}:")
        print("\n".join(line for line in out.getvalue().splitlines()[6:] if line.strip()))


def main() -> None:
    """Start the service and the echo app, measure, print."""
    args = benchlib.arguments(__doc__, profile="cProfile of the API side of :predict and :explain")
    count, rounds, seconds = (4, 1, 0.5) if args.quick else (60, 5, 3.0)
    started = time.perf_counter()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print("versions: " + ", ".join(f"{p} {version(p)}" for p in ("flask", "gunicorn", "rq", "redis", "onnxruntime")))
    print("load average at start: " + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    onnx, card, background, X = build()
    service = benchlib.Service(max_wait_s=120.0)
    if _SERVED_BLAS is None:
        service.env.pop("OPENBLAS_NUM_THREADS", None)
    try:
        register(service, onnx, card, background)
        service.start_workers(1)
        api = service.start_gunicorn()
        echo = service.start_gunicorn("bench.echo_app:create_app()")
        # The same API with its guards taken off one by one: what each costs a :predict.
        unlimited = service.start_gunicorn(ONNXPLAIN_RATE_LIMIT="")
        open_api = service.start_gunicorn(ONNXPLAIN_RATE_LIMIT="", ONNXPLAIN_AUTH="off")

        print(f"\nsync explain: kernel_shap nsamples 2048 (every coalition of 10 features), 100 background rows, "
              f"{count} requests, a new seed each; ms")  # fmt: skip
        head = ["rows", "HTTP p50", "HTTP p99", "in-process p50", "HTTP−in-process", "HTTP−job", "api", "queue", "job"]
        head += ["rest"]
        table = []
        for rows in (1, 20):
            p = sync_explain(service, api, X, rows, count)
            ms = {k: [v * 1e3 for v in vals] for k, vals in p.items() if k != "bytes"}
            med = {k: statistics.median(v) for k, v in ms.items()}
            table.append([str(rows), f"{med['http']:.1f}", f"{percentile(ms['http'], 99):.1f}", f"{med['inproc']:.1f}",
                          f"{med['http'] - med['inproc']:+.1f}", f"{med['overhead']:+.1f}", f"{med['api']:.1f}",
                          f"{med['queue']:.1f}", f"{med['job']:.1f}", f"{med['rest']:.1f}"])  # fmt: skip
        print_table(head, table)
        print("api: request sent → job created (body, auth, plan); queue: enqueued → worker started;")
        print("job: worker started → ended; rest: ended → response read (result store, wake-up, JSON, transfer);")
        print("HTTP−job: what the service adds to the worker's own job time, request by request (api + queue + rest)")

        print(f"\npredict: requests/s, {CLIENTS} keep-alive clients, gunicorn.conf.py (2 processes × 8 threads), "
              f"median of {rounds} rounds of {seconds:g} s")  # fmt: skip
        table = []
        path = "/v1/models/bench-http:predict"
        for rows in (1, 64):
            body = json.dumps({"instances": X[:rows].tolist()}).encode()
            served = {"echo": (echo, "/echo"), "api": (api, path), "no limit": (unlimited, path)}
            served["no auth"] = (open_api, path)
            runs: dict[str, list[float]] = {name: [] for name in served}
            cpu: dict[str, list[float]] = {name: [] for name in served}
            for _ in range(rounds):
                for name, (url, route) in served.items():
                    rate, spent = served_round(service, url, route, body, service.headers, seconds)
                    runs[name].append(rate)
                    cpu[name] += [] if spent is None else [spent]
            m = {k: statistics.median(v) for k, v in runs.items()}
            c = {k: f"{statistics.median(v):,.0f}" if v else "—" for k, v in cpu.items()}
            e = m["echo"]
            table.append([str(rows), f"{m['api']:,.0f}", f"{e:,.0f}", f"{m['api'] / e:.2f}",
                          f"{m['no limit'] / e:.2f}", f"{m['no auth'] / e:.2f}", c["api"], c["echo"]])  # fmt: skip
        head = ["rows", ":predict req/s", "bare echo req/s", "ratio", "no limit", "no limit, no auth"]
        print_table([*head, ":predict CPU µs", "echo CPU µs"], table)
        print("ratio: :predict / echo as served (auth and the rate limit on); no limit: ONNXPLAIN_RATE_LIMIT='';")
        print("no limit, no auth: and ONNXPLAIN_AUTH=off (request log, metrics and the model lookup remain)")
        print("CPU µs: user + system CPU of the gunicorn workers per request answered (median round; Linux /proc)")
        if args.profile:
            profile(service, X)
    finally:
        service.close()
    print(
        f"\n{date.today()}; load average at end {os.getloadavg()[0]:.2f}; total {time.perf_counter() - started:.0f} s"
    )


def print_table(head: list[str], table: list[list[str]]) -> None:
    """Print rows under a header, numbers right-aligned."""
    widths = [max(len(r[i]) for r in [head, *table]) for i in range(len(head))]
    for row in [head, ["-" * w for w in widths], *table]:
        print("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))


if __name__ == "__main__":
    main()
