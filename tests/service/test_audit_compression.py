"""The compression study of an audit, end to end: real variants built by real workers, every row explained on
fp32 and on each variant, the per-variant numbers recomputed here from the per-row files."""

from __future__ import annotations

import io
import json
import time
from typing import Any

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from engine.settings import Settings
from tests import builders
from tests.conftest import poll

FEATURES = [f"x{i}" for i in range(5)]
KINDS = ("int8_static", "prune_structured")
STUDIED: dict[str, float | None] = {"int8_static": None, "prune_structured": 0.25}


@pytest.fixture
def live_settings(live_settings: Settings) -> Settings:
    """The shared live settings, with four chunks for this module's 2000 rows."""
    return live_settings.replace(audit_chunk_rows=500)


@pytest.fixture(scope="module")
def mlp() -> builders.BuiltModel:
    """The study's MLP on 5 features (see :func:`tests.builders.study_mlp`)."""
    return builders.study_mlp()


def _register_with_variants(
    client: Any, built: builders.BuiltModel, name: str, kinds: dict[str, float | None], background_rows: int = 40
) -> None:
    """Register ``built`` and build its variants (kind → sparsity); wait until every one is ready."""
    data = {
        "model": (io.BytesIO(built.onnx_bytes), "m"),
        "card": built.card_json(name=name),
        "background": (io.BytesIO(built.background_csv(rows=background_rows)), "b"),
    }
    assert client.post("/v1/models", data=data, content_type="multipart/form-data").status_code == 201
    for kind, sparsity in kinds.items():
        body = {"kind": kind, **({"sparsity": sparsity} if sparsity is not None else {})}
        assert client.post(f"/v1/models/{name}/variants", json=body).status_code == 202
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        states = {v["kind"]: v for v in client.get(f"/v1/models/{name}").json["variants"]}
        if all(states.get(k, {}).get("state") not in (None, "building") for k in kinds):
            assert all(states[k]["state"] == "ready" for k in kinds), {k: states[k].get("gate") for k in kinds}
            return
        time.sleep(0.5)
    raise AssertionError("variants still building")


def _dataset(built: builders.BuiltModel, n: int) -> pd.DataFrame:
    rng = np.random.default_rng(3)
    frame = pd.DataFrame(built.X[400 : 400 + n], columns=FEATURES)
    frame["y"] = np.where(built.y[400 : 400 + n] == 1, "approved", "denied")
    frame["group"] = rng.choice(["a", "b"], n)
    return frame


def _submit(client: Any, frame: pd.DataFrame, spec: dict[str, Any]) -> Any:
    data = {"dataset": (io.BytesIO(frame.to_csv(index=False).encode()), "d.csv"), "spec": json.dumps(spec)}
    return client.post("/v1/audits", data=data, content_type="multipart/form-data")


def _rows(client: Any, location: str, variant: str | None = None) -> pd.DataFrame:
    response = client.get(f"{location}/rows" + (f"?variant={variant}" if variant else ""))
    assert response.status_code == 200, response.json
    return pd.read_parquet(io.BytesIO(response.data))


