"""Two revisions of the service side by side: what a change does to a sync explain's HTTP time and throughput.

Run from the repository root (about six minutes on 2 cores; ``--quick``: under a minute)::

    .venv/bin/python bench/http_ab.py [REV] [--runs 4] [--requests 400] [--rounds 6] [--quick] [--device cpu|cuda]
    .venv/bin/python bench/http_ab.py [REV] --predict [--rounds 6]      # :predict throughput instead (2 minutes)

Side A serves ``REV`` (a commit, branch or tag, default ``HEAD``, checked out in a temporary ``git worktree``),
side B this working tree: with no ``REV``, what the uncommitted change does. Each side is a whole service of
its own, as ``bench/http_bench.py`` starts one: a private ``redis-server``, one ``python -m worker`` and the
API under the repository's ``gunicorn.conf.py``, both from that side's tree (this process's interpreter and
packages), with the same 10-feature MLP registered.

* **latency**: 1-row sync ``:explain`` requests (``kernel_shap`` on 64 coalitions, a 3 ms job, so the
  service's own share dominates; a new seed each, so the result cache never answers) alternated between the
  sides 10 ms apart. Per run, the medians of HTTP time, of what the service adds to the worker's job
  (``HTTP−job``) and of RQ's phases (as ``bench/http_bench.py`` names them). The sides are started again for
  each run, in the other order every other run: the side started second reads 0.1-0.4 ms faster whatever it
  serves, so only the mean over an even number of runs compares.
* **throughput**: ``CLIENTS`` keep-alive clients sending the same sync explains as fast as answered, one
  worker per side, in rounds of 3 s alternated between the sides; the median round of each.

With ``--predict`` it measures ``:predict`` instead: requests/s of ``CLIENTS`` keep-alive clients posting one
row (and then 64) to each side and to ``bench/echo_app.py`` under the same gunicorn settings, in rounds of 3 s
rotated between the three (as ``bench/http_bench.py``'s predict table, whose target is a ratio to the echo);
the median round of each and each side's ratio to the echo.

A difference smaller than the spread of B − A over the runs is noise on a 2-core host.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import benchlib  # noqa: E402
import http_bench  # noqa: E402

from engine.arrays import FloatArray  # noqa: E402

CLIENTS = 8
PHASES = ("http", "over", "api", "queue", "job", "rest")
LABELS = {"over": "HTTP−job"}


class Side:
    """One revision's service: its tree, Redis, worker, gunicorn and a keep-alive connection to it."""

    def __init__(self, tree: Path, model: tuple[bytes, dict[str, Any], FloatArray], workers: int = 1) -> None:
        from redis import Redis

        benchlib.ROOT = tree  # Service takes its PYTHONPATH, working directory and gunicorn.conf.py from here
        self.service = benchlib.Service(max_wait_s=120.0)
        # Every client of the throughput rounds waits on its job: more waiters than the default 4 a process.
        self.service.env["ONNXPLAIN_MAX_WAITING_REQUESTS"] = str(2 * CLIENTS)
        onnx, card, background = model
        http_bench.register(self.service, onnx, card, background)
        self.service.start_workers(workers)
        self.url = self.service.start_gunicorn()
        self.conn = http_bench.Http(self.url, self.service.headers)
        self.redis = Redis.from_url(self.service.settings.redis_url)

    def close(self) -> None:
        """Stop everything this side started."""
        self.conn.close()
        self.redis.close()
        self.service.close()


def body(X: FloatArray, i: int) -> bytes:
    """The ``i``-th request: one row and a seed of its own."""
    payload = {"instances": [X[i % len(X)].tolist()], "method": "kernel_shap", "wait": 60}
    payload["parameters"] = {"nsamples": 64, "seed": i}
    return json.dumps(payload).encode()


def timed(side: Side, X: FloatArray, i: int) -> dict[str, float]:
    """One sync explain on ``side``: its HTTP time and RQ's phases of its job, seconds."""
    from rq.job import Job

    from engine.jobs import JobSerializer

    started = time.time()
    status, answer = side.conn.post("/v1/models/bench-http:explain", body(X, i))
    ended = time.time()
    assert status == 200, answer[:300]
    job = Job.fetch(side.conn.job_id, connection=side.redis, serializer=JobSerializer)
    assert job.created_at and job.enqueued_at and job.started_at and job.ended_at
    run = (job.ended_at - job.started_at).total_seconds()
    return {
        "http": ended - started,
        "over": ended - started - run,
        "api": job.created_at.timestamp() - started,
        "queue": (job.started_at - job.enqueued_at).total_seconds(),
        "job": run,
        "rest": ended - job.ended_at.timestamp(),
    }


