"""Batch audits through the API, Redis and real worker processes: results, fairness, report, cancel, worker death."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
from redis import Redis
from rq import Queue
from rq.job import Job
from rq.serializers import JSONSerializer

from engine.models.store import ModelRegistry
from engine.settings import Settings
from service.app import create_app
from tests import builders
from tests.conftest import authorize, issue_key, keyed, poll, upload, with_db
from tests.contract import ValidatingClient

ROOT = Path(__file__).resolve().parents[2]
SECTIONS = ["summary", "global-importance", "beeswarm", "dependence", "fairness", "provenance", "top-rows"]


# -- fixtures and helpers ----------------------------------------------------------------------------------------


@pytest.fixture
def settings(tmp_path: Path, redis_url: str) -> Settings:
    """Settings of the worker-less app: its audits stay in the test's directory."""
    return Settings(
        redis_url=redis_url, model_dir=tmp_path / "models", audit_dir=tmp_path / "audits", max_audit_rows=500
    )


@pytest.fixture
def live_settings(live_settings: Settings) -> Settings:
    """The shared live settings, with this module's chunk size."""
    return live_settings.replace(audit_chunk_rows=500)


def predict(built: builders.BuiltModel, X: np.ndarray) -> np.ndarray:
    """Class probabilities straight from onnxruntime, independent of the service."""
    session = ort.InferenceSession(built.onnx_bytes, providers=["CPUExecutionProvider"])
    (probabilities,) = session.run(["probabilities"], {session.get_inputs()[0].name: X.astype(np.float32)})
    return np.asarray(probabilities, dtype=np.float64)


def planted_bias(built: builders.BuiltModel, n: int, seed: int = 0) -> pd.DataFrame:
    """Rows for the binary model, with ``sex`` (not a feature) drawn so that group A is approved far more often.

    ``region`` is independent of everything; labels are noisy and more often positive for A.
    """
    rng = np.random.default_rng(seed)
    X = rng.normal(built.X.mean(axis=0), built.X.std(axis=0), size=(n, built.X.shape[1]))
    approve = predict(built, X)[:, 1]
    sex = np.where(approve + rng.normal(0, 0.15, n) > np.median(approve), "A", "B")
    frame = pd.DataFrame(X, columns=built.card["features"])
    frame["sex"] = sex
    frame["region"] = rng.choice(["north", "south"], n)
    frame["y"] = np.where(rng.random(n) < np.where(sex == "A", 0.65, 0.35), "approved", "denied")
    frame["customer_id"] = np.arange(n) + 10_000  # not a feature: ignored, and said so
    return frame


def submit(client: Any, dataset: bytes, spec: dict[str, Any], filename: str = "data.csv") -> Any:
    data = {"dataset": (io.BytesIO(dataset), filename), "spec": json.dumps(spec)}
    return client.post("/v1/audits", data=data, content_type="multipart/form-data")


def hand_fairness(frame: pd.DataFrame, predicted: np.ndarray, column: str) -> dict[str, Any]:
    """Per-group rates and parity metrics from the textbook definitions."""
    yp, yt, groups = predicted == "approved", frame["y"].to_numpy() == "approved", frame[column].to_numpy()
    rates = {}
    for g in np.unique(groups):
        m = groups == g
        rates[g] = {
            "count": int(m.sum()),
            "selection_rate": yp[m].mean(),
            "tpr": (yp & yt)[m].sum() / yt[m].sum(),
            "fpr": (yp & ~yt)[m].sum() / (~yt)[m].sum(),
        }
    sel = [r["selection_rate"] for r in rates.values()]
    tpr = [r["tpr"] for r in rates.values()]
    fpr = [r["fpr"] for r in rates.values()]
    return {
        "groups": rates,
        "demographic_parity_difference": max(sel) - min(sel),
        "demographic_parity_ratio": min(sel) / max(sel),
        "equal_opportunity_difference": max(tpr) - min(tpr),
        "equalized_odds_difference": max(max(tpr) - min(tpr), max(fpr) - min(fpr)),
    }