def test_a_compression_study_compares_every_row_on_every_variant(live_client, mlp):
    """2000 rows on fp32, int8_static and prune_structured: the summary's numbers equal those recomputed here."""
    _register_with_variants(live_client, mlp, "mlp-study", STUDIED)
    frame = _dataset(mlp, 2000)
    spec = {"model": "mlp-study", "method": "exact", "label": "y", "sensitive": ["group"], "variants": list(KINDS)}
    response = _submit(live_client, frame, spec)
    assert response.status_code == 202, response.json
    audit = poll(live_client, response.headers["Location"], timeout=300)
    assert audit["status"] == "succeeded", audit
    study = audit["summary"]["compression"]
    assert study["reference"] == "fp32" and study["top_k"] == 3 and study["min_spearman"] == 0.9
    assert [v["variant"] for v in study["variants"]] == list(KINDS) == audit["variants"]

    fp32 = _rows(live_client, audit["location"])
    attrs = [f"attr.{f}" for f in FEATURES]
    for item in study["variants"]:
        rows = _rows(live_client, audit["location"], item["variant"])
        assert rows["row"].tolist() == fp32["row"].tolist() and item["rows"] == 2000
        a, b = fp32[attrs].to_numpy(), rows[attrs].to_numpy()
        assert not np.allclose(a, b)  # the variant's own explanation, not fp32's again
        assert (rows["target"] == fp32["target"]).all()  # the same class explained on both
        # Exact Shapley values are additive on the variant's own scores.
        np.testing.assert_allclose(rows["base_value"] + b.sum(axis=1), rows["score"], atol=1e-5)
        rho = np.array([spearmanr(np.abs(x), np.abs(y)).statistic for x, y in zip(a, b, strict=True)])
        np.testing.assert_allclose(rows["spearman"], rho, atol=1e-12)
        got = item["rank_correlation"]
        assert got["median"] == pytest.approx(np.median(rho), abs=1e-12)
        assert got["mean"] == pytest.approx(rho.mean(), abs=1e-12)
        assert got["min"] == pytest.approx(rho.min(), abs=1e-12)
        assert got["quantiles"]["p05"] == pytest.approx(np.quantile(rho, 0.05), abs=1e-12)
        assert sum(got["histogram"]["counts"]) == 2000
        assert item["drift_flagged"] == (np.median(rho) < 0.9 - 1e-9)  # a median on the threshold meets it
        top = [
            len(set(np.argsort(-np.abs(x))[:3]) & set(np.argsort(-np.abs(y))[:3])) / 3
            for x, y in zip(a, b, strict=True)
        ]
        assert item["top_k_overlap"]["mean"] == pytest.approx(np.mean(top), abs=1e-12)
        same = (rows["prediction"] == fp32["prediction"]).to_numpy()
        assert item["agreement"]["prediction"] == pytest.approx(same.mean())
        assert (rows["fp32_prediction"] == fp32["prediction"]).all()

        shift = {s["feature"]: s for s in item["importance_shift"]}
        for j, name in enumerate(FEATURES):
            assert shift[name]["fp32_mean_abs"] == pytest.approx(np.abs(a[:, j]).mean(), rel=1e-12)
            assert shift[name]["variant_mean_abs"] == pytest.approx(np.abs(b[:, j]).mean(), rel=1e-12)
        changed = item["changed_rows"]
        assert len(changed) == 10 and changed[0]["spearman"] == pytest.approx(rho.min(), abs=1e-12)
        first = changed[0]
        position = fp32.index[fp32["row"] == first["row"]][0]
        assert [f["fp32"] for f in first["features"]] == pytest.approx(a[position].tolist())
        assert [f["variant"] for f in first["features"]] == pytest.approx(b[position].tolist())

        # Fairness on the variant's own predictions, by hand.
        approved = rows["prediction"].to_numpy() == "approved"
        groups = rows["sensitive.group"].to_numpy()
        rates = {g: approved[groups == g].mean() for g in ("a", "b")}
        column = item["fairness"]["columns"]["group"]
        for g, rate in rates.items():
            assert column["groups"][g]["selection_rate"] == pytest.approx(rate, abs=1e-12)
        difference = abs(rates["a"] - rates["b"])
        assert column["demographic_parity_difference"] == pytest.approx(difference, abs=1e-12)
        before = audit["summary"]["fairness"]["columns"]["group"]["demographic_parity_difference"]
        change = item["fairness_change"]["group"]["demographic_parity_difference"]
        assert change["fp32"] == before and change["change"] == pytest.approx(difference - before, abs=1e-12)
        assert item["build"]["size_ratio"] > 0

    html = live_client.get(f"{audit['location']}/report").get_data(as_text=True)
    assert 'id="compression"' in html and all(f'id="compression-{k}"' in html for k in KINDS)
    for item in study["variants"]:  # the most changed row, both explanations side by side
        shown = item["changed_rows"][0]["features"][0]
        assert f"{shown['feature']} = {shown['value']:.4g}: {shown['fp32']:.4g} | {shown['variant']:.4g}" in html
    csv = live_client.get(f"{audit['location']}/rows?variant=int8_static&format=csv")
    assert csv.status_code == 200 and len(pd.read_csv(io.BytesIO(csv.data))) == 2000
    unknown = live_client.get(f"{audit['location']}/rows?variant=fp16")
    assert unknown.status_code == 404 and unknown.json["code"] == "variant_not_found"
    assert unknown.json["field"] == "variant"


