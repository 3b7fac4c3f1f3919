"""Batch-audit analysis over the merged per-row table: chunking, merging, summary with fairness.

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
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any, Literal, cast

import numpy as np
import pandas as pd

from engine.errors import ExplanationFailed, InvalidRequest

Task = Literal["classification", "regression"]
MISSING_GROUP = "(missing)"
_QUANTILES = {"p05": 0.05, "p25": 0.25, "p50": 0.5, "p75": 0.75, "p95": 0.95}
_MAX_LISTED = 20
_Array = np.ndarray[Any, Any]
_Dict = dict[str, Any]


@dataclass(frozen=True)
class FairnessThresholds:
    """Limits beyond which a fairness metric is flagged (classification only)."""

    max_demographic_parity_difference: float = 0.1
    min_demographic_parity_ratio: float = 0.8  # the disparate impact ratio; 0.8 is the "four-fifths rule"
    max_equalized_odds_difference: float = 0.1


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
        "fairness": _fairness(rows, labels, labelled, features, sensitive, pos, fairness_limits),
    }
    return cast(_Dict, _clean(summary))


def _listing(numbers: _Array) -> str:
    shown = ", ".join(str(int(n)) for n in numbers[:_MAX_LISTED])
    return shown + (f", … (+{numbers.size - _MAX_LISTED} more)" if numbers.size > _MAX_LISTED else "")


def _as_labels(values: pd.Series) -> pd.Series:
    # CSV labels are numbers (floats once one is missing), model labels str: compare as str, with 1.0 as "1".
    if pd.api.types.is_float_dtype(values) and bool((values.dropna() % 1 == 0).all()):
        values = values.astype("Int64")
    return values.astype(str)


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
    counts = dict(sorted(_as_labels(rows["prediction"]).value_counts().items(), key=lambda kv: (-kv[1], kv[0])))
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
    labels, preds = _as_labels(rows["label"]), _as_labels(rows["prediction"])
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


def _weighted(metrics: _Dict, groups: pd.Series, y_true: _Array, y_pred: _Array) -> tuple[dict[str, _Dict], _Dict]:
    """Per-group ``metrics`` from a fairlearn MetricFrame, and the arguments for fairlearn's parity functions.

    fairlearn 0.15 spends microseconds per row per metric (it ``np.stack``-s every value). Each metric here is a
    weighted mean of 0/1 outcomes, so fairlearn gets one row per distinct (group, y_true, y_pred) weighted by its
    row count: the same numbers, in time independent of the row count.
    """
    from fairlearn.metrics import MetricFrame

    t = pd.DataFrame({"group": groups.to_numpy(), "t": y_true, "p": y_pred}).value_counts(sort=False).reset_index()
    args = {"y_true": t["t"].to_numpy(), "y_pred": t["p"].to_numpy(), "sensitive_features": t["group"]}
    weight = t["count"].to_numpy()
    frame = MetricFrame(metrics=metrics, sample_params={m: {"sample_weight": weight} for m in metrics}, **args)
    return _records(frame.by_group), {**args, "sample_weight": weight}


def _records(table: pd.DataFrame) -> dict[str, _Dict]:
    # MetricFrame.by_group stores every metric as float: a count must read 12, not 12.0.
    table = table.astype({"count": "int64"}) if "count" in table.columns else table
    return {str(g): {str(k): v for k, v in r.items()} for g, r in table.to_dict(orient="index").items()}


def _fairness(
    rows: pd.DataFrame,
    labels: pd.Series,
    labelled: _Array,
    features: list[str],
    sensitive: list[str],
    pos: str | None,
    thresholds: FairnessThresholds | None,
) -> _Dict:
    if thresholds is not None:  # classification: fairlearn sees 0/1 for "is the positive class"
        yp, yt = (np.asarray(_as_labels(values) == pos, dtype=int) for values in (rows["prediction"], labels))
    else:
        yp, yt = rows["prediction"].astype(float).to_numpy(), labels.astype(float).to_numpy()
        # Mean error is prediction minus label; unlabelled rows get NaN, which the group means skip.
        error = np.where(labelled, yp - np.where(labelled, yt, 0.0), np.nan)
        per_row = pd.DataFrame({"mean_prediction": yp, "mean_error": error, "mae": np.abs(error)}, index=rows.index)
        per_row = per_row if labelled.any() else per_row[["mean_prediction"]]
    attrs = rows[[f"attr.{f}" for f in features]].astype(float)
    columns: _Dict = {}
    flags: list[_Dict] = []
    for name in sensitive:
        # JSON keys are strings, and fairlearn rejects NaN groups: name the missing group.
        groups = rows[f"sensitive.{name}"].astype("object").fillna(MISSING_GROUP).map(str).rename("group")
        if thresholds is not None:
            column, failed = _classification_column(yp, yt, labelled, groups, thresholds)
        else:
            by = per_row.groupby(groups)
            column, failed = {"groups": _records(pd.DataFrame({"count": by.size()}).join(by.mean()))}, []
        means = attrs.groupby(groups).mean()
        for g, s in column["groups"].items():
            s["mean_attribution"] = {f: means.at[g, f"attr.{f}"] for f in features}
        column["flags"] = [f["metric"] for f in failed]
        flags += [{"column": name, **f} for f in failed]
        columns[name] = column
    return {"thresholds": asdict(thresholds) if thresholds else None, "columns": columns, "flags": flags}


def _classification_column(
    yp: _Array, yt: _Array, labelled: _Array, groups: pd.Series, thresholds: FairnessThresholds
) -> tuple[_Dict, list[_Dict]]:
    """Per-group rates and parity metrics of one sensitive column, and the metrics that fail the thresholds."""
    from fairlearn import metrics as flm
    from sklearn.metrics import accuracy_score

    # Selection ignores y_true (fairlearn's own demographic parity passes y_pred alike); counts sum the weights.
    selection, count = partial(flm.selection_rate, pos_label=1), lambda t, p, sample_weight: sample_weight.sum()
    stats, kw = _weighted({"count": count, "selection_rate": selection}, groups, yp, yp)
    column: _Dict = {"groups": stats, "demographic_parity_difference": flm.demographic_parity_difference(**kw)}
    column["demographic_parity_ratio"] = flm.demographic_parity_ratio(**kw)
    checks = [  # sign 1: fails above the limit; -1: fails below it
        ("demographic_parity_difference", thresholds.max_demographic_parity_difference, 1),
        ("demographic_parity_ratio", thresholds.min_demographic_parity_ratio, -1),
    ]
    if labelled.any():  # label-based metrics only over labelled rows; a group without any gets None
        rates = partial(flm.true_positive_rate, pos_label=1), partial(flm.false_positive_rate, pos_label=1)
        labelled_metrics = {"tpr": rates[0], "fpr": rates[1], "accuracy": accuracy_score}
        by_label, kw = _weighted(labelled_metrics, groups[labelled], yt[labelled], yp[labelled])
        for group, s in stats.items():
            s.update(by_label.get(group, dict.fromkeys(labelled_metrics)))
        column["equal_opportunity_difference"] = flm.equal_opportunity_difference(**kw)
        column["equalized_odds_difference"] = flm.equalized_odds_difference(**kw)
        checks.append(("equalized_odds_difference", thresholds.max_equalized_odds_difference, 1))
    # A NaN metric (a ratio when nobody is selected) compares False, so it is never flagged.
    failed = [{"metric": m, "value": column[m], "threshold": t} for m, t, sign in checks if sign * (column[m] - t) > 0]
    return column, failed


def _clean(obj: Any) -> Any:
    """Make ``obj`` JSON-ready: numpy scalars to Python, NaN/inf to ``None``."""
    if isinstance(obj, Mapping):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    obj = obj.item() if isinstance(obj, np.generic) else obj  # numpy scalars to their Python equivalents
    return None if isinstance(obj, float) and not math.isfinite(obj) else obj