# -- a whole audit -------------------------------------------------------------------------------------------------


def test_audit_explains_every_row_once_with_summary_fairness_and_report(live_client, binary_model):
    """3000 rows in 6 chunks on 2 workers: every row once, importance and fairness match independent numbers."""
    assert upload(live_client, binary_model, name="audit-big").status_code == 201
    frame = planted_bias(binary_model, 3000)
    spec = {"model": "audit-big", "method": "exact", "label": "y", "sensitive": ["sex", "region"], "title": "Big"}
    response = submit(live_client, frame.to_csv(index=False).encode(), spec)
    assert response.status_code == 202, response.json
    assert response.headers["Location"] == f"/v1/audits/{response.json['id']}"
    assert response.json["status"] in ("queued", "running")
    assert response.json["dataset"]["ignored_columns"] == ["customer_id"]
    assert response.json["progress"]["chunks_total"] == 6
    audit = poll(live_client, response.headers["Location"])
    assert audit["status"] == "succeeded", audit
    assert audit["progress"]["rows_done"] == 3000 and audit["progress"]["chunks_done"] == 6
    assert audit["started_at"] and audit["ended_at"] and audit["progress"]["eta_s"] == 0.0

    raw = live_client.get(f"{audit['location']}/rows")
    assert raw.status_code == 200 and raw.mimetype == "application/vnd.apache.parquet"
    rows = pd.read_parquet(io.BytesIO(raw.data))
    assert sorted(rows["row"]) == list(range(3000)) and rows["row"].is_unique
    assert (rows["status"] == "ok").all()
    predicted = np.array(["denied", "approved"])[
        predict(binary_model, frame[binary_model.card["features"]].to_numpy()).argmax(1)
    ]
    assert (rows["prediction"].to_numpy() == predicted).all()
    assert (rows["sensitive.sex"].to_numpy() == frame["sex"].to_numpy()).all()
    attrs = rows[[f"attr.{f}" for f in binary_model.card["features"]]].to_numpy()
    np.testing.assert_allclose(rows["base_value"] + attrs.sum(axis=1), rows["score"], atol=1e-6)  # exact: additive

    summary = audit["summary"]
    assert summary["rows"] == 3000 and summary["failed_rows"] == 0 and summary["skipped_rows"] == 0
    assert summary["positive"] == "approved"
    for item in summary["global_importance"]:
        column = rows[f"attr.{item['feature']}"]
        assert item["mean_abs"] == pytest.approx(column.abs().mean(), rel=1e-12)
        assert item["std_abs"] == pytest.approx(column.abs().std(ddof=0), rel=1e-9)
    assert summary["performance"]["accuracy"] == pytest.approx((predicted == frame["y"].to_numpy()).mean())
    for column in ("sex", "region"):
        expected, got = hand_fairness(frame, predicted, column), summary["fairness"]["columns"][column]
        for group, numbers in expected["groups"].items():
            for metric, value in numbers.items():
                assert got["groups"][group][metric] == pytest.approx(value, abs=1e-12), (column, group, metric)
        for metric in ("demographic_parity_difference", "demographic_parity_ratio"):
            assert got[metric] == pytest.approx(expected[metric], abs=1e-12)
        for metric in ("equal_opportunity_difference", "equalized_odds_difference"):
            assert got[metric] == pytest.approx(expected[metric], abs=1e-12)
    assert summary["fairness"]["columns"]["sex"]["demographic_parity_difference"] > 0.3  # the planted bias
    assert "demographic_parity_difference" in summary["fairness"]["columns"]["sex"]["flags"]

    csv = live_client.get(f"{audit['location']}/rows?format=csv")
    assert csv.status_code == 200 and csv.mimetype == "text/csv"
    assert pd.read_csv(io.BytesIO(csv.data))["row"].tolist() == rows["row"].tolist()
    jsonl = live_client.get(f"{audit['location']}/rows?format=jsonl")
    assert [json.loads(line)["row"] for line in jsonl.data.splitlines()] == rows["row"].tolist()

    report = live_client.get(f"{audit['location']}/report")
    assert report.status_code == 200 and report.mimetype == "text/html"
    html = report.get_data(as_text=True)
    assert all(f'id="{section}"' in html for section in SECTIONS)
    assert "data:image/png;base64," in html and "<title>Big" in html
    assert live_client.delete(audit["location"]).json["code"] == "audit_not_cancelable"


