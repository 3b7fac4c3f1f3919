"""What the engine measures (model loads, session-cache lookups, jobs) and where the measurements go.

The engine imports no metrics backend: it calls :func:`observe`, and each process installs a sink with
:func:`set_sink` at start-up. The API's sink feeds prometheus-client (multiprocess files under gunicorn); a
worker's sink adds to a :class:`Tally` that it writes to Redis after each job, so ``/metrics`` on any API host
shows every worker's numbers, wherever the workers run. :data:`METRICS` is the one list of these metrics, read by
both sides; :func:`tally_field` and :func:`read_tally_field` are the shared encoding of a tally in a Redis hash.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from time import perf_counter

TIME_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)
"""Histogram bounds in seconds: from a warm predict to a long audit chunk."""


@dataclass(frozen=True)
class Metric:
    """One engine metric.

    Args:
        name: The Prometheus name without the ``onnxplain_`` prefix.
        help: Its HELP text.
        labels: Label names, in the order :func:`observe` gets their values.
        histogram: A histogram over :data:`TIME_BUCKETS` (else a counter incremented by the value).
    """

    name: str
    help: str
    labels: tuple[str, ...]
    histogram: bool


JOB_DURATION = Metric(
    "job_duration_seconds", "Run time of worker jobs by kind, method and outcome.", ("kind", "method", "outcome"), True
)
MODEL_LOAD = Metric("model_load_seconds", "Time to load an ONNX model into an onnxruntime session.", (), True)
SESSION_CACHE = Metric("session_cache", "Session-cache lookups by result (hit or miss).", ("result",), False)

METRICS = {m.name: m for m in (JOB_DURATION, MODEL_LOAD, SESSION_CACHE)}
"""Every engine metric by name."""

Sink = Callable[[Metric, tuple[str, ...], float], None]


def _discard(metric: Metric, labels: tuple[str, ...], value: float) -> None:
    """The sink until a process installs one: measurements go nowhere."""


_sink: Sink = _discard


def set_sink(sink: Sink | None) -> None:
    """Install the process's sink (``None``: discard)."""
    global _sink
    _sink = sink or _discard


def observe(metric: Metric, labels: tuple[str, ...], value: float) -> None:
    """Record ``value`` for ``metric`` with these label values (in ``metric.labels`` order)."""
    _sink(metric, labels, value)


@contextmanager
def timed(metric: Metric, labels: tuple[str, ...] = ()) -> Iterator[None]:
    """Observe the seconds the ``with`` block took (when it ends without an exception)."""
    start = perf_counter()
    yield
    observe(metric, labels, perf_counter() - start)


def bucket_index(value: float) -> int:
    """Return the first bucket of :data:`TIME_BUCKETS` that holds ``value`` (``len`` for +Inf)."""
    for i, bound in enumerate(TIME_BUCKETS):
        if value <= bound:
            return i
    return len(TIME_BUCKETS)


def tally_field(metric: Metric, labels: tuple[str, ...], part: str) -> str:
    """Return the hash field of one part of a metric series: ``sum``, ``count``, a bucket index, or ``value``."""
    return json.dumps([metric.name, list(labels), part], separators=(",", ":"))


def read_tally_field(field: str) -> tuple[Metric, tuple[str, ...], str] | None:
    """Decode :func:`tally_field`; ``None`` for a field this version does not know."""
    try:
        name, labels, part = json.loads(field)
        metric = METRICS[name]
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(labels, list) or len(labels) != len(metric.labels) or not isinstance(part, str):
        return None
    return metric, tuple(str(v) for v in labels), part


class Tally:
    """Increments gathered in memory between two writes to Redis (thread-safe).

    A histogram observation adds 1 to its bucket and ``count`` and the value to ``sum``; the reader makes the
    buckets cumulative. A counter adds the value to ``value``.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[str, float] = {}

    def __call__(self, metric: Metric, labels: tuple[str, ...], value: float) -> None:
        """Add one observation (the sink interface)."""
        if metric.histogram:
            parts = {"sum": value, "count": 1.0, str(bucket_index(value)): 1.0}
        else:
            parts = {"value": value}
        with self._lock:
            for part, amount in parts.items():
                field = tally_field(metric, labels, part)
                self._pending[field] = self._pending.get(field, 0.0) + amount

    def drain(self) -> dict[str, float]:
        """Return and forget the increments gathered so far."""
        with self._lock:
            pending, self._pending = self._pending, {}
        return pending

    def restore(self, pending: dict[str, float]) -> None:
        """Put back increments that could not be written, to be written with the next ones."""
        with self._lock:
            for field, amount in pending.items():
                self._pending[field] = self._pending.get(field, 0.0) + amount


TALLY_KEY = "onnxplain:metrics:tally"
"""The Redis hash of every worker's tallies (fields by :func:`tally_field`), summed by ``/metrics``."""