def latency_run(sides: dict[str, Side], X: FloatArray, requests: int) -> dict[str, dict[str, float]]:
    """Medians (ms) of each phase per side over ``requests`` alternated requests, after 20 to warm up."""
    seen: dict[str, list[dict[str, float]]] = {name: [] for name in sides}
    for i in range(requests + 20):
        for name in ("A", "B"):
            phases = timed(sides[name], X, i)
            if i >= 20:
                seen[name].append(phases)
            time.sleep(0.01)
    return {name: {p: statistics.median(r[p] for r in rows) * 1e3 for p in PHASES} for name, rows in seen.items()}


def throughput(side: Side, X: FloatArray, seconds: float, first: int) -> float:
    """Sync explains answered per second to ``CLIENTS`` keep-alive clients over ``seconds``."""
    done = [0] * CLIENTS
    stop = time.monotonic() + seconds

    def client(k: int) -> None:
        conn = http_bench.Http(side.url, side.service.headers)
        i = first + k * 1_000_000
        while time.monotonic() < stop:
            status, answer = conn.post("/v1/models/bench-http:explain", body(X, i))
            assert status == 200, answer[:300]
            done[k] += 1
            i += 1
        conn.close()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(done) / seconds


def predict_rounds(trees: dict[str, Path], model: tuple[bytes, dict[str, Any], FloatArray], X: FloatArray,
                   rounds: int, seconds: float) -> None:  # fmt: skip
    """Print ``:predict`` requests/s of both sides and of the bare echo, 1 and 64 rows, and each side's ratio."""
    root = benchlib.ROOT
    sides: dict[str, Side] = {}
    try:
        for name in ("A", "B"):
            sides[name] = Side(trees[name], model, workers=0)
        benchlib.ROOT = root
        urls = {**{name: side.url for name, side in sides.items()}, "echo": sides["B"].service.start_gunicorn(ECHO)}
        headers = {name: sides[name if name in sides else "B"].service.headers for name in urls}
        print(f"\n:predict: requests/s, {CLIENTS} keep-alive clients, {rounds} rounds of {seconds:g} s rotated")
        for rows in (1, 64):
            payload = json.dumps({"instances": X[:rows].tolist()}).encode()
            rates: dict[str, list[float]] = {name: [] for name in urls}
            for name, url in urls.items():  # a short round each to warm up, not counted
                http_bench.throughput(url, _path(name), payload, headers[name], min(seconds, 1.0))
            for r in range(rounds):
                order = list(urls)[r % 3 :] + list(urls)[: r % 3]
                for name in order:
                    rates[name].append(http_bench.throughput(urls[name], _path(name), payload, headers[name], seconds))
            med = {name: statistics.median(v) for name, v in rates.items()}
            for name, values in rates.items():
                ratio = f", ÷echo {med[name] / med['echo']:.3f}" if name != "echo" else ""
                print(
                    f"  {rows:>2} rows {name:>4}: "
                    + " ".join(f"{v:,.0f}" for v in values)
                    + f"; median {med[name]:,.0f}{ratio}"
                )
            print(f"  {rows:>2} rows B/A {med['B'] / med['A']:.3f}")
    finally:
        for side in sides.values():
            side.close()
        benchlib.ROOT = root


ECHO = "bench.echo_app:create_app()"


def _path(name: str) -> str:
    return "/echo" if name == "echo" else "/v1/models/bench-http:predict"


def worktree(rev: str) -> Path:
    """Check ``rev`` out in a temporary ``git worktree`` (removed by :func:`drop_worktree`)."""
    path = Path(tempfile.mkdtemp(prefix="onnxplain-ab-")) / "tree"
    subprocess.run(["git", "worktree", "add", "--detach", str(path), rev], cwd=benchlib.ROOT, check=True)
    return path


def drop_worktree(path: Path, root: Path) -> None:
    """Remove the worktree made by :func:`worktree`."""
    subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=root, check=False)
    shutil.rmtree(path.parent, ignore_errors=True)