def test_bad_rows_are_refused_by_number_or_skipped_and_counted(live_client, binary_model):
    """A non-number, an infinite value and an unknown label are 422 with their rows; skip leaves them out."""
    upload(live_client, binary_model, name="audit-bad")
    frame = planted_bias(binary_model, 120, seed=1).astype({"age": object})
    frame.loc[17, "age"] = "forty"
    frame.loc[33, "debt"] = np.inf
    frame.loc[20, "y"] = "maybe"
    data = frame.to_csv(index=False).encode()
    spec = {"model": "audit-bad", "method": "linear", "label": "y", "sensitive": ["sex"]}
    refused = submit(live_client, data, spec)
    assert refused.status_code == 422
    assert refused.json["code"] == "not_numeric" and refused.json["field"] == "dataset[17].age"
    assert refused.json["bad_rows"] == 3
    assert [(e["field"], e["code"]) for e in refused.json["errors"]] == [
        ("dataset[17].age", "not_numeric"),
        ("dataset[20].y", "unknown_label"),
        ("dataset[33].debt", "non_finite"),
    ]
    accepted = submit(live_client, data, {**spec, "on_bad_rows": "skip"})
    assert accepted.status_code == 202, accepted.json
    assert accepted.json["dataset"] | {"ignored_columns": []} == {
        "uploaded_rows": 120,
        "rows": 117,
        "skipped_rows": 3,
        "bad_cells": 3,
        "ignored_columns": [],
        "label_encoding": "names",
    }
    audit = poll(live_client, accepted.headers["Location"])
    assert audit["summary"]["skipped_rows"] == 3 and audit["summary"]["rows"] == 117
    rows = pd.read_parquet(io.BytesIO(live_client.get(f"{audit['location']}/rows").data))
    assert rows["row"].tolist() == [i for i in range(120) if i not in (17, 20, 33)]


def test_json_rows_and_every_upload_format_are_accepted(live_client, binary_model):
    """Rows in JSON, and Parquet or JSON Lines uploads recognised by content whatever their file name."""
    upload(live_client, binary_model, name="audit-formats")
    frame = planted_bias(binary_model, 40, seed=2).drop(columns=["customer_id"])
    spec = {"model": "audit-formats", "method": "linear", "label": "y", "sensitive": ["sex"]}
    answers = [
        live_client.post("/v1/audits", json={**spec, "rows": frame.to_dict(orient="records")}),
        submit(live_client, builders.to_parquet(frame), spec, filename="data.csv"),
        submit(live_client, frame.to_json(orient="records", lines=True).encode(), spec, filename="data.parquet"),
    ]
    for answer in answers:
        assert answer.status_code == 202, answer.json
        assert answer.json["dataset"]["rows"] == 40
    for answer in answers:
        assert poll(live_client, answer.headers["Location"])["summary"]["rows"] == 40


