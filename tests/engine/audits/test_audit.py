"""Audit summary, fairness and chunk merging, cross-checked against hand-computed numpy."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd
import pytest

from engine.audits.fairness import FairnessThresholds
from engine.audits.summary import chunk_bounds, merge_chunks, summarize
from engine.errors import ExplanationFailed, InvalidRequest

FEATURES = ["income", "age", "debt"]
WEIGHTS = {"income": 0.8, "age": -0.3, "debt": -0.5}
POS, NEG = "approved", "denied"


def audit_table(n: int = 4000, seed: int = 0) -> pd.DataFrame:
    """A per-row table with a planted bias on ``sex`` and none on ``region``.

    Group A is approved at about 0.7, group B at about 0.3; labels are 60 % / 40 % positive, and the model is
    more lenient with A (TPR 0.9 vs 0.6, FPR 0.4 vs 0.1). ``region`` is drawn independently of everything.
    Attributions follow a known linear rule: ``attr.f = w_f * (x_f - mean(x_f))``.
    """
    rng = np.random.default_rng(seed)
    sex = rng.choice(["A", "B"], size=n)
    region = rng.choice(["north", "south"], size=n)
    label = np.where(rng.random(n) < np.where(sex == "A", 0.6, 0.4), POS, NEG)
    p_approve = np.where(label == POS, np.where(sex == "A", 0.9, 0.6), np.where(sex == "A", 0.4, 0.1))
    prediction = np.where(rng.random(n) < p_approve, POS, NEG)
    values = {
        "income": rng.normal(50_000, 15_000, n) / 10_000,
        "age": rng.uniform(20, 70, n) / 10,
        "debt": rng.exponential(2.0, n),
    }
    table: dict[str, Any] = {
        "row": np.arange(n),
        "prediction": prediction,
        "target": POS,
        "base_value": 0.5,
        "label": label,
        "sensitive.sex": sex,
        "sensitive.region": region,
    }
    for f in FEATURES:
        table[f"value.{f}"] = values[f]
        table[f"attr.{f}"] = WEIGHTS[f] * (values[f] - values[f].mean())
    table["score"] = 0.5 + sum(table[f"attr.{f}"] for f in FEATURES)
    return pd.DataFrame(table)


@pytest.fixture(scope="module")
def rows() -> pd.DataFrame:
    return audit_table()


@pytest.fixture(scope="module")
def summary(rows: pd.DataFrame) -> dict[str, Any]:
    sensitive = ["sex", "region"]
    return summarize(rows, features=FEATURES, task="classification", positive=POS, sensitive=sensitive)


def _hand_fairness(rows: pd.DataFrame, column: str) -> dict[str, Any]:
    """Every fairness number of one column, from the textbook definitions."""
    g = rows[f"sensitive.{column}"].to_numpy()
    yp = rows["prediction"].to_numpy() == POS
    yt = rows["label"].to_numpy() == POS
    groups = {}
    for name in np.unique(g):
        m = g == name
        groups[name] = {
            "count": int(m.sum()),
            "selection_rate": yp[m].mean(),
            "tpr": (yp[m] & yt[m]).sum() / yt[m].sum(),
            "fpr": (yp[m] & ~yt[m]).sum() / (~yt[m]).sum(),
            "accuracy": (yp[m] == yt[m]).mean(),
        }
    sel = [s["selection_rate"] for s in groups.values()]
    tpr = [s["tpr"] for s in groups.values()]
    fpr = [s["fpr"] for s in groups.values()]
    return {
        "groups": groups,
        "demographic_parity_difference": max(sel) - min(sel),
        "demographic_parity_ratio": min(sel) / max(sel),
        "equal_opportunity_difference": max(tpr) - min(tpr),
        "equalized_odds_difference": max(max(tpr) - min(tpr), max(fpr) - min(fpr)),
    }


def test_global_importance_is_mean_abs_attribution(rows: pd.DataFrame, summary: dict[str, Any]) -> None:
    """mean_abs/std_abs/mean equal numpy over attr.<f>, and the list is sorted by mean_abs, descending."""
    importance = summary["global_importance"]
    assert [g["mean_abs"] for g in importance] == sorted((g["mean_abs"] for g in importance), reverse=True)
    assert {g["feature"] for g in importance} == set(FEATURES)
    for g in importance:
        attr = rows[f"attr.{g['feature']}"].to_numpy()
        assert g["mean_abs"] == pytest.approx(np.abs(attr).mean(), rel=1e-12)
        assert g["std_abs"] == pytest.approx(np.abs(attr).std(), rel=1e-12)
        assert g["mean"] == pytest.approx(attr.mean(), abs=1e-12)


@pytest.mark.parametrize("column", ["sex", "region"])
def test_fairness_matches_hand_computation(rows: pd.DataFrame, summary: dict[str, Any], column: str) -> None:
    """Per-group rates and the column-level differences equal the definitions computed with numpy."""
    got, want = summary["fairness"]["columns"][column], _hand_fairness(rows, column)
    assert set(got["groups"]) == set(want["groups"])
    for name, expected in want["groups"].items():
        assert got["groups"][name]["count"] == expected["count"]
        assert isinstance(got["groups"][name]["count"], int)
        for metric in ("selection_rate", "tpr", "fpr", "accuracy"):
            assert got["groups"][name][metric] == pytest.approx(expected[metric], rel=1e-12), (name, metric)
    for metric in (
        "demographic_parity_difference",
        "demographic_parity_ratio",
        "equal_opportunity_difference",
        "equalized_odds_difference",
    ):
        assert got[metric] == pytest.approx(want[metric], rel=1e-12), metric


def test_planted_bias_is_what_the_data_says(summary: dict[str, Any]) -> None:
    """The fixture does plant its bias: about 0.7 vs 0.3 approval, TPR 0.9 vs 0.6."""
    groups = summary["fairness"]["columns"]["sex"]["groups"]
    assert groups["A"]["selection_rate"] == pytest.approx(0.7, abs=0.03)
    assert groups["B"]["selection_rate"] == pytest.approx(0.3, abs=0.03)
    assert groups["A"]["tpr"] == pytest.approx(0.9, abs=0.03)
    assert groups["B"]["tpr"] == pytest.approx(0.6, abs=0.04)


def test_flags_fire_on_the_biased_column_only(summary: dict[str, Any]) -> None:
    """sex fails all three default thresholds; the independent region fails none."""
    fairness = summary["fairness"]
    expected = ["demographic_parity_difference", "demographic_parity_ratio", "equalized_odds_difference"]
    assert fairness["columns"]["sex"]["flags"] == expected
    assert fairness["columns"]["region"]["flags"] == []
    assert [(f["column"], f["metric"]) for f in fairness["flags"]] == [("sex", m) for m in expected]
    ratio = next(f for f in fairness["flags"] if f["metric"] == "demographic_parity_ratio")
    assert ratio["threshold"] == 0.8 and ratio["value"] == fairness["columns"]["sex"]["demographic_parity_ratio"]
    assert fairness["thresholds"] == {
        "max_demographic_parity_difference": 0.1,
        "min_demographic_parity_ratio": 0.8,
        "max_equalized_odds_difference": 0.1,
    }


def test_loose_thresholds_flag_nothing(rows: pd.DataFrame) -> None:
    """The thresholds are the caller's: loose enough ones pass even the biased column."""
    loose = FairnessThresholds(1.0, 0.0, 1.0)
    summary = summarize(
        rows, features=FEATURES, task="classification", positive=POS, sensitive=["sex"], thresholds=loose
    )
    assert summary["fairness"]["flags"] == [] and summary["fairness"]["columns"]["sex"]["flags"] == []