def test_study_variants_are_checked_at_submission(live_client, mlp):
    """A variant that is not ready, repeated, fp32 itself, or a study of a variant: refused before any job."""
    _register_with_variants(live_client, mlp, "mlp-study-errors", STUDIED)
    frame = _dataset(mlp, 20)
    base = {"model": "mlp-study-errors", "method": "exact"}
    cases = [
        ({"variants": ["int8_static", "fp16"]}, 404, "variant_not_found", "variants[1]"),
        ({"variants": ["prune_magnitude"]}, 404, "variant_not_found", "variants[0]"),
        ({"variants": ["no_such_kind"]}, 404, "variant_not_found", "variants[0]"),
        ({"variants": ["int8_static", "int8"]}, 422, "invalid_parameter", "variants[1]"),
        ({"variants": ["fp32"]}, 422, "invalid_parameter", "variants[0]"),
        ({"variants": []}, 422, "invalid_parameter", "variants"),
        ({"variants": "int8_static"}, 422, "invalid_parameter", "variants"),
        ({"variants": ["prune_structured"], "variant": "int8_static"}, 422, "invalid_parameter", "variant"),
    ]
    for extra, status, code, field in cases:
        response = _submit(live_client, frame, {**base, **extra})
        assert (response.status_code, response.json["code"], response.json["field"]) == (status, code, field), extra


def test_a_multiclass_study_explains_on_each_variant_the_class_fp32_explained(live_client, multiclass_model):
    """Without a positive class each row explains its predicted class: the variant explains fp32's, even where
    its own prediction differs, so both attributions answer the same question."""
    built = multiclass_model
    _register_with_variants(live_client, built, "species-study", {"int8_static": None})
    frame = pd.DataFrame(built.X, columns=built.card["features"])
    spec = {"model": "species-study", "method": "exact", "variants": ["int8_static"]}
    response = _submit(live_client, frame, spec)
    assert response.status_code == 202, response.json
    audit = poll(live_client, response.headers["Location"], timeout=300)
    assert audit["status"] == "succeeded", audit
    fp32 = _rows(live_client, audit["location"])
    rows = _rows(live_client, audit["location"], "int8_static")
    assert len(set(fp32["target"])) == 3  # every class is explained somewhere: the rows were grouped by it
    assert (rows["target"] == fp32["target"]).all() and (fp32["target"] == fp32["prediction"]).all()
    attrs = rows[[f"attr.{f}" for f in built.card["features"]]].to_numpy()
    # The variant's exact attributions add up to its own score of the class explained.
    np.testing.assert_allclose(rows["base_value"] + attrs.sum(axis=1), rows["score"], atol=1e-5)
    item = audit["summary"]["compression"]["variants"][0]
    assert item["agreement"]["changed_rows"] == int((rows["prediction"] != fp32["prediction"]).sum())


def test_a_regression_study_compares_values_and_group_errors(live_client):
    """A regressor's study: agreement is the difference of values, fairness the per-group errors of the variant."""
    from sklearn.datasets import make_regression
    from sklearn.neural_network import MLPRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = make_regression(n_samples=600, n_features=4, noise=0.1, random_state=5)
    model = make_pipeline(StandardScaler(), MLPRegressor(hidden_layer_sizes=(16,), max_iter=2000, random_state=0)).fit(
        X, y
    )
    features = ["a", "b", "c", "d"]
    built = builders.BuiltModel(
        builders._convert(model, X), {"name": "price", "task": "regression", "features": features}, X, y, model
    )
    _register_with_variants(live_client, built, "price-study", {"int8_static": None}, background_rows=100)
    frame = pd.DataFrame(X[100:400], columns=features).assign(y=y[100:400], region=np.repeat(["n", "s"], 150))
    spec = {
        "model": "price-study",
        "method": "exact",
        "label": "y",
        "sensitive": ["region"],
        "variants": ["int8_static"],
    }
    audit = poll(live_client, _submit(live_client, frame, spec).headers["Location"], timeout=300)
    assert audit["status"] == "succeeded", audit
    fp32, rows = _rows(live_client, audit["location"]), _rows(live_client, audit["location"], "int8_static")
    item = audit["summary"]["compression"]["variants"][0]
    diff = np.abs(rows["prediction"].to_numpy() - fp32["prediction"].to_numpy())
    assert item["agreement"]["max_abs_difference"] == pytest.approx(diff.max(), rel=1e-9)
    assert item["agreement"]["mean_abs_difference"] == pytest.approx(diff.mean(), rel=1e-9)
    groups = item["fairness"]["columns"]["region"]["groups"]
    for g in ("n", "s"):
        mine = rows["sensitive.region"] == g
        mae = np.abs(rows["prediction"][mine] - rows["label"][mine]).mean()
        assert groups[g]["mae"] == pytest.approx(mae, rel=1e-9)
    assert item["fairness"]["flags"] == [] and item["fairness_change"]["region"] == {"new_flags": []}