def test_failed_chunks_are_reported_row_by_row_and_a_wholly_failed_audit_fails(live_client):
    """A chunk whose rows make the model output NaN fails; its rows stay, marked with the chunk's error code."""
    from onnx import helper

    model = builders.helper_model(  # y = log(a) + log(b): NaN for a negative input
        [helper.make_node("Log", ["x"], ["lx"]), helper.make_node("MatMul", ["lx", "w"], ["y"])],
        initializers=[helper.make_tensor("w", 1, [2, 1], [1.0, 1.0])],
    )
    registered = live_client.post(
        "/v1/models",
        data={
            "model": (io.BytesIO(model.SerializeToString()), "m"),
            "background": (io.BytesIO(b"a,b\n1,2\n3,4\n"), "b"),
            "card": '{"name": "audit-nan", "task": "regression", "features": ["a", "b"]}',
        },
        content_type="multipart/form-data",
    )
    assert registered.status_code == 201, registered.json
    rng = np.random.default_rng(6)
    frame = pd.DataFrame(
        {"a": rng.uniform(1, 5, 1000), "b": rng.uniform(1, 5, 1000), "g": rng.choice(["x", "y"], 1000)}
    )
    frame.loc[700, "a"] = -1.0  # poisons the second chunk (rows 500..999)
    spec = {"model": "audit-nan", "method": "exact", "sensitive": ["g"]}
    audit = poll(live_client, submit(live_client, frame.to_csv(index=False).encode(), spec).headers["Location"])
    assert audit["status"] == "succeeded" and audit["progress"]["chunks_failed"] == 1
    summary = audit["summary"]
    assert summary["rows"] == 500 and summary["failed_rows"] == 500
    assert [(c["start"], c["stop"], c["code"]) for c in summary["failed_chunks"]] == [
        (500, 1000, "non_finite_model_output")
    ]
    rows = pd.read_parquet(io.BytesIO(live_client.get(f"{audit['location']}/rows").data))
    assert rows["row"].tolist() == list(range(1000))
    failed = rows[rows["status"] == "failed"]
    assert failed["row"].tolist() == list(range(500, 1000)) and set(failed["error"]) == {"non_finite_model_output"}
    assert failed["attr.a"].isna().all() and (failed["value.a"].to_numpy() == frame["a"].to_numpy()[500:]).all()

    frame["a"] = -frame["a"]  # every chunk fails: the audit fails, with the chunks' code
    audit = poll(live_client, submit(live_client, frame.to_csv(index=False).encode(), spec).headers["Location"])
    assert audit["status"] == "failed" and audit["error"]["code"] == "non_finite_model_output"
    assert "summary" not in audit and audit["progress"]["chunks_failed"] == 2
    assert live_client.get(f"{audit['location']}/report").json["code"] == "audit_not_ready"
    rows = pd.read_parquet(io.BytesIO(live_client.get(f"{audit['location']}/rows").data))
    assert len(rows) == 1000 and (rows["status"] == "failed").all()


# -- cancel, priority, worker death ------------------------------------------------------------------------------


def test_cancel_a_running_audit_while_interactive_work_keeps_priority(
    live_client, binary_model, live_settings, live_key
):
    """A slow audit runs; an explanation is answered before the audit ends; DELETE cancels and stops its chunks."""
    upload(live_client, binary_model, name="audit-slow")
    frame = planted_bias(binary_model, 1000, seed=3)
    app = create_app(live_settings.replace(audit_chunk_rows=40))
    app.test_client_class = ValidatingClient
    client = authorize(app.test_client(), live_key)
    spec = {"model": "audit-slow", "method": "lime", "parameters": {"num_samples": 5000}, "sensitive": ["sex"]}
    response = submit(client, frame.to_csv(index=False).encode(), spec)
    assert response.status_code == 202, response.json
    location = response.headers["Location"]
    poll(client, location, until=("running",), timeout=30)
    for part in ("rows", "report"):
        early = client.get(f"{location}/{part}")
        assert early.status_code == 409 and early.json["code"] == "audit_not_ready"

    explained = client.post("/v1/models/audit-slow:explain", json={"instances": [[0.1, 0.2, 0.3, 0.4]], "wait": 30})
    assert explained.status_code == 200, explained.json
    assert client.get(location).json["progress"]["chunks_done"] < 20  # answered long before the audit ends

    canceled = client.delete(location)
    assert canceled.status_code == 200 and canceled.json["status"] == "canceled"
    assert canceled.json["error"]["code"] == "canceled" and canceled.json["ended_at"]
    started = Queue("batch", connection=Redis.from_url(live_settings.redis_url)).started_job_registry
    deadline = time.monotonic() + 15
    while started.get_job_ids() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert started.get_job_ids() == []  # the running chunks saw the flag and stopped
    final = client.get(location).json
    assert final["status"] == "canceled" and final["progress"]["chunks_done"] < 25
    assert client.get(f"{location}/rows").json["code"] == "audit_not_ready"
    assert client.delete(location).json["status"] == "canceled"
    assert not (live_settings.audit_dir / response.json["id"] / "rows.parquet").exists()


