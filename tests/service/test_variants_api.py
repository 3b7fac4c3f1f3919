"""Quantized variants over HTTP: build as jobs on real workers, report, gate, serve."""

from __future__ import annotations

import io
import json
import re
import time

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import make_classification
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from engine.settings import Settings
from service.app import create_app
from tests import builders
from tests.conftest import authorize, issue_key, keyed, upload

REPORT_FIELDS = {"size_bytes", "latency", "agreement", "explanation_drift"}


@pytest.fixture(scope="module")
def mlp() -> builders.BuiltModel:
    """A scaler + MLP classifier on 10 features, exported with skl2onnx."""
    X, y = make_classification(n_samples=600, n_features=10, n_informative=6, random_state=4)
    model = make_pipeline(StandardScaler(), MLPClassifier((32,), max_iter=600, random_state=0)).fit(X, y)
    onx = builders._convert(model, X, options={id(model): {"zipmap": False}})
    card = {
        "name": "mlp",
        "task": "classification",
        "features": [f"x{i}" for i in range(10)],
        "class_names": ["no", "yes"],
    }
    return builders.BuiltModel(onx, card, X, y, model)


def _register(client, built, name, **card):
    data = {
        "model": (io.BytesIO(built.onnx_bytes), "m"),
        "card": built.card_json(name=name, **card),
        "background": (io.BytesIO(built.background_csv(rows=300)), "b"),
    }
    response = client.post("/v1/models", data=data, content_type="multipart/form-data")
    assert response.status_code == 201, response.json
    return response.json


