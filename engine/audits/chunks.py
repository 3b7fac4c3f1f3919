"""The work of an audit: explain one chunk of rows, then merge the chunks into rows, summary and report.

Both run in workers, on an :class:`~engine.audits.store.Audit` in the shared store. A chunk explains its rows
through :func:`engine.explain.run.run_explanation` (in slices of ``max_explain_rows``, reporting progress between
them) and writes one file, so a retried chunk replaces its earlier attempt. The merge turns a chunk without a file
into rows marked ``failed`` with the chunk's error code, so every dataset row appears exactly once. Example::

    explain_chunk(audit, 0, 500, registry, predictor)
    state = finish_audit(audit, failures={})
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from engine.audits.compression import compare_variants, explain_variants, write_variant_chunks
from engine.audits.fairness import FairnessThresholds
from engine.audits.recourse import audit_recourse
from engine.audits.spec import AuditSpec
from engine.audits.store import Audit
from engine.audits.summary import Task, merge_chunks, summarize
from engine.errors import InvalidRequest
from engine.explain.result import Explanation
from engine.explain.run import run_explanation
from engine.jobs import CHUNK_LOST, JobError, job_error
from engine.models.rows import frame_to_matrix
from engine.models.store import ModelRegistry
from engine.serving import Predictor
from engine.timestamps import utc_now


def explain_chunk(
    audit: Audit,
    start: int,
    stop: int,
    registry: ModelRegistry,
    predictor: Predictor,
    *,
    should_stop: Callable[[], bool] = lambda: False,
    on_progress: Callable[[int], None] = lambda done: None,
) -> int:
    """Explain dataset rows ``start..stop-1`` and store their per-row table.

    Args:
        audit: The stored audit.
        start: First row (position in the validated dataset).
        stop: One past the last row.
        registry: The model store.
        predictor: Warm sessions of this process.
        should_stop: Polled between model evaluations; ``True`` cancels.
        on_progress: Called with the rows of this chunk explained so far.

    Returns:
        The number of rows explained.

    Raises:
        JobCanceled: ``should_stop`` said so.
        InvalidRequest, ExplanationFailed: From the method or the model.
    """
    spec = audit.spec
    if spec.input_kind != "tabular":
        from engine.audits.perception import explain_perception_chunk

        return explain_perception_chunk(
            audit, start, stop, registry, predictor, should_stop=should_stop, on_progress=on_progress
        )
    frame = audit.read_dataset(start, stop)
    model = registry.get(spec.request["model"], int(spec.request["version"]))
    values = frame[[f"value.{f}" for f in spec.features]].set_axis(spec.features, axis=1)
    X = frame_to_matrix(values, model.card, where="dataset")
    step = max(1, predictor.settings.max_explain_rows)
    parts, meta = [], {}
    studied: dict[str, list[pd.DataFrame]] = {}  # the compression study's variants, explained alike
    for lo in range(0, len(X), step):
        rows = X[lo : lo + step].tolist()
        result = run_explanation(spec.explain_request(rows), registry, predictor, should_stop=should_stop)
        if not isinstance(result, Explanation):  # audits are of tabular models only (refused at submission)
            raise InvalidRequest("audits explain tabular models only", code="method_not_applicable", field="model")
        parts.append(_results(result, frame.iloc[lo : lo + step], start + lo, spec))
        variants = explain_variants(
            audit,
            rows,
            frame.iloc[lo : lo + step],
            start + lo,
            result,
            registry,
            predictor,
            lambda r, f, first: _results(r, f, first, spec),
            should_stop=should_stop,
        )
        for kind, table in variants.items():
            studied.setdefault(kind, []).append(table)
        meta = result.header()
        on_progress(min(lo + step, len(X)))
    # The variants' files first: the fp32 chunk file marks the chunk done, so it must come last.
    write_variant_chunks(audit, start, {kind: pd.concat(p, ignore_index=True) for kind, p in studied.items()})
    audit.write_chunk(start, pd.concat(parts, ignore_index=True), meta)
    return len(X)


def finish_audit(
    audit: Audit,
    failures: Mapping[int, JobError],
    *,
    worker: str = "",
    registry: ModelRegistry | None = None,
    predictor: Predictor | None = None,
) -> dict[str, Any]:
    """Merge every chunk, summarise, render the report and store them; return the final state.

    Args:
        audit: The stored audit.
        failures: Per chunk start, the error of a chunk that ended without results.
        worker: Name of the process merging, for the provenance.
        registry, predictor: The model store and warm sessions, for recourse (when the spec asks for it).

    Returns:
        ``{"state": "succeeded"|"failed", "ended_at", "failed_rows", "failed_chunks", ["error"]}``, also stored.

    Raises:
        ExplanationFailed: ``rows_missing`` or ``rows_unexpected`` if the chunks do not cover the dataset.
    """
    spec, info = audit.spec, audit.info
    frames, metas, failed_chunks = [], [], []
    errors: list[JobError] = []
    for start, stop in audit.chunks:
        found = audit.read_chunk(start)
        if found is not None:
            frames.append(found[0])
            metas.append(found[1])
            continue
        error = failures.get(start) or job_error(CHUNK_LOST, message="the chunk left no results")
        frames.append(_failed(audit.read_dataset(start, stop), start, spec, error.code))
        failed_chunks.append({"start": start, "stop": stop, "code": error.code, "message": error.message})
        errors.append(error)
    rows = merge_chunks(frames, expected_rows=int(info["rows"]["total"]))
    # Chunks number rows by position; users see the row numbers of their upload (bad rows skipped leave gaps).
    rows["row"] = audit.read_dataset()["row"].to_numpy()[rows["row"].to_numpy(dtype=np.int64)]
    ok = (rows["status"] == "ok").to_numpy(bool)
    state: dict[str, Any] = {"ended_at": utc_now(), "failed_rows": int((~ok).sum()), "failed_chunks": failed_chunks}
    if not ok.any():
        # The first chunk's whole record (with its error class), so the API answers its status.
        first = (
            errors[0] if errors else JobError("no_rows", "no row was explained", "Audit failed", "ExplanationFailed")
        )
        audit.write_outputs(rows, None, None)
        state |= {"state": "failed", "error": first.to_dict()}
        audit.set_state(state)
        return state
    summary = summarize(
        rows[ok],
        features=spec.features,
        task=_task(spec),
        positive=spec.positive,
        sensitive=spec.sensitive,
        thresholds=FairnessThresholds(**spec.thresholds),
    )
    if spec.compression:
        summary["compression"] = compare_variants(audit, rows[ok], summary)
    summary |= {
        "uploaded_rows": int(info["rows"]["uploaded"]),
        "skipped_rows": int(info["rows"]["skipped"]),
        "bad_cells": int(info["rows"]["bad_cells"]),
        "failed_rows": state["failed_rows"],
        "failed_chunks": failed_chunks,
    }
    if spec.recourse is not None and registry is not None and predictor is not None:
        summary["recourse"] = audit_recourse(
            spec.recourse,
            rows[ok],
            features=spec.features,
            sensitive=spec.sensitive,
            model_name=spec.request["model"],
            version=int(spec.request["version"]),
            variant=spec.request["variant"],
            registry=registry,
            predictor=predictor,
        )
    from engine.audits.report import render_report  # matplotlib and jinja2: only the merging worker needs them

    provenance = {**metas[0], "audit": {"id": audit.id, "merged_by": worker, "chunks": len(audit.chunks)}}
    if spec.input_kind != "tabular":
        from engine.audits.perception import perception_summary, render_perception_report

        summary |= perception_summary(rows[ok], spec.input_kind)
        html = render_perception_report(
            summary, rows[ok], audit_path=audit.path, provenance=provenance, title=spec.title
        )
    else:
        html = render_report(summary, rows[ok], features=spec.features, provenance=provenance, title=spec.title)
    audit.write_outputs(rows, summary, html)
    state["state"] = "succeeded"
    audit.set_state(state)
    return state


def _task(spec: AuditSpec) -> Task:
    return "regression" if spec.task == "regression" else "classification"


def _results(result: Explanation, frame: pd.DataFrame, first: int, spec: AuditSpec) -> pd.DataFrame:
    """The per-row table of one explanation (see :mod:`engine.audits.summary`), plus ``status`` and ``error``.

    Read from the explanation's arrays: each row's first target column ``k``.
    """
    n = len(result.X)
    rows = np.arange(n)
    k = np.asarray([result.target_of(i) for i in range(n)], dtype=np.intp)
    names = result.model.card.output_names
    score = result.scores[rows, k]
    if spec.task == "regression":
        prediction: list[Any] = [float(v) for v in result.scores[:, 0]]
    else:
        classes = result.model.card.class_names
        prediction = [classes[int(c)] for c in np.argmax(result.scores, axis=1)]
    table: dict[str, Any] = {
        "row": np.arange(first, first + n, dtype=np.int64),
        "prediction": prediction,
        "score": np.asarray(result.scores[:, 0] if spec.task == "regression" else score, dtype=np.float64),
        "target": [names[int(c)] for c in k],
        "base_value": np.asarray(result.attributions.base_values[rows, k], dtype=np.float64),
    }
    table |= _carried(frame, spec)
    values = result.attributions.values
    for j, name in enumerate(spec.features):
        table[f"attr.{name}"] = np.asarray(values[rows, j, k], dtype=np.float64)
    return pd.DataFrame(table).assign(status="ok", error=None)


def _failed(frame: pd.DataFrame, first: int, spec: AuditSpec, code: str) -> pd.DataFrame:
    """Rows of a chunk that produced no results: inputs kept, outputs missing, ``status`` failed."""
    n = len(frame)
    missing = np.full(n, np.nan)
    table: dict[str, Any] = {
        "row": np.arange(first, first + n, dtype=np.int64),
        "prediction": missing if spec.task == "regression" else [None] * n,
        "score": missing,
        "target": [None] * n,
        "base_value": missing,
    }
    table |= _carried(frame, spec)
    table |= {f"attr.{name}": missing for name in spec.features}
    return pd.DataFrame(table).assign(status="failed", error=code)


def _carried(frame: pd.DataFrame, spec: AuditSpec) -> dict[str, Any]:
    """Columns copied from the dataset: label, sensitive attributes and feature values."""
    names = (["label"] if spec.label else []) + [f"sensitive.{s}" for s in spec.sensitive]
    names += [f"value.{f}" for f in spec.features]
    return {name: frame[name].to_numpy() for name in names}
