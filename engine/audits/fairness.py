"""Fairness of an audit by sensitive group, computed with fairlearn over the merged per-row table.

Classification: a prediction is *selected* when it equals the ``positive`` class (one-vs-rest for multiclass) and
fairlearn computes every metric on those 0/1 outcomes; unlabelled rows count for selection only. Regression is not
binarised: groups get count, mean prediction, mean error and MAE, and no parity flags. fairlearn and scikit-learn
are imported lazily.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

import numpy as np
import pandas as pd

MISSING_GROUP = "(missing)"
_Array = np.ndarray[Any, Any]
_Dict = dict[str, Any]


@dataclass(frozen=True)
class FairnessThresholds:
    """Limits beyond which a fairness metric is flagged (classification only)."""

    max_demographic_parity_difference: float = 0.1
    min_demographic_parity_ratio: float = 0.8  # the disparate impact ratio; 0.8 is the "four-fifths rule"
    max_equalized_odds_difference: float = 0.1


def as_labels(values: pd.Series) -> pd.Series:
    """Labels and predictions as comparable strings."""
    # CSV labels are numbers (floats once one is missing), model labels str: compare as str, with 1.0 as "1".
    if pd.api.types.is_float_dtype(values) and bool((values.dropna() % 1 == 0).all()):
        values = values.astype("Int64")
    return values.astype(str)


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


def fairness(
    rows: pd.DataFrame,
    labels: pd.Series,
    labelled: _Array,
    features: list[str],
    sensitive: list[str],
    pos: str | None,
    thresholds: FairnessThresholds | None,
) -> _Dict:
    """Fairness by sensitive column: per-group rates (or, for regression, errors), parity metrics and flags.

    Args:
        rows: The merged per-row table.
        labels: The ground truth per row (missing where unlabelled).
        labelled: Which rows have a label.
        features: Model feature names (mean attribution per group).
        sensitive: The sensitive columns (``sensitive.<name>``).
        pos: The positive class (classification).
        thresholds: The limits (classification); ``None`` for regression, which gets no parity flags.
    """
    if thresholds is not None:  # classification: fairlearn sees 0/1 for "is the positive class"
        yp, yt = (np.asarray(as_labels(values) == pos, dtype=int) for values in (rows["prediction"], labels))
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