def _worker(env: dict[str, str], name: str, *extra: str) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "worker", "--name", name, *extra]
    return subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_a_worker_killed_mid_chunk_loses_and_duplicates_no_row(
    worker_env, live_settings, live_key, binary_model, redis_url
):
    """SIGKILL the only worker inside a chunk: the chunk is retried elsewhere, every row is in the output once."""
    env = {**worker_env, "ONNXPLAIN_REDIS_URL": with_db(redis_url, 2)}  # a queue no other worker serves
    conn = Redis.from_url(env["ONNXPLAIN_REDIS_URL"])
    conn.flushdb()
    app = create_app(live_settings.replace(redis_url=env["ONNXPLAIN_REDIS_URL"], audit_chunk_rows=60))
    app.test_client_class = ValidatingClient
    client = authorize(app.test_client(), live_key)
    upload(client, binary_model, name="audit-kill")
    victim = _worker(env, "victim", "--job-monitoring-interval", "1")
    survivor = None
    try:
        frame = planted_bias(binary_model, 240, seed=4)
        spec = {"model": "audit-kill", "method": "lime", "parameters": {"num_samples": 5000}, "label": "y"}
        response = submit(client, frame.to_csv(index=False).encode(), spec)
        assert response.status_code == 202, response.json
        registry = Queue("batch", connection=conn, serializer=JSONSerializer).started_job_registry
        deadline = time.monotonic() + 60
        while not registry.get_job_ids() and time.monotonic() < deadline:
            time.sleep(0.05)
        (killed,) = registry.get_job_ids()
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=10)
        survivor = _worker(env, "survivor")
        audit = poll(client, response.headers["Location"], timeout=150)  # the survivor sweeps the dead one's job
        assert audit["status"] == "succeeded", audit
        assert audit["summary"]["failed_rows"] == 0 and audit["progress"]["chunks_done"] == 4
        rows = pd.read_parquet(io.BytesIO(client.get(f"{audit['location']}/rows").data))
        assert sorted(rows["row"]) == list(range(240)) and rows["row"].is_unique
        assert (rows["status"] == "ok").all()
        job = Job.fetch(killed, connection=conn, serializer=JSONSerializer)
        assert job.retries_left == 1  # it died once and was run again
    finally:
        for proc in (victim, survivor):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=15)
        conn.flushdb()


# -- every error path --------------------------------------------------------------------------------------------


@pytest.fixture
def credit(client, binary_model) -> pd.DataFrame:
    """The binary model registered as ``credit`` in the worker-less app, and a small dataset for it."""
    assert upload(client, binary_model).status_code == 201
    return planted_bias(binary_model, 30, seed=5)