def test_mean_attribution_per_group(rows: pd.DataFrame, summary: dict[str, Any]) -> None:
    """Each group carries the mean attribution of every feature over its rows."""
    for name, stats in summary["fairness"]["columns"]["sex"]["groups"].items():
        mask = rows["sensitive.sex"] == name
        for f in FEATURES:
            assert stats["mean_attribution"][f] == pytest.approx(rows.loc[mask, f"attr.{f}"].mean(), rel=1e-12)


def test_prediction_distribution_and_performance(rows: pd.DataFrame, summary: dict[str, Any]) -> None:
    """Counts/fractions per label, accuracy and positive-class metrics equal numpy's."""
    yp, yt = rows["prediction"].to_numpy() == POS, rows["label"].to_numpy() == POS
    dist = summary["prediction_distribution"]
    assert dist["counts"] == {POS: int(yp.sum()), NEG: int((~yp).sum())}
    assert list(dist["counts"].values()) == sorted(dist["counts"].values(), reverse=True)
    assert dist["fractions"][POS] == pytest.approx(yp.mean())
    assert dist["score"]["mean"] == pytest.approx(rows["score"].mean())
    perf = summary["performance"]
    assert perf["accuracy"] == pytest.approx((yp == yt).mean())
    pc = perf["positive_class"]
    tp, fp = int((yp & yt).sum()), int((yp & ~yt).sum())
    fn, tn = int((~yp & yt).sum()), int((~yp & ~yt).sum())
    assert pc["confusion"] == {"tp": tp, "fp": fp, "tn": tn, "fn": fn}
    assert pc["precision"] == pytest.approx(tp / (tp + fp))
    assert pc["recall"] == pytest.approx(tp / (tp + fn))
    assert pc["fpr"] == pytest.approx(fp / (fp + tn))
    assert pc["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert 0.0 <= pc["roc_auc"] <= 1.0
    assert summary["rows"] == summary["labelled_rows"] == len(rows)


def test_summary_is_strict_json(summary: dict[str, Any]) -> None:
    """Only Python scalars, lists and dicts: json.dumps works with allow_nan=False and round-trips."""
    text = json.dumps(summary, allow_nan=False)
    assert json.loads(text) == summary

    def walk(obj: Any) -> None:
        if isinstance(obj, dict):
            assert all(isinstance(k, str) for k in obj)
            for v in obj.values():
                walk(v)
        elif isinstance(obj, list):
            for v in obj:
                walk(v)
        else:
            assert obj is None or type(obj) in (str, int, float, bool), (obj, type(obj))

    walk(summary)


def test_without_labels_only_selection_metrics(rows: pd.DataFrame) -> None:
    """No label column: no performance, no TPR/FPR, no equalized odds; parity flags still fire."""
    unlabelled = rows.drop(columns="label")
    summary = summarize(unlabelled, features=FEATURES, task="classification", positive=None, sensitive=["sex"])
    assert summary["positive"] == POS  # taken from the single-valued target column
    assert summary["performance"] is None and summary["labelled_rows"] == 0
    column = summary["fairness"]["columns"]["sex"]
    assert "tpr" not in column["groups"]["A"] and "equalized_odds_difference" not in column
    assert column["flags"] == ["demographic_parity_difference", "demographic_parity_ratio"]


def test_partial_labels_use_labelled_rows_only(rows: pd.DataFrame) -> None:
    """Selection rates use every row; TPR/FPR only rows with a label."""
    partial = rows.copy()
    partial["label"] = partial["label"].astype(object)
    partial.loc[partial.index % 3 == 0, "label"] = None
    summary = summarize(partial, features=FEATURES, task="classification", positive=POS, sensitive=["sex"])
    assert summary["labelled_rows"] == int((partial.index % 3 != 0).sum())
    got = summary["fairness"]["columns"]["sex"]["groups"]["B"]
    b = partial[partial["sensitive.sex"] == "B"]
    assert got["selection_rate"] == pytest.approx((b["prediction"] == POS).mean())
    lb = b[b["label"].notna()]
    positives = lb["label"] == POS
    assert got["tpr"] == pytest.approx(((lb["prediction"] == POS) & positives).sum() / positives.sum())


def test_integer_labels_compare_with_string_positive() -> None:
    """Labels read from CSV as ints still match a str positive class; a missing group is named."""
    table = pd.DataFrame(
        {
            "row": range(6),
            "prediction": ["1", "0", "1", "1", "0", "0"],
            "label": [1, 0, 0, 1, 1, 0],
            "score": [0.9, 0.2, 0.7, 0.8, 0.4, 0.1],
            "sensitive.g": ["x", "x", None, "y", "y", None],
            "attr.f": [0.1, -0.2, 0.3, 0.0, 0.5, -0.1],
        }
    )
    summary = summarize(table, features=["f"], task="classification", positive="1", sensitive=["g"])
    assert summary["performance"]["accuracy"] == pytest.approx(4 / 6)
    # With a missing label the CSV column turns float (1.0): still matches "1", on the 5 labelled rows.
    table["label"] = [1, 0, 0, 1, 1, None]
    summary = summarize(table, features=["f"], task="classification", positive="1", sensitive=["g"])
    assert summary["labelled_rows"] == 5 and summary["performance"]["accuracy"] == pytest.approx(3 / 5)
    assert summary["fairness"]["columns"]["g"]["groups"]["y"]["tpr"] == pytest.approx(1 / 2)
    assert set(summary["fairness"]["columns"]["g"]["groups"]) == {"x", "y", "(missing)"}


def test_regression_summary() -> None:
    """Regression: distribution, MAE/RMSE/R² and per-group mean prediction / error; no parity metrics."""
    rng = np.random.default_rng(1)
    n = 500
    group = rng.choice(["p", "q"], n)
    x = rng.normal(size=n)
    label = 3 * x + rng.normal(size=n)
    prediction = 3 * x + np.where(group == "p", 0.5, -0.5)  # over-predicts p, under-predicts q
    table = pd.DataFrame(
        {
            "row": np.arange(n),
            "prediction": prediction,
            "score": prediction,
            "target": "y",
            "label": label,
            "sensitive.group": group,
            "value.x": x,
            "attr.x": 3 * (x - x.mean()),
        }
    )
    summary = summarize(table, features=["x"], task="regression", positive=None, sensitive=["group"])
    dist = summary["prediction_distribution"]
    assert dist["mean"] == pytest.approx(prediction.mean()) and dist["std"] == pytest.approx(prediction.std())
    for key, q in {"p05": 0.05, "p25": 0.25, "p50": 0.5, "p75": 0.75, "p95": 0.95}.items():
        assert dist["quantiles"][key] == pytest.approx(np.quantile(prediction, q))
    err = prediction - label
    perf = summary["performance"]
    assert perf["mae"] == pytest.approx(np.abs(err).mean())
    assert perf["rmse"] == pytest.approx(np.sqrt((err**2).mean()))
    assert perf["r2"] == pytest.approx(1 - (err**2).sum() / ((label - label.mean()) ** 2).sum())
    fairness = summary["fairness"]
    assert fairness["thresholds"] is None and fairness["flags"] == []
    column = fairness["columns"]["group"]
    assert "demographic_parity_difference" not in column and column["flags"] == []
    for name in ("p", "q"):
        m = group == name
        stats = column["groups"][name]
        assert stats["count"] == int(m.sum()) and isinstance(stats["count"], int)
        assert stats["mean_prediction"] == pytest.approx(prediction[m].mean())
        assert stats["mean_error"] == pytest.approx(err[m].mean())
        assert stats["mae"] == pytest.approx(np.abs(err[m]).mean())
    assert column["groups"]["p"]["mean_error"] > 0 > column["groups"]["q"]["mean_error"]


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_index_labels_do_not_matter(rows: pd.DataFrame, task: str) -> None:
    """A table whose index is not 0..n-1 (filtered, concatenated) summarises exactly as the same rows."""
    table = rows if task == "classification" else rows.assign(prediction=rows["score"], label=rows["score"] * 1.1)
    kwargs: dict[str, Any] = {"features": FEATURES, "task": task, "positive": None, "sensitive": ["sex", "region"]}
    assert summarize(table.set_axis(table.index * 7 + 3), **kwargs) == summarize(table, **kwargs)


def test_undefined_numbers_become_none() -> None:
    """One labelled regression row: R² is undefined and comes back as None, not NaN."""
    table = pd.DataFrame({"row": [0], "prediction": [1.0], "score": [1.0], "label": [2.0], "attr.f": [0.5]})
    summary = summarize(table, features=["f"], task="regression", positive=None, sensitive=[])
    assert summary["performance"]["r2"] is None
    json.dumps(summary, allow_nan=False)


def test_summarize_rejects_bad_input(rows: pd.DataFrame) -> None:
    """Missing columns, no rows, and fairness without a positive class are errors with codes."""
    with pytest.raises(ExplanationFailed) as info:
        summarize(rows, features=["nope"], task="classification", positive=POS, sensitive=[])
    assert info.value.code == "rows_malformed" and "attr.nope" in info.value.detail
    with pytest.raises(InvalidRequest) as invalid:
        summarize(rows.iloc[0:0], features=FEATURES, task="classification", positive=POS, sensitive=[])
    assert invalid.value.code == "no_rows"
    mixed = rows.assign(target=np.where(rows.index % 2 == 0, POS, NEG))
    with pytest.raises(InvalidRequest) as invalid:
        summarize(mixed, features=FEATURES, task="classification", positive=None, sensitive=["sex"])
    assert invalid.value.code == "positive_required" and invalid.value.field == "positive"


def test_merge_chunks_drops_duplicates_and_sorts(rows: pd.DataFrame) -> None:
    """A chunk written twice counts once; the result is sorted by row with a fresh index."""
    head = rows.iloc[:20]
    chunks = [head.iloc[10:20], head.iloc[0:10], head.iloc[10:20], head.iloc[0:0]]
    merged = merge_chunks(chunks, expected_rows=20)
    assert merged["row"].tolist() == list(range(20))
    assert list(merged.index) == list(range(20))
    pd.testing.assert_frame_equal(merged, head.reset_index(drop=True))


def test_merge_chunks_names_missing_rows(rows: pd.DataFrame) -> None:
    """rows_missing lists which rows have no result."""
    chunks = [rows.iloc[0:10], rows.iloc[20:30]]
    with pytest.raises(ExplanationFailed) as info:
        merge_chunks(chunks, expected_rows=30)
    assert info.value.code == "rows_missing"
    assert "10 of 30" in info.value.detail and "10, 11" in info.value.detail and "19" in info.value.detail
    with pytest.raises(ExplanationFailed) as extra:
        merge_chunks([rows.iloc[0:10]], expected_rows=5)
    assert extra.value.code == "rows_unexpected"
    assert merge_chunks([]).empty and merge_chunks([], expected_rows=0).empty


def test_merge_chunks_long_listing_is_cut(rows: pd.DataFrame) -> None:
    """A chunk of 1000 lost rows does not make a 1000-number message."""
    with pytest.raises(ExplanationFailed) as info:
        merge_chunks([rows.iloc[:10]], expected_rows=1010)
    assert "(+980 more)" in info.value.detail


def test_chunk_bounds() -> None:
    """Half-open ranges covering every row once; the last may be short."""
    assert chunk_bounds(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert chunk_bounds(8, 4) == [(0, 4), (4, 8)]
    assert chunk_bounds(3, 100) == [(0, 3)]
    assert chunk_bounds(0, 5) == []
    with pytest.raises(InvalidRequest) as info:
        chunk_bounds(10, 0)
    assert info.value.code == "invalid_chunk_size"
    with pytest.raises(InvalidRequest):
        chunk_bounds(-1, 5)