def _wait_variant(client, name: str, kind: str, timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = {v["kind"]: v for v in client.get(f"/v1/models/{name}").json["variants"]}
        if kind in found and found[kind]["state"] != "building":
            return found[kind]
        time.sleep(0.5)
    raise AssertionError(f"variant {kind} of {name} still building")


def _wait_job(client, location: str, timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(location).json
        if job["status"] in ("succeeded", "failed", "canceled"):
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {location} still running")


def test_each_kind_builds_reports_and_serves(live_client, mlp):
    """int8_dynamic, int8_static and fp16 build on the batch queue, carry a full report and pass the gate."""
    _register(live_client, mlp, "mlp-variants")
    for kind in ("int8_dynamic", "int8_static", "fp16"):
        response = live_client.post("/v1/models/mlp-variants/variants", json={"kind": kind})
        assert response.status_code == 202, response.json
        assert response.json["variant"]["state"] == "building"
        assert response.headers["Location"].startswith("/v1/jobs/")
    rows = mlp.X[300:500]
    fp32 = live_client.post("/v1/models/mlp-variants:predict", json={"instances": rows.tolist()}).json
    labels = [p["label"] for p in fp32["predictions"]]
    for kind in ("int8_dynamic", "int8_static", "fp16"):
        variant = _wait_variant(live_client, "mlp-variants", kind)
        assert variant["state"] == "ready", variant
        report = variant["report"]
        assert REPORT_FIELDS <= set(report)
        assert variant["measured_on_this_cpu"] is True  # the workers share this host's CPU
        assert report["measured_on"]["int8_scheme"] in ("s8s8", "s8s8_reduce_range")
        assert report["size_bytes"]["variant"] > 0 and report["latency"]["speedup"]["batch"] > 0
        assert report["agreement"]["top1"] >= 0.99
        assert report["explanation_drift"]["spearman_mean"] >= 0.9
        served = live_client.post(
            "/v1/models/mlp-variants:predict", json={"instances": rows.tolist(), "variant": kind}
        ).json
        assert served["model"]["variant"] == kind and served["provider"] == "CPUExecutionProvider"
        agreement = np.mean([p["label"] == q for p, q in zip(served["predictions"], labels, strict=True)])
        assert agreement >= 0.99
    int8 = live_client.post("/v1/models/mlp-variants:predict", json={"instances": rows[:1].tolist(), "variant": "int8"})
    assert int8.json["model"]["variant"] in ("int8_static", "int8_dynamic")
    fastest = live_client.post(
        "/v1/models/mlp-variants:predict", json={"instances": rows[:1].tolist(), "variant": "fastest"}
    ).json["model"]["variant"]
    if fastest != "fp32":
        chosen = {v["kind"]: v for v in live_client.get("/v1/models/mlp-variants").json["variants"]}[fastest]
        speedup = chosen["report"]["latency"]["speedup"]
        assert chosen["state"] == "ready" and min(speedup["single_row"], speedup["batch"]) >= 1.0
    explained = live_client.post(
        "/v1/models/mlp-variants:explain",
        json={"instances": rows[:1].tolist(), "variant": "int8_static", "method": "exact"},
    )
    assert explained.status_code == 200 and explained.json["model"]["variant"] == "int8_static"


def test_a_variant_below_the_gate_is_rejected_and_fp32_keeps_serving(live_client):
    """A regressor whose small weight int8 rounds to zero fails the gate: rejected, never served."""
    model = builders.affine_regressor([1e4, 1e-3], bias=0.0)
    rng = np.random.default_rng(0)
    background = pd.DataFrame({"a": rng.uniform(0, 1e-4, 200), "b": rng.uniform(0, 1e7, 200)})
    data = {
        "model": (io.BytesIO(model.SerializeToString()), "m"),
        "card": json.dumps({"name": "fragile", "task": "regression", "features": ["a", "b"]}),
        "background": (io.BytesIO(background.to_csv(index=False).encode()), "b"),
    }
    assert live_client.post("/v1/models", data=data, content_type="multipart/form-data").status_code == 201
    assert live_client.post("/v1/models/fragile/variants", json={"kind": "int8_dynamic"}).status_code == 202
    variant = _wait_variant(live_client, "fragile", "int8_dynamic")
    assert variant["state"] == "rejected"
    assert variant["report"]["agreement"]["normalised_max_error"] > 0.02
    refused = live_client.post("/v1/models/fragile:predict", json={"instances": [[0, 1e6]], "variant": "int8_dynamic"})
    assert refused.status_code == 404 and refused.json["code"] == "variant_not_found"
    fp32 = live_client.post("/v1/models/fragile:predict", json={"instances": [[0, 1e6]]})
    assert fp32.status_code == 200 and fp32.json["predictions"][0]["value"] == pytest.approx(1e3, rel=1e-5)
    fastest = live_client.post("/v1/models/fragile:predict", json={"instances": [[0, 1e6]], "variant": "fastest"})
    assert fastest.json["model"]["variant"] == "fp32"


def test_pruned_variants_build_report_and_gate(live_client, mlp):
    """Pruned kinds run the same job, gate and report; pruned too far is rejected and fp32 keeps serving."""
    _register(live_client, mlp, "mlp-pruned")
    requests = {"prune_magnitude": 0.3, "prune_structured": 0.25, "prune_structured+int8_static": 0.25}
    for kind, sparsity in requests.items():
        response = live_client.post("/v1/models/mlp-pruned/variants", json={"kind": kind, "sparsity": sparsity})
        assert response.status_code == 202, response.json
    rows = mlp.X[300:500]
    for kind, sparsity in requests.items():
        variant = _wait_variant(live_client, "mlp-pruned", kind)
        assert variant["state"] in ("ready", "rejected") and variant["report"], variant
        report = variant["report"]
        assert REPORT_FIELDS <= set(report) and report["pruning"]["sparsity_requested"] == sparsity
        assert report["drift_flagged"] == (report["explanation_drift"]["spearman_median"] < 0.9 - 1e-9)
        assert report["latency"]["speedup"]["single_row"] > 0 and report["latency"]["speedup"]["batch"] > 0
    magnitude = {v["kind"]: v for v in live_client.get("/v1/models/mlp-pruned").json["variants"]}["prune_magnitude"]
    assert magnitude["state"] == "ready", magnitude["gate"]
    pruning = magnitude["report"]["pruning"]
    assert pruning["speeds_up"] is False and abs(pruning["sparsity_achieved"] - 0.3) < 0.01
    for kind in requests:
        state = {v["kind"]: v for v in live_client.get("/v1/models/mlp-pruned").json["variants"]}[kind]["state"]
        served = live_client.post("/v1/models/mlp-pruned:predict", json={"instances": rows.tolist(), "variant": kind})
        assert served.status_code == (200 if state == "ready" else 404), (kind, state)
    structured = {v["kind"]: v for v in live_client.get("/v1/models/mlp-pruned").json["variants"]}["prune_structured"]
    assert [layer["removed"] for layer in structured["report"]["pruning"]["layers"]] == [8]
    assert structured["report"]["size_bytes"]["ratio"] < 1
    fastest = live_client.post(
        "/v1/models/mlp-pruned:predict", json={"instances": rows[:1].tolist(), "variant": "fastest"}
    ).json["model"]["variant"]
    assert fastest != "prune_magnitude"  # its zeros run through the same dense kernels

    far = live_client.post("/v1/models/mlp-pruned/variants", json={"kind": "prune_magnitude", "sparsity": 0.97})
    assert far.status_code == 202
    _wait_job(live_client, far.headers["Location"])
    rejected = _wait_variant(live_client, "mlp-pruned", "prune_magnitude")
    assert rejected["state"] == "rejected" and rejected["report"]["pruning"]["sparsity_requested"] == 0.97
    assert rejected["report"]["agreement"]["top1"] < 0.99
    refused = live_client.post(
        "/v1/models/mlp-pruned:predict", json={"instances": rows[:1].tolist(), "variant": "prune_magnitude"}
    )
    assert refused.status_code == 404 and refused.json["code"] == "variant_not_found"
    fp32 = live_client.post("/v1/models/mlp-pruned:predict", json={"instances": rows[:1].tolist()})
    assert fp32.status_code == 200 and fp32.json["model"]["variant"] == "fp32"


def test_pruned_variant_request_errors(live_client, mlp):
    """sparsity is checked and named; a kind that does not prune refuses it; unprunable structure is 422."""
    _register(live_client, mlp, "mlp-prune-errors")
    for bad in (0, 1, 1.2, "half", True):
        response = live_client.post(
            "/v1/models/mlp-prune-errors/variants", json={"kind": "prune_magnitude", "sparsity": bad}
        )
        assert response.status_code == 422 and response.json["field"] == "sparsity", (bad, response.json)
    quantized = live_client.post("/v1/models/mlp-prune-errors/variants", json={"kind": "fp16", "sparsity": 0.5})
    assert quantized.status_code == 422 and quantized.json["field"] == "sparsity"
    linear = builders.affine_regressor([1.0, 2.0], bias=0.0)
    background = pd.DataFrame(np.random.default_rng(0).normal(size=(20, 2)), columns=["a", "b"])
    data = {
        "model": (io.BytesIO(linear.SerializeToString()), "m"),
        "card": json.dumps({"name": "linear", "task": "regression", "features": ["a", "b"]}),
        "background": (io.BytesIO(background.to_csv(index=False).encode()), "b"),
    }
    assert live_client.post("/v1/models", data=data, content_type="multipart/form-data").status_code == 201
    flat = live_client.post("/v1/models/linear/variants", json={"kind": "prune_structured"})
    assert flat.status_code == 422 and flat.json["code"] == "nothing_to_prune"


def test_variants_requested_in_the_card_are_built_at_registration(live_client, mlp):
    """card.variants queues the builds when the model is registered."""
    _register(live_client, mlp, "mlp-card", variants=["int8_dynamic"])
    assert _wait_variant(live_client, "mlp-card", "int8_dynamic")["state"] == "ready"


def test_variant_request_errors(live_client, mlp):
    """Trees have nothing to quantize; unknown kinds and fields are 422; no background blocks int8_static."""
    forest = builders.forest_classifier()
    upload(live_client, forest, name="forest-variant")
    trees = live_client.post("/v1/models/forest-variant/variants", json={"kind": "int8_dynamic"})
    assert trees.status_code == 422 and trees.json["code"] == "nothing_to_quantize"
    _register(live_client, mlp, "mlp-errors")
    kind = live_client.post("/v1/models/mlp-errors/variants", json={"kind": "int4"})
    assert kind.status_code == 422 and kind.json["field"] == "kind"
    extra = live_client.post("/v1/models/mlp-errors/variants", json={"kind": "fp16", "speed": "max"})
    assert extra.status_code == 422 and extra.json["code"] == "unknown_field"
    upload(live_client, mlp, name="mlp-nobg", background=False)
    nobg = live_client.post("/v1/models/mlp-nobg/variants", json={"kind": "fp16"})
    assert nobg.status_code == 422 and nobg.json["code"] == "background_required"
    missing = live_client.post("/v1/models/nope/variants", json={"kind": "fp16"})
    assert missing.status_code == 404
    bad_card = live_client.post(
        "/v1/models",
        data={"model": (io.BytesIO(mlp.onnx_bytes), "m"), "card": mlp.card_json(name="x", variants=["int3"])},
        content_type="multipart/form-data",
    )
    assert bad_card.status_code == 422 and bad_card.json["field"] == "card.variants[0]"


def test_gpu_providers_fall_back_to_cpu(tmp_path, binary_model, redis_conn):
    """Asking for CUDA on a machine without a GPU serves on the CPU, without an error."""
    settings = keyed(
        Settings(model_dir=tmp_path / "models", providers="CUDAExecutionProvider,CPUExecutionProvider"), tmp_path
    )
    client = authorize(create_app(settings).test_client(), issue_key(settings))
    assert upload(client, binary_model).status_code == 201
    response = client.post("/v1/models/credit:predict", json={"instances": [[1, 2, 3, 4]]})
    assert response.status_code == 200 and response.json["provider"] == "CPUExecutionProvider"


def test_variant_builds_say_cache_and_honour_idempotency(client, mlp, redis_conn):
    """A variant build is a job like any other: a repeat is a cache hit, and Idempotency-Key gives the same job."""
    _register(client, mlp, "mlp-idem")
    url, body = "/v1/models/mlp-idem/variants", {"kind": "int8_dynamic"}
    first = client.post(url, json=body, headers={"Idempotency-Key": "v1"})
    assert first.status_code == 202 and first.headers["X-Cache"] == "miss", first.json
    again = client.post(url, json=body, headers={"Idempotency-Key": "v1"})
    assert again.json["job"]["id"] == first.json["job"]["id"] and again.json["job"]["cache"] == "hit"
    assert re.fullmatch(r"variant-[0-9a-f]{32}", first.json["job"]["id"])