@pytest.mark.parametrize(
    ("spec", "status", "code", "field"),
    [
        ({"colour": "red"}, 422, "unknown_field", "spec.colour"),
        ({"model": "nope"}, 404, "model_not_found", "name"),
        ({"version": 9}, 404, "version_not_found", "version"),
        ({"variant": "int8"}, 404, "variant_not_found", "variant"),
        ({"method": "magic"}, 422, "unknown_method", "method"),
        ({"method": "kernel_shap", "parameters": {"nsamples": 1}}, 422, "invalid_parameter", "parameters.nsamples"),
        ({"label": "outcome"}, 422, "unknown_column", "label"),
        ({"label": "age"}, 422, "invalid_parameter", "label"),
        ({"sensitive": ["gender"]}, 422, "unknown_column", "sensitive[0]"),
        ({"sensitive": "sex"}, 422, "invalid_parameter", "sensitive"),
        ({"positive": "maybe"}, 422, "unknown_target", "positive"),
        ({"on_bad_rows": "ignore"}, 422, "invalid_parameter", "on_bad_rows"),
        ({"thresholds": {"max_gap": 0.2}}, 422, "unknown_field", "thresholds.max_gap"),
        (
            {"thresholds": {"min_demographic_parity_ratio": -1}},
            422,
            "invalid_parameter",
            "thresholds.min_demographic_parity_ratio",
        ),
    ],
)
def test_spec_errors(client, credit, spec, status, code, field):
    """A bad spec is refused with its status, code and field, before anything is stored or queued."""
    response = submit(client, credit.to_csv(index=False).encode(), {"model": "credit", **spec})
    assert response.status_code == status, response.json
    assert (response.json["code"], response.json.get("field")) == (code, field)


@pytest.mark.parametrize(
    ("make", "code", "field"),
    [
        (lambda f: f.drop(columns=["debt", "tenure"]).to_csv(index=False).encode(), "missing_feature", "dataset"),
        (lambda f: b"PAR1 this is not parquet", "invalid_dataset", "dataset"),
        (lambda f: b"   \n", "empty_input", "dataset"),
        (lambda f: f.head(0).to_csv(index=False).encode(), "empty_input", "dataset"),
        (lambda f: pd.concat([f] * 20).to_csv(index=False).encode(), "too_many_rows", "dataset"),
        (lambda f: f.assign(income="x").to_csv(index=False).encode(), "no_rows", "dataset"),
    ],
)
def test_dataset_errors(client, credit, make, code, field):
    """Unusable datasets: missing columns, unreadable, empty, over the row cap, nothing valid to skip to."""
    response = submit(client, make(credit), {"model": "credit", "on_bad_rows": "skip"})
    assert response.status_code == 422, response.json
    assert (response.json["code"], response.json["field"]) == (code, field)


def test_request_shape_errors(client, credit, settings):
    """Unknown parts and fields, missing parts, bad JSON, other media types; nothing is left in the store."""
    data = credit.to_csv(index=False).encode()
    cases = [
        ({"dataset": (io.BytesIO(data), "d"), "spec": "{}", "extra": "1"}, "unknown_field", "extra"),
        ({"dataset": (io.BytesIO(data), "d")}, "missing_field", "spec"),
        ({"spec": json.dumps({"model": "credit"})}, "missing_field", "dataset"),
        ({"dataset": (io.BytesIO(data), "d"), "spec": "{not json"}, "invalid_json", "spec"),
        ({"dataset": (io.BytesIO(data), "d"), "spec": "{}"}, "missing_field", "spec.model"),
    ]
    for form, code, field in cases:
        response = client.post("/v1/audits", data=form, content_type="multipart/form-data")
        assert response.status_code == 422 and (response.json["code"], response.json["field"]) == (code, field)
    rows = credit.to_dict(orient="records")
    for body, code, field in [
        ({"model": "credit"}, "missing_field", "rows"),
        ({"model": "credit", "rows": rows, "colour": 1}, "unknown_field", "colour"),
        ({"model": "credit", "rows": [[1, 2, 3, 4]]}, "invalid_instances", "rows"),
        ({"model": 7, "rows": rows}, "invalid_parameter", "model"),
    ]:
        response = client.post("/v1/audits", json=body)
        assert response.status_code == 422 and (response.json["code"], response.json["field"]) == (code, field)
    other = client.post("/v1/audits", data="model=credit", content_type="text/plain")
    assert other.status_code == 415 and other.json["code"] == "unsupported_media_type"
    assert not settings.audit_dir.exists() or [p.name for p in settings.audit_dir.iterdir()] in ([], [".tmp"])


