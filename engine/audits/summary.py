"""Batch-audit analysis over the merged per-row table: chunking, merging, the summary (fairness: :mod:`.fairness`).

The per-row table has one row per dataset row: ``row``, ``prediction``, ``score``, ``target``, ``base_value``,
optional ``label``, ``sensitive.<name>`` and, per model feature ``f``, ``value.<f>`` and ``attr.<f>``.

Fairness (classification): a prediction is *selected* when it equals the ``positive`` class (one-vs-rest for
multiclass) and fairlearn computes every metric on those 0/1 outcomes; unlabelled rows count for selection only.
Regression is not binarised (the cut-off would be invented here, not chosen by the model owner): groups get count,
mean prediction, mean error and MAE, and no parity flags. fairlearn and scikit-learn are imported lazily, so that
importing this module (e.g. for :func:`chunk_bounds`) is cheap. Example::

    rows = merge_chunks(frames, expected_rows=10_000)
    summary = summarize(rows, features=["age"], task="classification", positive="yes", sensitive=["sex"])
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal, cast

import numpy as np
import pandas as pd

from engine.audits.fairness import FairnessThresholds, as_labels, fairness
from engine.errors import ExplanationFailed, InvalidRequest

Task = Literal["classification", "regression"]
_QUANTILES = {"p05": 0.05, "p25": 0.25, "p50": 0.5, "p75": 0.75, "p95": 0.95}
_MAX_LISTED = 20
_Array = np.ndarray[Any, Any]
_Dict = dict[str, Any]


def chunk_bounds(n_rows: int, chunk_size: int) -> list[tuple[int, int]]:
    """Cut ``n_rows`` rows into half-open ``(start, stop)`` ranges of at most ``chunk_size`` rows.

    Raises:
        InvalidRequest: ``n_rows`` is negative or ``chunk_size`` is not positive.
    """
    if n_rows < 0 or chunk_size < 1:
        msg = f"need rows >= 0 and chunk size >= 1, got {n_rows} rows, chunk size {chunk_size}"
        raise InvalidRequest(msg, code="invalid_chunk_size")
    return [(start, min(start + chunk_size, n_rows)) for start in range(0, n_rows, chunk_size)]


def merge_chunks(frames: Sequence[pd.DataFrame], *, expected_rows: int | None = None) -> pd.DataFrame:
    """Concatenate chunk outputs into one table sorted by ``row``, keeping the first copy of a row written twice.

    Args:
        frames: Per-chunk tables, each with a ``row`` column.
        expected_rows: Dataset size; when given, rows ``0..n-1`` must all be present, and no other.

    Raises:
        ExplanationFailed: ``rows_missing`` or ``rows_unexpected``, naming the rows; ``rows_malformed``.
    """
    non_empty = [f for f in frames if len(f)]  # empty chunks are left out: they would only blur the dtypes
    merged = pd.concat(non_empty or [pd.DataFrame({"row": pd.Series(dtype="int64")})], ignore_index=True)
    if "row" not in merged.columns:
        raise ExplanationFailed("chunk output has no 'row' column", code="rows_malformed")
    merged = merged.drop_duplicates(subset="row", keep="first").sort_values("row", kind="stable", ignore_index=True)
    if expected_rows is not None:
        present = merged["row"].to_numpy(dtype=np.int64)
        missing = np.setdiff1d(np.arange(expected_rows, dtype=np.int64), present)
        if missing.size:
            msg = f"{missing.size} of {expected_rows} rows have no result: {_listing(missing)}"
            raise ExplanationFailed(msg, code="rows_missing")
        extra = present[(present < 0) | (present >= expected_rows)]
        if extra.size:
            raise ExplanationFailed(f"rows outside 0..{expected_rows - 1}: {_listing(extra)}", code="rows_unexpected")
    return merged


def summarize(
    rows: pd.DataFrame,
    *,
    features: list[str],
    task: Task,
    positive: str | None,
    sensitive: list[str],
    thresholds: FairnessThresholds | None = None,
) -> _Dict:
    """Summarise an audit: importance, predictions, performance and fairness.

    Args:
        rows: The merged per-row table (see the module docstring).
        features: Model feature names, in model order.
        task: ``"classification"`` or ``"regression"``.
        positive: The positive class; ``None`` takes the ``target`` column's value when it has only one.
        sensitive: Names of the sensitive attributes (columns ``sensitive.<name>``).
        thresholds: Fairness limits; ``None`` means the defaults of :class:`FairnessThresholds`.

    Returns:
        A JSON-ready dict (NaN becomes ``None``): ``rows``, ``task``, ``positive``, ``labelled_rows``,
        ``global_importance``, ``prediction_distribution``, ``performance`` (``None`` without labels), ``fairness``.

    Raises:
        InvalidRequest: No rows, or no positive class while fairness needs one.
        ExplanationFailed: ``rows_malformed`` when a needed column is absent.
    """
    needed = ["row", "prediction", "score"] + [f"attr.{f}" for f in features] + [f"sensitive.{s}" for s in sensitive]
    if absent := [c for c in needed if c not in rows.columns]:
        raise ExplanationFailed(f"per-row table lacks columns: {', '.join(absent)}", code="rows_malformed")
    if rows.empty:
        raise InvalidRequest("the audit has no rows to summarise", code="no_rows")
    classification = task == "classification"
    # Without ``positive``, the explained output is the positive class if it is the same for every row.
    targets = list(rows["target"].dropna().unique()) if "target" in rows.columns else []
    pos = positive if positive is not None else (str(targets[0]) if len(targets) == 1 else None)
    pos = str(pos) if classification and pos is not None else None
    if classification and pos is None and sensitive:
        raise InvalidRequest("fairness needs the positive class", code="positive_required", field="positive")
    labels = rows["label"] if "label" in rows.columns else pd.Series(None, index=rows.index, dtype=object)
    labelled = labels.notna().to_numpy(bool)
    fairness_limits = (thresholds or FairnessThresholds()) if classification else None
    summary: _Dict = {
        "rows": len(rows),
        "task": task,
        "positive": pos,
        "labelled_rows": int(labelled.sum()),
        "global_importance": _global_importance(rows, features),
        "prediction_distribution": _distribution(rows, classification),
        "performance": _performance(rows[labelled], pos, classification) if labelled.any() else None,
        "fairness": fairness(rows, labels, labelled, features, sensitive, pos, fairness_limits),
    }
    return cast(_Dict, _clean(summary))


def _listing(numbers: _Array) -> str:
    shown = ", ".join(str(int(n)) for n in numbers[:_MAX_LISTED])
    return shown + (f", … (+{numbers.size - _MAX_LISTED} more)" if numbers.size > _MAX_LISTED else "")


def _global_importance(rows: pd.DataFrame, features: list[str]) -> list[_Dict]:
    attrs = rows[[f"attr.{f}" for f in features]].astype(float).set_axis(features, axis=1)
    magnitude = attrs.abs()  # ddof=0: the audited rows are the population; the stable sort keeps model order in ties
    table = pd.DataFrame({"mean_abs": magnitude.mean(), "std_abs": magnitude.std(ddof=0), "mean": attrs.mean()})
    table = table.sort_values("mean_abs", ascending=False, kind="stable", na_position="last")
    return [{str(k): v for k, v in r.items()} for r in table.reset_index(names="feature").to_dict(orient="records")]


def _describe(values: pd.Series) -> _Dict:
    x = values.astype(float)
    quantiles = {k: x.quantile(q) for k, q in _QUANTILES.items()}
    return {"mean": x.mean(), "std": x.std(ddof=0), "min": x.min(), "max": x.max(), "quantiles": quantiles}


def _distribution(rows: pd.DataFrame, classification: bool) -> _Dict:
    if not classification:
        return _describe(rows["prediction"])
    counts = dict(sorted(as_labels(rows["prediction"]).value_counts().items(), key=lambda kv: (-kv[1], kv[0])))
    fractions = {k: c / len(rows) for k, c in counts.items()}
    return {"counts": counts, "fractions": fractions, "score": _describe(rows["score"])}


def _performance(rows: pd.DataFrame, pos: str | None, classification: bool) -> _Dict:
    from sklearn import metrics as skm

    if not classification:
        truth, predicted = rows["label"].astype(float), rows["prediction"].astype(float)
        return {
            "mae": skm.mean_absolute_error(truth, predicted),
            "rmse": skm.root_mean_squared_error(truth, predicted),
            # R² is undefined for fewer than two labels; sklearn would warn and give NaN.
            "r2": skm.r2_score(truth, predicted) if len(rows) > 1 else None,
        }
    labels, preds = as_labels(rows["label"]), as_labels(rows["prediction"])
    out: _Dict = {"accuracy": (labels == preds).mean()}  # sklearn sorts the str labels: ~7 s per 10⁶ rows
    if pos is not None:  # one-vs-rest metrics of the positive class (the binary metrics for a binary model)
        y_true, y_pred = (labels == pos).to_numpy(int), (preds == pos).to_numpy(int)
        tn, fp, fn, tp = (int(v) for v in skm.confusion_matrix(y_true, y_pred, labels=[0, 1]).ravel())
        auc = skm.roc_auc_score(y_true, rows["score"].astype(float)) if 0 < y_true.sum() < len(y_true) else None
        out["positive_class"] = {
            "positive": pos,
            "precision": tp / (tp + fp) if tp + fp else None,
            "recall": tp / (tp + fn) if tp + fn else None,
            "fpr": fp / (fp + tn) if fp + tn else None,
            "f1": skm.f1_score(y_true, y_pred, zero_division=np.nan),
            "roc_auc": auc,
            "confusion": {"tp": tp, "fp": fp, "tn": tn, "fn": fn},
        }
    return out


def _clean(obj: Any) -> Any:
    """Make ``obj`` JSON-ready: numpy scalars to Python, NaN/inf to ``None``."""
    if isinstance(obj, Mapping):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    obj = obj.item() if isinstance(obj, np.generic) else obj  # numpy scalars to their Python equivalents
    return None if isinstance(obj, float) and not math.isfinite(obj) else obj
