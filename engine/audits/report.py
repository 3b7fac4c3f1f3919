"""The self-contained HTML report of a batch audit.

:func:`render_report` turns an audit summary (from :func:`engine.audits.summary.summarize`) and the per-row table into
one HTML file: no external URLs, plots embedded as base64 PNG data URIs, every value escaped by jinja2's
autoescape. Figures are built with :class:`matplotlib.figure.Figure` on an Agg canvas, never through pyplot, so
no global backend is switched and no figure is registered anywhere: each is released once it is encoded. This
module pulls in matplotlib and jinja2, so only workers import it.

Example::

    html = render_report(summary, rows, features=["age", "income"], provenance=prov, title="Credit audit")
"""

from __future__ import annotations

import base64
import io
import json
import math
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from engine.audits.compression import report_view

_TEMPLATES = Path(__file__).parent / "templates"
_MAX_PLOT_ROWS = 5000  # plots of a sample: a million dots say no more than 5000 and take minutes
_MAX_DISPLAY = 20  # features in the importance and beeswarm plots
_DEPENDENCE = 3  # features with a dependence plot
_ROW_FEATURES = 5  # top features listed per row in #top-rows
_TABLE_FEATURES = 10  # features in the per-group mean attribution tables
_METRIC_NAMES = {
    "count": "Count",
    "selection_rate": "Selection rate",
    "tpr": "TPR",
    "fpr": "FPR",
    "accuracy": "Accuracy",
    "mean_prediction": "Mean prediction",
    "mean_error": "Mean error",
    "mae": "MAE",
    "demographic_parity_difference": "Demographic parity difference",
    "demographic_parity_ratio": "Disparate impact (demographic parity ratio)",
    "equal_opportunity_difference": "Equal opportunity difference (TPR)",
    "equalized_odds_difference": "Equalized odds difference",
}
_LIMITS = {  # column metric -> the FairnessThresholds field that bounds it
    "demographic_parity_difference": "max_demographic_parity_difference",
    "demographic_parity_ratio": "min_demographic_parity_ratio",
    "equalized_odds_difference": "max_equalized_odds_difference",
}


def render_report(
    summary: dict[str, Any],
    rows: pd.DataFrame,
    *,
    features: list[str],
    provenance: dict[str, Any],
    title: str,
    top_rows: int = 10,
) -> str:
    """Render the audit report as one self-contained HTML document.

    Args:
        summary: The audit summary from :func:`engine.audits.summary.summarize`.
        rows: The merged per-row table (``row``, ``prediction``, ``score``, ``value.<f>``, ``attr.<f>``, ...).
        features: Model feature names, in model order.
        provenance: Model (name, version, sha256), method, parameters and library versions; shown as given.
        title: Report title.
        top_rows: How many rows with the largest total |attribution| to list.

    Returns:
        The HTML text, with sections ``#summary``, ``#global-importance``, ``#beeswarm``, ``#dependence``,
        ``#fairness``, ``#recourse`` (when the summary has one), ``#provenance`` and ``#top-rows``, and
        ``#compression`` when the summary has a study.
    """
    known = set(features)
    order = [g["feature"] for g in summary["global_importance"] if g["feature"] in known] or list(features)
    sample = rows.sample(n=_MAX_PLOT_ROWS, random_state=0) if len(rows) > _MAX_PLOT_ROWS else rows
    model = provenance.get("model") or {}
    overview = [
        ("Model", " ".join(str(model[k]) for k in ("name", "version") if k in model) or "—"),
        ("Method", _fmt(provenance.get("method"))),
        ("Task", summary.get("task", "—")),
        ("Positive class", _fmt(summary.get("positive"))),
        ("Rows", _fmt(summary["rows"])),
        ("Labelled rows", _fmt(summary.get("labelled_rows"))),
    ]
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(_TEMPLATES), autoescape=True, undefined=jinja2.StrictUndefined
    )
    return env.get_template("report.html.j2").render(
        title=title,
        overview=overview,
        performance=_flatten(summary["performance"]) if summary.get("performance") else [],
        distribution=_flatten(summary["prediction_distribution"]),
        n_rows=summary["rows"],
        importance=[{k: _fmt(v) for k, v in g.items()} for g in summary["global_importance"]],
        importance_plot=_importance_plot(summary["global_importance"][:_MAX_DISPLAY]),
        sampled=len(sample) < len(rows),
        plotted_rows=len(sample),
        beeswarm_plot=_beeswarm_plot(sample, order[:_MAX_DISPLAY]),
        dependence=[(f, _dependence_plot(sample, f)) for f in order[:_DEPENDENCE]],
        thresholds=_flatten(summary["fairness"].get("thresholds") or {}),
        fairness=[_fairness_view(n, c, summary["fairness"], order) for n, c in summary["fairness"]["columns"].items()],
        provenance=_flatten(provenance),
        top_rows=_top_rows(rows, features, top_rows),
        recourse=summary.get("recourse"),
        compression=report_view(summary["compression"], _fmt, _data_uri) if summary.get("compression") else None,
    )