def test_positive_class_is_required_for_multiclass_fairness(client, multiclass_model):
    """A 3-class model has no default positive class; fairness needs one."""
    upload(client, multiclass_model)
    frame = pd.DataFrame(multiclass_model.X[:10], columns=multiclass_model.card["features"]).assign(g="a")
    response = submit(client, frame.to_csv(index=False).encode(), {"model": "species", "sensitive": ["g"]})
    assert response.status_code == 422 and response.json["code"] == "positive_required"


def test_unknown_audits_and_bad_queries(client):
    """Unknown or malformed ids are 404 on every route; bad query parameters are 422."""
    for path in ("/v1/audits/{}", "/v1/audits/{}/rows", "/v1/audits/{}/report"):
        for audit_id in ("0" * 32, "not-a-hex-id", "..."):
            response = client.get(path.format(audit_id))
            assert response.status_code == 404 and response.json["code"] == "audit_not_found"
    assert client.delete(f"/v1/audits/{'0' * 32}").json["code"] == "audit_not_found"
    bad = client.get(f"/v1/audits/{'0' * 32}/rows?format=xlsx")
    assert bad.status_code == 422 and (bad.json["code"], bad.json["field"]) == ("invalid_parameter", "format")
    extra = client.get(f"/v1/audits/{'0' * 32}/rows?page=2")
    assert extra.status_code == 422 and extra.json["code"] == "unknown_field"


def test_audit_without_redis_is_503_and_leaves_nothing(tmp_path, binary_model):
    """With Redis down the upload is validated, then refused 503 with Retry-After; no audit stays in the store."""
    settings = keyed(
        Settings(redis_url="redis://127.0.0.1:1/0", model_dir=tmp_path / "m", audit_dir=tmp_path / "a"), tmp_path
    )
    app = create_app(settings)
    app.test_client_class = ValidatingClient
    client = authorize(app.test_client(), issue_key(settings))
    upload(client, binary_model)
    response = submit(client, planted_bias(binary_model, 10).to_csv(index=False).encode(), {"model": "credit"})
    assert response.status_code == 503 and response.json["code"] == "unavailable" and response.headers["Retry-After"]
    # Refused before the dataset is stored (or stored and removed): no audit stays.
    assert not (tmp_path / "a").exists() or [p.name for p in (tmp_path / "a").iterdir() if p.name != ".tmp"] == []