def main() -> None:
    """Serve both sides, measure, print."""
    args = benchlib.arguments(__doc__, parse=arguments)
    runs, requests, rounds, seconds = (2, 10, 2, 0.5) if args.quick else (args.runs, args.requests, args.rounds, 3.0)
    root = benchlib.ROOT
    onnx, card, background, X = http_bench.build()
    tree = worktree(args.rev)
    trees = {"A": tree, "B": root}
    rev = subprocess.run(["git", "rev-parse", "--short", args.rev], cwd=root, capture_output=True, text=True)
    what = f"{rounds} rounds a side" if args.predict else f"{runs} runs of {requests} requests a side"
    print(f"A: {args.rev} ({rev.stdout.strip()}), B: the working tree; {what}")
    started = time.perf_counter()
    diffs: dict[str, list[float]] = {p: [] for p in PHASES}
    if args.predict:
        try:
            predict_rounds(trees, (onnx, card, background), X, rounds, seconds)
        finally:
            drop_worktree(tree, root)
        print(f"\ntotal {time.perf_counter() - started:.0f} s")
        return
    try:
        print("\nlatency: 1-row sync explain, kernel_shap 64 coalitions, medians in ms")
        head = "run  first  " + "  ".join(f"{LABELS.get(p, p):>8} A {'B':>6} {'B−A':>6}" for p in PHASES)
        print(head)
        for run in range(runs):
            order = ("A", "B") if run % 2 == 0 else ("B", "A")
            sides: dict[str, Side] = {}
            try:
                for name in order:
                    sides[name] = Side(trees[name], (onnx, card, background))
                med = latency_run(sides, X, requests)
            finally:
                for side in sides.values():
                    side.close()
                benchlib.ROOT = root
            cells = []
            for p in PHASES:
                diffs[p].append(med["B"][p] - med["A"][p])
                cells.append(f"{med['A'][p]:10.2f} {med['B'][p]:6.2f} {diffs[p][-1]:+6.2f}")
            print(f"{run:3d}  {order[0]:>5}  " + "  ".join(cells), flush=True)
        print("mean B−A   " + "  ".join(f"{LABELS.get(p, p)} {statistics.mean(diffs[p]):+.2f}" for p in PHASES))
        print(
            "range B−A  " + "  ".join(f"{LABELS.get(p, p)} {min(diffs[p]):+.2f}..{max(diffs[p]):+.2f}" for p in PHASES)
        )

        print(
            f"\nthroughput: {CLIENTS} clients of these sync explains, a worker a side, {rounds} rounds of {seconds:g} s"
        )
        sides = {}
        try:
            for name in ("A", "B"):
                sides[name] = Side(trees[name], (onnx, card, background))
            benchlib.ROOT = root
            rates: dict[str, list[float]] = {"A": [], "B": []}
            for name in ("A", "B"):
                throughput(sides[name], X, seconds, 10**8)  # a round each to warm up, not counted
            for r in range(rounds):
                for name in ("A", "B") if r % 2 == 0 else ("B", "A"):
                    rates[name].append(throughput(sides[name], X, seconds, r * 10**6))
        finally:
            for side in sides.values():
                side.close()
            benchlib.ROOT = root
        for name in ("A", "B"):
            print(
                f"  {name}: "
                + " ".join(f"{v:.0f}" for v in rates[name])
                + f" jobs/s, median {statistics.median(rates[name]):.0f}"
            )
        print(f"  B/A {statistics.median(rates['B']) / statistics.median(rates['A']):.3f}")
    finally:
        drop_worktree(tree, root)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


def arguments(parser: argparse.ArgumentParser) -> None:
    """This script's own switches."""
    parser.add_argument(
        "rev", nargs="?", default="HEAD", help="the revision side A serves (default HEAD; B: the working tree)"
    )
    parser.add_argument("--runs", type=int, default=4, help="latency runs, the sides restarted for each (default 4)")
    parser.add_argument("--requests", type=int, default=400, help="requests a side in each run (default 400)")
    parser.add_argument("--rounds", type=int, default=6, help="throughput rounds a side (default 6)")
    parser.add_argument("--predict", action="store_true", help=":predict throughput against the bare echo instead")


if __name__ == "__main__":
    main()