def _fmt(value: Any) -> str:
    if isinstance(value, np.generic):  # numpy scalars from the table print like Python ones
        value = value.item()
    if value is None or value is pd.NA or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    return json.dumps(value, default=str) if isinstance(value, dict | list | tuple) else str(value)


def _flatten(data: dict[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """Nested dicts as ``("a.b", "value")`` pairs, for two-column tables."""
    out: list[tuple[str, str]] = []
    for key, value in data.items():
        if isinstance(value, dict) and value:
            out += _flatten(value, f"{prefix}{key}.")
        else:
            out.append((f"{prefix}{key}", _fmt(value)))
    return out


def _fairness_view(name: str, column: dict[str, Any], fairness: dict[str, Any], order: list[str]) -> dict[str, Any]:
    groups: dict[str, dict[str, Any]] = column["groups"]
    metrics = list(dict.fromkeys(k for g in groups.values() for k in g if k != "mean_attribution"))
    shown = order[:_TABLE_FEATURES]
    limits = fairness.get("thresholds") or {}
    summary = [
        {
            "name": _METRIC_NAMES.get(key, key),
            "value": _fmt(value),
            "fail": key in column["flags"],
            "threshold": _fmt(limits.get(_LIMITS.get(key, ""))),
        }
        for key, value in column.items()
        if key not in ("groups", "flags")
    ]
    return {
        "name": name,
        "flags": [_METRIC_NAMES.get(f, f) for f in column["flags"]],
        "metrics": [_METRIC_NAMES.get(m, m) for m in metrics],
        "groups": [{"name": g, "cells": [_fmt(s.get(m)) for m in metrics]} for g, s in groups.items()],
        "summary": summary,
        "attribution_features": shown,
        "attributions": [(g, [_fmt(s["mean_attribution"].get(f)) for f in shown]) for g, s in groups.items()],
    }


def _top_rows(rows: pd.DataFrame, features: list[str], n: int) -> list[dict[str, Any]]:
    attrs = rows[[f"attr.{f}" for f in features]].astype(float).to_numpy()
    magnitude = np.abs(attrs)
    totals = np.nansum(magnitude, axis=1)
    out = []
    for i in np.argsort(-totals, kind="stable")[:n]:  # positions, not labels: the index may repeat
        record = rows.iloc[i]
        top = [features[j] for j in np.argsort(-np.nan_to_num(magnitude[i], nan=-1.0), kind="stable")[:_ROW_FEATURES]]
        out.append(
            {
                "row": _fmt(record["row"]),
                "prediction": _fmt(record["prediction"]),
                "score": _fmt(record["score"]),
                "total": _fmt(totals[i]),
                "features": [(f, _fmt(record.get(f"value.{f}")), _fmt(record[f"attr.{f}"])) for f in top],
            }
        )
    return out


def _label(name: str, width: int = 40) -> str:
    # Two "$" would start matplotlib mathtext (and fail on odd input): escape them; long names are cut.
    short = name if len(name) <= width else name[: width - 1] + "…"
    return short.replace("$", r"\$")


def _data_uri(fig: Figure) -> str:
    FigureCanvasAgg(fig)  # attaches the Agg canvas to the figure
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    fig.clear()  # nothing else holds the figure: clearing releases its artists now rather than at GC
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _numeric(values: pd.Series) -> tuple[np.ndarray[Any, Any], list[str] | None]:
    """Values as floats for plotting, plus the category names when they had to be coded."""
    as_numbers = pd.to_numeric(values, errors="coerce")
    if as_numbers.notna().sum() == values.notna().sum():
        return as_numbers.astype(float).to_numpy(), None
    codes, categories = pd.factorize(values.astype("object"), sort=True)
    return np.where(codes < 0, np.nan, codes).astype(float), [str(c) for c in categories]


def _normalise(x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    finite = x[np.isfinite(x)]
    if finite.size == 0:
        return x
    lo, hi = np.percentile(finite, [5, 95])  # shap's choice: outliers do not wash out the colours
    if hi <= lo:
        lo, hi = finite.min(), finite.max()
    return np.clip((x - lo) / (hi - lo), 0, 1) if hi > lo else np.where(np.isfinite(x), 0.5, np.nan)


def _swarm(a: np.ndarray[Any, Any], width: float = 0.4, bins: int = 100) -> np.ndarray[Any, Any]:
    """Vertical offsets that pile dots of similar attribution side by side, as a beeswarm does."""
    if a.size == 0:
        return a
    span = float(np.ptp(a)) or 1.0
    b = np.floor((a - a.min()) / span * (bins - 1)).astype(int)
    order = np.argsort(b, kind="stable")
    starts = np.r_[0, np.flatnonzero(np.diff(b[order])) + 1]
    rank = np.arange(a.size) - np.repeat(starts, np.diff(np.r_[starts, a.size]))
    offsets = np.empty(a.size)
    offsets[order] = np.where(rank % 2 == 0, 1, -1) * ((rank + 1) // 2)  # 0, +1, -1, +2, -2, ...
    return offsets / (np.abs(offsets).max() or 1.0) * width


def _importance_plot(importance: list[dict[str, Any]]) -> str:
    fig = Figure(figsize=(7, 0.35 * len(importance) + 1.2))
    ax = fig.add_subplot()
    names = [_label(g["feature"]) for g in reversed(importance)]
    ax.barh(range(len(names)), [g["mean_abs"] or 0.0 for g in reversed(importance)], color="#1f77b4")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("mean |attribution|")
    return _data_uri(fig)


def _beeswarm_plot(sample: pd.DataFrame, order: list[str]) -> str:
    fig = Figure(figsize=(8, 0.45 * len(order) + 1.5))
    ax = fig.add_subplot()
    scatter = None
    for i, f in enumerate(reversed(order)):
        a = sample[f"attr.{f}"].astype(float).to_numpy()
        c = _normalise(_numeric(sample[f"value.{f}"])[0]) if f"value.{f}" in sample else np.full(a.size, np.nan)
        a, c = a[np.isfinite(a)], c[np.isfinite(a)]  # a missing attribution has no place on the axis
        y = i + _swarm(a)
        missing = ~np.isfinite(c)
        ax.scatter(a[missing], y[missing], s=8, color="#999999", linewidths=0)
        scatter = ax.scatter(a[~missing], y[~missing], c=c[~missing], s=8, cmap="coolwarm", vmin=0, vmax=1, lw=0)
    ax.axvline(0, color="#888888", lw=0.8)
    ax.set_yticks(range(len(order)), [_label(f) for f in reversed(order)])
    ax.set_xlabel("attribution")
    if scatter is not None:
        bar = fig.colorbar(scatter, ax=ax, ticks=[0, 1], aspect=40)
        bar.ax.set_yticklabels(["low", "high"])
        bar.set_label("feature value")
    return _data_uri(fig)


def _dependence_plot(sample: pd.DataFrame, feature: str) -> str:
    fig = Figure(figsize=(4.5, 3.5))
    ax = fig.add_subplot()
    x, categories = (
        _numeric(sample[f"value.{feature}"]) if f"value.{feature}" in sample else (np.full(len(sample), np.nan), None)
    )
    ax.scatter(x, sample[f"attr.{feature}"].astype(float), s=8, alpha=0.6, color="#1f77b4", linewidths=0)
    ax.axhline(0, color="#888888", lw=0.8)
    if categories is not None and len(categories) <= 20:
        ax.set_xticks(range(len(categories)), [_label(c, 15) for c in categories], rotation=45, ha="right")
    ax.set_xlabel(_label(feature))
    ax.set_ylabel("attribution")
    return _data_uri(fig)