def test_worker_exposes_heartbeat_option():
    """``python -m worker --help`` documents the heartbeat interval used to notice dead workers."""
    out = subprocess.run([sys.executable, "-m", "worker", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0 and "--job-monitoring-interval" in out.stdout


def test_an_audit_of_a_deleted_version_answers_like_a_direct_explain(client, settings, binary_model, monkeypatch):
    """Deleted between submit and run: the audit fails with the same status and code as explaining it directly."""
    from rq.serializers import JSONSerializer as Serializer

    from engine.jobs import QUEUES
    from worker import context as worker_context
    from worker.failures import record_failure
    from worker.heartbeat import HeartbeatWorker

    assert upload(client, binary_model, name="gone").status_code == 201
    assert upload(client, binary_model, name="gone").status_code == 201
    frame = planted_bias(binary_model, 20)
    spec = {"model": "gone", "version": 1, "method": "exact", "label": "y"}
    response = submit(client, frame.to_csv(index=False).encode(), spec)
    assert response.status_code == 202, response.json
    # The API refuses to delete a version a queued audit uses; an operator removing it from the store is the
    # remaining way it can vanish, and the audit must still answer like a direct call.
    refused = client.delete("/v1/models/gone?version=1")
    assert refused.status_code == 409 and refused.json["code"] == "model_in_use"
    assert ModelRegistry(settings).delete("gone", 1) == [1]

    monkeypatch.setenv("ONNXPLAIN_REDIS_URL", settings.redis_url)
    monkeypatch.setenv("ONNXPLAIN_MODEL_DIR", str(settings.model_dir))
    monkeypatch.setenv("ONNXPLAIN_AUDIT_DIR", str(settings.audit_dir))
    worker_context.context.cache_clear()
    try:
        conn = Redis.from_url(settings.redis_url)
        queues = [Queue(name, connection=conn, serializer=Serializer) for name in QUEUES]
        worker = HeartbeatWorker(
            queues, connection=conn, serializer=Serializer, exception_handlers=[record_failure], sweep_interval=0
        )
        worker.work(burst=True)
    finally:
        worker_context.context.cache_clear()

    audit = client.get(response.headers["Location"]).json
    direct = client.post("/v1/models/gone:explain", json={"instances": binary_model.X[:1].tolist(), "version": 1})
    assert audit["status"] == "failed"
    assert direct.status_code == 404 and direct.json["code"] == "version_not_found"
    assert (audit["error"]["status"], audit["error"]["code"]) == (direct.status_code, direct.json["code"])


def test_idempotency_key_returns_the_same_audit_per_tenant(app, settings, binary_model):
    """A retried upload with the same key returns the first audit (multipart and JSON); another tenant's same key
    makes its own; the same key with another dataset is refused; the store holds one audit per first upload."""
    a = authorize(app.test_client(), issue_key(settings, "a"))
    b = authorize(app.test_client(), issue_key(settings, "b"))
    assert upload(a, binary_model, visibility="shared").status_code == 201
    rows = planted_bias(binary_model, 20, seed=3)
    csv = rows.to_csv(index=False).encode()
    spec = {"model": "credit", "method": "linear"}

    def upload_audit(client: Any, dataset: bytes, key: str) -> Any:
        body = {"dataset": (io.BytesIO(dataset), "data.csv"), "spec": json.dumps(spec)}
        return client.post(
            "/v1/audits", data=body, content_type="multipart/form-data", headers={"Idempotency-Key": key}
        )

    first = upload_audit(a, csv, "upload-7")
    assert first.status_code == 202, first.json
    retried = upload_audit(a, csv, "upload-7")
    assert retried.status_code == 202 and retried.json["id"] == first.json["id"]
    assert retried.headers["Location"] == first.headers["Location"]
    other = upload_audit(b, csv, "upload-7")
    assert other.status_code == 202 and other.json["id"] != first.json["id"]
    changed = upload_audit(a, planted_bias(binary_model, 20, seed=4).to_csv(index=False).encode(), "upload-7")
    assert changed.status_code == 422 and changed.json["code"] == "idempotency_key_reused"
    assert changed.json["field"] == "Idempotency-Key"
    plain = upload_audit(a, csv, "upload-8")  # another key: another audit
    assert plain.json["id"] != first.json["id"]
    records = rows.drop(columns=["customer_id"]).to_dict(orient="records")
    as_json = [
        a.post("/v1/audits", json={**spec, "rows": records}, headers={"Idempotency-Key": "json-1"}) for _ in range(2)
    ]
    assert as_json[0].status_code == 202 and as_json[0].json["id"] == as_json[1].json["id"]
    bad = a.post("/v1/audits", json={**spec, "rows": records}, headers={"Idempotency-Key": "no spaces here"})
    assert bad.status_code == 422 and bad.json["code"] == "invalid_idempotency_key"
    stored = {p.name for p in Path(settings.audit_dir).iterdir()} - {".tmp"}
    assert stored == {first.json["id"], other.json["id"], plain.json["id"], as_json[0].json["id"]}
