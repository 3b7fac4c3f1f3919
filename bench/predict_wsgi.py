"""Where a ``:predict`` spends its API time, without gunicorn: the app's WSGI callable against the bare echo's.

Run from the repository root (about a minute)::

    .venv/bin/python bench/predict_wsgi.py [--quick] [--device cpu|cuda]

The model and service are ``bench/http_bench.py``'s (StandardScaler + MLPClassifier on 10 features, auth on, the
rate limit on a private Redis). Each request is a prebuilt WSGI environ (a fresh body stream each time) handed to
the Flask app's WSGI callable: no test client, no sockets, no gunicorn, so what is left is the app's own work per
request. ``bench/echo_app.py`` gets the same body. Medians of 3 runs of ``N`` requests, 1 and 64 rows.

Then it times each phase of a 1-row request (Flask's request context, each before/after hook, the
view's steps, the request log's parts) with a wrapper around each; the wrappers add about 1 µs each, and the
parts are measured in the flow of whole requests (a step alone in a tight loop runs 2-5× faster: its code and
data stay in the CPU's caches).

The request log goes to stderr as in production: send it to a file (``2>/tmp/log``), not a terminal.
"""

from __future__ import annotations

import collections
import functools
import io
import json
import logging
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

import benchlib
import http_bench

from bench.echo_app import create_app

PATH = "/v1/models/bench-http:predict"


def wsgi_runner(app: Any, path: str, body: bytes, headers: dict[str, str]) -> Callable[[int], float]:
    """A function that sends ``n`` requests to ``app``'s WSGI callable and returns the mean µs per request."""
    from werkzeug.test import EnvironBuilder

    base = EnvironBuilder(path=path, method="POST", data=body, headers=headers).get_environ()
    base["REMOTE_ADDR"] = "127.0.0.1"
    statuses: list[str] = []

    def start_response(status: str, response_headers: Any, exc_info: Any = None) -> None:
        statuses.append(status)

    def run(n: int) -> float:
        statuses.clear()
        started = time.perf_counter()
        for _ in range(n):
            environ = dict(base)
            environ["wsgi.input"] = io.BytesIO(body)
            out: Iterable[bytes] = app(environ, start_response)
            b"".join(out)
            getattr(out, "close", lambda: None)()
        elapsed = time.perf_counter() - started
        if any(not s.startswith("200") for s in statuses):
            raise RuntimeError(f"{path}: {collections.Counter(statuses)}")
        return elapsed / n * 1e6

    return run


def phases(app: Any, run: Callable[[int], float], n: int) -> None:
    """Print the time of each phase of a request, measured by wrappers in the flow of ``n`` whole requests."""
    import flask.ctx
    import onnxruntime

    import engine.logs
    import engine.serving
    import service.bodies
    import service.routes.models

    spent: collections.Counter[str] = collections.Counter()

    def timed(label: str, function: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                spent[label] += time.perf_counter() - started

        return wrapper

    targets: list[tuple[Any, str, str]] = [
        (flask.ctx.RequestContext, "push", "request context push"),
        (flask.ctx.RequestContext, "pop", "request context pop"),
        (app, "preprocess_request", "before-request hooks"),
        (app, "dispatch_request", "view"),
        (service.routes.models, "json_object", "  view: body (read, parse, check)"),
        (service.bodies, "read_json", "    read_json"),
        (service.routes.models, "runnable_model", "  view: model lookup (access, versions, meta, quarantine)"),
        (service.routes.models, "parse_inputs", "  view: rows"),
        (engine.serving.Predictor, "resolve", "  view: variant and session"),
        (engine.serving.Predictor, "predict", "  view: predict"),
        (onnxruntime.InferenceSession, "run", "    onnxruntime run"),
        (engine.serving, "format_predictions", "    format_predictions"),
        (service.routes.models, "jsonify", "  view: response JSON"),
        (app, "process_response", "after-request hooks"),
        (logging.Logger, "info", "  request log line"),
        (engine.logs.JsonFormatter, "format", "    its JSON"),
        (app, "do_teardown_request", "teardown"),
    ]
    for owner, name, label in targets:
        setattr(owner, name, timed(label, getattr(owner, name)))
    for hooks in app.before_request_funcs.values():
        hooks[:] = [timed(f"  before: {hook.__qualname__}", hook) for hook in hooks]
    for hooks in app.after_request_funcs.values():
        hooks[:] = [timed(f"  after: {hook.__qualname__}", hook) for hook in hooks]
    total = run(n)
    print(f"\nphases of a 1-row :predict, {n} requests, mean µs (wrappers included): whole request {total:.0f}")
    for label, seconds in spent.items():
        print(f"  {label:<60} {seconds / n * 1e6:7.1f}")


def main() -> None:
    """Register the model, time :predict and the echo as WSGI calls, print."""
    args = benchlib.arguments(__doc__)
    # benchlib's text handler would write every request's line a second time; the app installs its own JSON one.
    logging.getLogger().handlers.clear()
    n = 300 if args.quick else 3000
    onnx, card, background, X = http_bench.build()
    service = benchlib.Service(max_wait_s=120.0)
    try:
        http_bench.register(service, onnx, card, background)
        # The store keeps a listing only once its directory is 2 s old (engine.files.settled): as in a server
        # that has been up a while, not one that registered the model a moment ago.
        time.sleep(2.5)
        app, echo = service.client_of().application, create_app()
        headers = {**service.headers, "Content-Type": "application/json"}
        print(f"\n:predict and the bare echo as WSGI calls, mean µs a request, median of 3 × {n}")
        print(f"{'rows':>4}  {':predict':>9}  {'echo':>7}  {'difference':>10}")
        for rows in (1, 64):
            body = json.dumps({"instances": X[:rows].tolist()}).encode()
            ours, bare = wsgi_runner(app, PATH, body, headers), wsgi_runner(echo, "/echo", body, headers)
            ours(n // 10), bare(n // 10)  # warm: sessions, caches, the limiter's lease
            times = [(ours(n), bare(n)) for _ in range(3)]
            p, e = statistics.median(t[0] for t in times), statistics.median(t[1] for t in times)
            print(f"{rows:>4}  {p:>9.0f}  {e:>7.0f}  {p - e:>+10.0f}")
        body = json.dumps({"instances": X[:1].tolist()}).encode()
        phases(app, wsgi_runner(app, PATH, body, headers), n)
    finally:
        service.close()
    sys.stdout.flush()


if __name__ == "__main__":
    main()
