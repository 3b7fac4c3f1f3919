"""Prometheus metrics (``/metrics``), in the text exposition format.

Three sources, merged into one family per name:

- this API host's processes: request counts and latencies, variant and audit submissions, and the engine's
  measurements taken while predicting (``role="api"``). Under gunicorn every process writes to
  ``PROMETHEUS_MULTIPROC_DIR`` and any one of them sums all the files; otherwise the process's own registry.
- the workers, wherever they run: job durations by kind, method and outcome, and their model loads and
  session-cache lookups (``role="worker"``), added up in Redis after each job (:mod:`worker.observe`).
- Redis at scrape time: depth and oldest job's age per queue, live workers per queue, ``onnxplain_redis_up``.

The Redis reads use the probe connection (``ONNXPLAIN_METRICS_REDIS_TIMEOUT_S``, 0.5 s): when Redis stalls the
scrape still answers, without those families, with ``onnxplain_redis_up 0``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import Any

from flask import Blueprint, Response
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from redis.exceptions import RedisError

from engine.errors import Unavailable
from engine.telemetry import JOB_DURATION, TIME_BUCKETS, read_tally_field
from service.extensions import services
from service.gateways.queues import queue_states, worker_tallies

bp = Blueprint("metrics", __name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get("prometheus_multiproc_dir")


def _tally_families(tallies: dict[str, float]) -> list[Metric]:
    """Turn the workers' summed tallies into histogram and counter families (``role="worker"`` but for jobs)."""
    series: dict[tuple[str, tuple[str, ...]], dict[str, float]] = {}
    kinds: dict[str, Any] = {}
    for field, amount in tallies.items():
        decoded = read_tally_field(field)
        if decoded is None:
            continue
        metric, labels, part = decoded
        kinds[metric.name] = metric
        series.setdefault((metric.name, labels), {})[part] = amount
    families: dict[str, Metric] = {}
    for (name, labels), parts in sorted(series.items()):
        metric = kinds[name]
        role = () if metric is JOB_DURATION else ("worker",)
        names = list(metric.labels) if metric is JOB_DURATION else ["role", *metric.labels]
        values = [*role, *labels]
        full = f"onnxplain_{name}"
        if metric.histogram:
            family = families.setdefault(full, HistogramMetricFamily(full, metric.help, labels=names))
            running, buckets = 0.0, []
            for i, bound in enumerate((*TIME_BUCKETS, float("inf"))):
                running += parts.get(str(i), 0.0)
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), running))
            assert isinstance(family, HistogramMetricFamily)
            family.add_metric(values, buckets, parts.get("sum", 0.0))
        else:
            family = families.setdefault(full, CounterMetricFamily(full, metric.help, labels=names))
            assert isinstance(family, CounterMetricFamily)
            family.add_metric(values, parts.get("value", 0.0))
    return list(families.values())


def _redis_families() -> list[Metric]:
    """Queue depths and ages, live workers and the workers' tallies; ``onnxplain_redis_up 0`` when unreachable."""
    up = GaugeMetricFamily("onnxplain_redis_up", "1 when /metrics could read Redis at this scrape, else 0.")
    try:
        svc = services()
        connection = svc.probe_redis()
        states = queue_states(connection, worker_ttl_s=svc.settings.worker_ttl_s)
        tallies = worker_tallies(connection)
    except (RedisError, Unavailable, OSError):
        up.add_metric([], 0)
        return [up]
    up.add_metric([], 1)
    depth = GaugeMetricFamily("onnxplain_queue_depth", "Jobs waiting per queue.", labels=["queue"])
    age = GaugeMetricFamily(
        "onnxplain_queue_oldest_job_age_seconds",
        "Seconds the oldest waiting job has waited (0: none).",
        labels=["queue"],
    )
    workers = GaugeMetricFamily("onnxplain_workers_live", "Live workers listening per queue.", labels=["queue"])
    for state in states:
        depth.add_metric([state.name], state.depth)
        age.add_metric([state.name], state.oldest_age_s)
        workers.add_metric([state.name], state.live_workers)
    return [up, depth, age, workers, *_tally_families(tallies)]


class _Scrape:
    """A registry-like object whose ``collect`` merges families of the same name from every source."""

    def __init__(self, sources: Iterable[Iterable[Metric]]) -> None:
        self.sources = sources

    def collect(self) -> Iterator[Metric]:
        merged: dict[str, Metric] = {}
        for source in self.sources:
            for family in source:
                if family.name in merged:
                    merged[family.name].samples.extend(family.samples)
                else:
                    merged[family.name] = family
        yield from merged.values()


@bp.get("/metrics")
def metrics() -> Response:
    """Answer the Prometheus text format: this host's API metrics, the workers' (via Redis), queue states."""
    path = _multiprocess_dir()
    if path:
        local = CollectorRegistry()
        MultiProcessCollector(local, path=path)  # type: ignore[no-untyped-call]
        own: Iterable[Metric] = local.collect()
    else:
        own = REGISTRY.collect()
    body = generate_latest(_Scrape([own, _redis_families()]))
    return Response(body, content_type=CONTENT_TYPE)
